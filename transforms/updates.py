"""Slowly-changing side inputs (inventory, model pointer) that take effect mid-stream on any runner.

Beam's documented pattern re-reads a source with ``PeriodicImpulse`` into the
global window with a repeated trigger. The Python DirectRunner releases such a
side input only at the end of input (checked on Beam 2.77), so a streaming job
on it never saw an update. The windowed form below needs no trigger support
(FnApiRunner, Prism, Flink, Dataflow; the BundleBasedDirectRunner, which runs
Pub/Sub and TestStream pipelines locally, cannot expand ``PeriodicImpulse`` at
all in Beam 2.77, see pipeline/detect.py):

* every ``period`` seconds the source is read, the read is stamped with the
  impulse time and put in a ``FixedWindows(period)`` window, so each side window
  holds exactly one read;
* a main-input window sees the side window that ended one period *before* its
  own end (``LaggedAsList``), never the one still open. ``PeriodicImpulse``
  advances its watermark to the next fire time after each read, so that side
  window is complete by the time the main window closes: the side input never
  delays a finding, and an update is at most two periods old when it applies.

Where that side input does not work, the consumer polls the same read itself
(``PolledRead``, every ``period`` seconds of wall-clock time, per DoFn instance):
on Prism (Beam 2.77) the side windows between the first and the last reach the
main input empty, so an edit never applied (``tools/prism_side_input_repro.py``,
Beam alone), and the BundleBasedDirectRunner cannot expand ``PeriodicImpulse``.
``refresh_by_polling`` says which runners; the reads, their counters and the
"keep the previous value on a failed read" rule are the same.

Main windows older than the first read (a replay of old logs through Pub/Sub)
map to empty side windows; consumers then keep what they used last (the
inventory read at start, the model loaded in ``setup``), as Beam's own
``RunInference`` does with an empty model-metadata side input.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.utils.timestamp import Duration


class _LaggedWindowMapping:
  """Main window -> the side window holding the instant ``lag`` seconds before the main window's end."""

  def __init__(self, side_windowfn: window.WindowFn, lag: float):
    self._windowfn = side_windowfn
    self._lag = Duration(seconds=lag)

  def __call__(self, main_window: window.BoundedWindow) -> window.BoundedWindow:
    t = main_window.max_timestamp() - self._lag
    return list(self._windowfn.assign(window.WindowFn.AssignContext(t)))[-1]


class LaggedAsList(beam.pvalue.AsList):
  """``AsList`` of a ``PeriodicReads`` output, read from the last complete side window.

  The window mapping is pickled into the side input's runner API proto, so
  portable runners (Flink, Dataflow) apply the same lag as the DirectRunner.
  """

  def __init__(self, pcoll: beam.PCollection, lag_seconds: float):
    super().__init__(pcoll)
    self._window_mapping_fn = _LaggedWindowMapping(pcoll.windowing.windowfn, lag_seconds)


class _ReadNow(beam.DoFn):
  """An impulse -> (read time, value), counted as ``<name>_reads``; a None read emits nothing.

  A read that raises (a half-written file during an edit, a storage hiccup)
  emits nothing and is counted as ``<name>_read_errors``: the previous value
  stays in use and the streaming job goes on.
  """

  def __init__(self, read: Callable[[], Any], name: str):
    self._read = read
    self.reads = Metrics.counter('postauth', f'{name}_reads')
    self.errors = Metrics.counter('postauth', f'{name}_read_errors')

  def process(self, impulse_time, ts=beam.DoFn.TimestampParam):
    try:
      value = self._read()
    except Exception:  # pylint: disable=broad-except
      logging.warning('periodic read failed; keeping the previous value', exc_info=True)
      self.errors.inc()
      return
    if value is not None:
      self.reads.inc()
      yield float(ts), value


class PeriodicReads(beam.PTransform):
  """PBegin -> (read time, value) every ``period`` seconds, one read per ``FixedWindows(period)``.

  ``read`` is a picklable callable (e.g. a ``functools.partial`` of a module
  function); ``name`` prefixes its counters. ``stop_after`` (seconds) ends the
  sequence, for tests and bounded demos.
  """

  def __init__(self, read: Callable[[], Any], period: float, name: str,
               stop_after: Optional[float] = None):
    super().__init__()
    if period <= 0:
      raise ValueError('period must be > 0')
    self._read = read
    self._name = name
    self._period = period
    self._stop_after = stop_after

  def expand(self, pbegin):
    start = time.time()
    kwargs = {}
    if self._stop_after is not None:
      kwargs['stop_timestamp'] = start + self._stop_after
    return (pbegin
            | 'Every' >> PeriodicImpulse(start_timestamp=start, fire_interval=self._period, **kwargs)
            | 'Read' >> beam.ParDo(_ReadNow(self._read, self._name))
            | 'OneReadPerWindow' >> beam.WindowInto(window.FixedWindows(self._period)))

  def as_side_input(self, reads: beam.PCollection) -> LaggedAsList:
    return LaggedAsList(reads, self._period)


class PolledRead:
  """The read of a ``PeriodicReads``, polled by the DoFn that consumes it.

  Picklable; each DoFn instance holds its own copy, so the poll clock is per
  instance (no process-global state). ``poll()`` returns ``(read time, value)``
  when ``period`` seconds of wall-clock time have passed since this instance's
  first call or last read, else None. A read that raises keeps the previous value
  (counted as ``<name>_read_errors``), as ``_ReadNow`` does.
  """

  def __init__(self, read: Callable[[], Any], period: float, name: str):
    if period <= 0:
      raise ValueError('period must be > 0')
    self._read, self._period, self._name = read, period, name
    self._next: Optional[float] = None

  def poll(self) -> Optional[Tuple[float, Any]]:
    now = time.time()
    if self._next is None:  # the start-up value is already in use: first read a period later
      self._next = now + self._period
      return None
    if now < self._next:
      return None
    self._next = now + self._period
    try:
      value = self._read()
    except Exception:  # pylint: disable=broad-except
      logging.warning('periodic read failed; keeping the previous value', exc_info=True)
      Metrics.counter('postauth', f'{self._name}_read_errors').inc()
      return None
    if value is None:
      return None
    Metrics.counter('postauth', f'{self._name}_reads').inc()
    return now, value


# Runners whose consumers poll (PolledRead) instead of reading a PeriodicReads side input.
POLLING_RUNNERS = ('PrismRunner', 'DirectRunner', 'BundleBasedDirectRunner', 'SwitchingDirectRunner')


def refresh_by_polling(runner: Any) -> bool:
  """Prism (and the DirectRunner, which runs Prism or the BundleBasedDirectRunner): see above."""
  name = runner if isinstance(runner, str) else type(runner).__name__ if runner else 'DirectRunner'
  return name.rsplit('.', 1)[-1] in POLLING_RUNNERS


def newest(reads: Iterable[Tuple[float, Any]]) -> Optional[Tuple[float, Any]]:
  """The latest (read time, value), or None for an empty side window."""
  best = None
  for r in reads or ():
    if best is None or r[0] > best[0]:
      best = r
  return best
