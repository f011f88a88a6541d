"""Watch a folder or bucket for new log files: an unbounded source with an event-time watermark.

How CloudTrail is delivered (a gzip file about every 5 minutes per account and region, into
S3) and how many teams receive GCP and Kubernetes audit logs (sinks into GCS). ``WatchFiles``
is a splittable DoFn that polls a Beam FileSystems glob (local, ``gs://``, ``s3://``) every
``interval`` seconds, reads each new file once, splits it with ``transforms.records.split_records``
and emits its records (``RawRecord``, parsed downstream by the same ``ParseRecords`` as every
other path) stamped with their event time.

Why not ``fileio.MatchContinuously``: in Beam 2.77 it is built on ``apache_beam.io.watch.Watch``
and its output watermark is the poll's wall-clock time (or, with ``timestamp_cursor``, the
files' last-modified times). Audit records carry their own event time, minutes to hours older
than the file: stamped with it, every record would be behind a wall-clock watermark. The
watermark here comes from the records themselves, with the same design as ``Watch`` (no state
API -- Prism rejects stateful SDFs -- the set of files already read lives in the restriction, and
a ``ManualWatermarkEstimator`` holds the watermark):

* after each poll the watermark is ``newest record time - max_delay`` (bounded disorder between
  files of different accounts and regions);
* a source that has read files and then sees none for ``idle_seconds`` advances it to
  wall-clock time minus ``max_delay``, at most ``idle_limit`` seconds of event time past the
  newest record (so windows close when the logs stop, and an old backfill written after a quiet
  spell is not all late); before its first file it never advances (nothing is late because the
  job started before the logs arrived);
* records behind the watermark are not dropped here: downstream, ``LateEventGate`` lets them
  update their windows within ``--allowed-lateness`` and dead-letters later ones;
* a record dated more than ``--max-clock-skew`` ahead of the wall clock (``transforms/clock.py``)
  is never the newest record: it rides with its neighbour, like an undated record, and the
  parse dead-letters it (``time_ahead_of_clock``). One record dated 2099 cannot move the
  watermark to 2099 and make every later event late, nor stay in the restriction.

Files are split with the job's ``ReadLimits`` (``--max-record-bytes``, ``--max-gzip-*``), as
``--events`` splits them: an oversized record is a dead letter with its size and SHA-256.

A file is read once by path: rewriting it (same name, new contents or mtime) does not read it
again (``MatchContinuously(has_deduplication=True, match_updated_files=False)``) while its path
is remembered. The set of paths read is bounded (it is the restriction, written at every
checkpoint): paths are kept for ``SEEN_RETENTION`` seconds of last-modified time behind the
newest file, and at most ``MAX_SEEN_PATHS`` of them, the oldest forgotten first. A forgotten
path's last-modified time raises ``cutoff`` and a file at or before the cutoff counts as read,
so no file is read twice: a new file is written after the files already listed (object stores
list a file once it is complete, with its completion time), and the cap keeps many hours of
files even at thousands of files an hour. Only a file rewritten after its path was forgotten
is read again (as a new file). With ``stop_idle`` > 0 the source ends after that
many seconds without a new file (the watermark then goes to infinity, every window closes and
the job finishes): for backfills and tests.
"""
from __future__ import annotations

import logging
import time
import typing
from typing import Dict, Optional

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from postauth.transforms.parse import read_all
from postauth.transforms.fnapi_metrics import install_fnapi_metrics_fix
from postauth.transforms.poll_tracker import PollTracker
from postauth.transforms.records import DEFAULT_LIMITS, RawRecord, ReadLimits, split_records
from postauth.transforms.replay import record_time

_LOG = logging.getLogger('postauth')
SEEN_RETENTION = 7 * 86400  # seconds of last-modified time a read path is remembered
# Paths remembered at most (~160 bytes each pickled, CloudTrail-length paths: ~3 MiB of
# restriction per checkpoint; bench/state_week.py). CloudTrail writes a file per account and
# region about every 5 minutes: 20,000 paths are a week of 10 account-regions, or 16 h of 100.
MAX_SEEN_PATHS = 20_000


class WatchState(typing.NamedTuple):
  """The restriction: everything the source must remember across checkpoints."""
  seen: Dict[str, float]  # path -> last-modified time when read
  cutoff: float  # newest last-modified time among forgotten paths: older files count as read
  newest: Optional[float]  # newest record event time read so far
  last_new: float  # wall-clock time a new file was last read (or the source started)
  done: bool = False


def _closed(state: WatchState) -> WatchState:
  """A checkpoint's primary: done, without the set of files read (the residual carries it)."""
  return state._replace(seen={}, done=True)


def _forget(seen: Dict[str, float], cutoff: float) -> float:
  """Forgets paths far behind the newest file, then the oldest beyond ``MAX_SEEN_PATHS``
  (``seen`` in place); returns the cutoff raised to the newest time forgotten."""
  if seen:
    horizon = max(seen.values()) - SEEN_RETENTION
    old = [p for p, t in seen.items() if t < horizon]
    excess = len(seen) - len(old) - MAX_SEEN_PATHS
    if excess > 0:
      old += sorted((p for p, t in seen.items() if t >= horizon), key=lambda p: (seen[p], p))[:excess]
    for p in old:
      cutoff = max(cutoff, seen.pop(p))
  return cutoff


class _WatchFilesFn(beam.DoFn, RestrictionProvider):
  """pattern -> RawRecords of every new matching file, timestamped with their event time."""

  def __init__(self, interval: float, max_delay: int, idle_seconds: float, idle_limit: int,
               stop_idle: float = 0.0, limits: ReadLimits = DEFAULT_LIMITS):
    self._interval, self._delay, self._limits = interval, max_delay, limits
    self._idle, self._idle_limit, self._stop_idle = idle_seconds, idle_limit, stop_idle
    self.files = Metrics.counter('postauth', 'watch_files_read')
    self.skipped = Metrics.counter('postauth', 'watch_files_rewritten')

  # -- RestrictionProvider
  def initial_restriction(self, element) -> WatchState:
    return WatchState({}, float('-inf'), None, time.time())

  def create_tracker(self, restriction) -> PollTracker:
    return PollTracker(restriction, 'watch', _closed)

  def restriction_size(self, element, restriction) -> int:
    return 1

  def restriction_coder(self):
    return PickleCoder()

  def truncate(self, element, restriction):
    return None  # drain: stop polling

  # -- the poll loop
  def _read(self, path: str, newest: Optional[float]):
    """(records timestamped with their event time, newest event time among them)."""
    try:
      data = read_all(path)
    except Exception as e:  # unreadable file: one record that ParseRecords dead-letters
      t = newest if newest is not None else 0.0
      return [TimestampedValue(RawRecord(b'', None, f'unreadable file: {e}'[:300], path + '#'),
                               t)], None
    out, top, last = [], None, newest
    horizon = self._limits.skew.horizon()
    for record in split_records(data, path, self._limits):
      t = record_time(record)
      if t > horizon:
        t = 0.0  # ahead of the clock: moves nothing (the parse dead-letters it)
      if t:
        last = t
        top = t if top is None else max(top, t)
      # Undated records (they will be dead letters) ride with their neighbour.
      out.append(TimestampedValue(RawRecord(record.raw, None, record.error, record.ref),
                                  t or (last if last is not None else 0.0)))
    return out, top

  @beam.DoFn.unbounded_per_element()
  def process(self, pattern, timestamp=beam.DoFn.TimestampParam,
              tracker=beam.DoFn.RestrictionParam(),
              watermark=beam.DoFn.WatermarkEstimatorParam(
                  ManualWatermarkEstimator.default_provider())):
    if watermark.current_watermark() is None:
      watermark.set_watermark(timestamp)
    state: WatchState = tracker.current_restriction()
    if state.done:
      return
    now = time.time()
    try:
      matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # a transient listing error: try again next poll
      _LOG.warning('--events-watch %s: listing failed: %s', pattern, e)
      matches = []
    new = sorted((m for m in matches if m.path not in state.seen
                  and m.last_updated_in_seconds > state.cutoff),
                 key=lambda m: (m.last_updated_in_seconds, m.path))
    rewritten = sum(1 for m in matches if m.path in state.seen
                    and m.last_updated_in_seconds != state.seen[m.path])
    seen, newest, outputs = dict(state.seen), state.newest, []
    for m in new:
      records, top = self._read(m.path, newest)
      outputs += records
      if top is not None:
        newest = top if newest is None else max(newest, top)
      seen[m.path] = m.last_updated_in_seconds
    last_new = now if new else state.last_new
    cutoff = _forget(seen, state.cutoff)
    stop = self._stop_idle > 0 and now - last_new >= self._stop_idle
    next_state = WatchState(seen, cutoff, newest, last_new, done=stop)
    if not tracker.try_claim(next_state):
      return
    # Emit before moving the watermark, so this poll's own records are not behind it.
    for out in outputs:
      yield out
    self.files.inc(len(new))
    if new:
      _LOG.info('--events-watch %s: read %d new file(s): %s', pattern, len(new),
                ', '.join(m.path for m in new))
    if rewritten:
      self.skipped.inc(rewritten)
    if stop:
      _LOG.info('--events-watch %s: no new file for %.0f s, stopping', pattern, now - last_new)
      return  # restriction done: the watermark goes to infinity
    if newest is not None:
      mark = newest - self._delay
      if self._idle > 0 and now - last_new >= self._idle:
        idle_mark = now - self._delay
        if self._idle_limit > 0:
          idle_mark = min(idle_mark, newest + self._idle_limit)
        mark = max(mark, idle_mark)
      mark = Timestamp.of(mark)
      if mark > watermark.current_watermark():
        watermark.set_watermark(mark)
    tracker.defer_remainder(Duration.of(self._interval))


class WatchFiles(beam.PTransform):
  """Glob -> unbounded PCollection of RawRecords of every new file, stamped with event time."""

  def __init__(self, pattern: str, interval: float = 30.0, max_delay: int = 600,
               idle_seconds: float = 900.0, idle_limit: int = 14400, stop_idle: float = 0.0,
               limits: ReadLimits = DEFAULT_LIMITS):
    super().__init__()
    self._pattern = pattern
    self._fn = _WatchFilesFn(interval, max_delay, idle_seconds, idle_limit, stop_idle, limits)

  def expand(self, pbegin):
    install_fnapi_metrics_fix()
    return (pbegin
            | 'Pattern' >> beam.Create([self._pattern])
            | 'PollAndRead' >> beam.ParDo(self._fn).with_output_types(RawRecord))
