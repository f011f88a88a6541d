"""A keyed event-time timer loop, run in batch as a plain loop over each key's grouped elements.

Why: the merge of anomalous windows into findings and the dedup of findings are
stateful DoFns with event-time timers, so batch and streaming emit the same
versions. On bounded input every timer of a key fires after all its elements have
arrived, in time order; Beam's Python workers pay for that with a state-cache
commit per key and bundle whose size estimate (``objsize``) walks every loaded
module's globals: measured on a 43k-event day, most of the batch job's CPU
(docs/startup-and-marginal.md). Grouping each key's elements once and running the
same step function at the same timer times gives the same outputs without state.
"""
from __future__ import annotations

import itertools
import typing
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from postauth.transforms.bundle_batches import BatchPerBundle
from postauth.transforms.packed import Packed

# step(now_ms, waiting) -> (outputs, still waiting, next timer in ms or None)
Step = Callable[[int, List[Any]], Tuple[Iterable[Any], List[Any], Optional[int]]]


def timer_ms(t) -> int:
  """A time as timers carry it: whole milliseconds, rounded down (the Fn API encodes timers
  in milliseconds; compared in finer units, a window stamped 1 us before its end would never
  be due at its own timer, which would re-arm at the same time forever)."""
  return Timestamp.of(t).micros // 1000


def at_ms(ms: int) -> Timestamp:
  return Timestamp(micros=ms * 1000)


def walk(step: Step, waiting: List[Any], first_ms: Optional[int]) -> Iterable[Any]:
  """Fires ``step`` at ``first_ms`` and then at each time it asks for, as the timer would."""
  now = first_ms
  while now is not None:
    out, waiting, now = step(now, waiting)
    yield from out


class WalkFn(beam.DoFn):
  """Batch: (key, all its (timestamp ms, element)) -> what a fresh ``step`` emits, walked from
  the first time ``start`` names, as the key's timer would fire."""

  def __init__(self, new_step: Callable[[], Step],
               start: Callable[[List[Tuple[int, Any]]], Tuple[List[Any], int]]):
    self._new_step = new_step
    self._start = start

  def process(self, kv):
    waiting, first = self._start(list(kv[1]))
    yield from walk(self._new_step(), waiting, first)


class WalkBatchesFn(WalkFn):
  """``WalkFn`` over (key, [batches of its (timestamp ms, element)]), as ``GroupWithTimestamps``
  gives them."""

  def process(self, kv):
    yield from super().process((kv[0], itertools.chain.from_iterable(kv[1])))


class _KeyWithTimestamp(BatchPerBundle):
  """element -> (key, [(timestamp in ms, element)]) per key and bundle: the grouping drops
  element timestamps, so each travels with its element."""

  def __init__(self, key: Callable[[Any], str]):
    super().__init__(key_of=lambda stamped: key(stamped[1]), stamp=MIN_TIMESTAMP)

  def process(self, element, ts=beam.DoFn.TimestampParam):
    yield from super().process((timer_ms(ts), element), ts)


class GroupWithTimestamps(beam.PTransform):
  """Bounded elements (one PCollection, or several) -> (key, [[(timestamp ms, element), ...] per
  bundle]) for a walk per key (``WalkBatchesFn``). A key's elements of a bundle are shuffled as
  one packed list (transforms/packed.py): what they share (a finding's versions repeat most of
  their evidence records) is pickled, and unpickled, once.

  Several inputs are keyed where they are made and flattened into the grouping itself: a
  Flatten before a keying step would be a stage boundary of its own, where every element
  crosses in Beam's default encoding (~5% of a day's batch CPU for the finding versions)."""

  def __init__(self, key: Callable[[Any], str]):
    super().__init__()
    self._key = key

  def expand(self, pcolls):
    inputs = _several(pcolls)
    keyed = [pc | ('KeyWithTimestamp' + (str(i) if len(inputs) > 1 else '')) >> beam.ParDo(
        _KeyWithTimestamp(self._key)).with_output_types(typing.Tuple[str, Packed])
             for i, pc in enumerate(inputs)]
    if len(keyed) > 1:
      keyed = [keyed | 'Together' >> beam.Flatten()]
    return keyed[0] | 'GroupByKey' >> beam.GroupByKey()


def _identity(x) -> str:
  return x['identity']


def _several(pcolls: Union[beam.PCollection, Sequence[beam.PCollection]]) -> List[beam.PCollection]:
  """One PCollection or several, as a list."""
  return list(pcolls) if isinstance(pcolls, (tuple, list)) else [pcolls]


def in_global_window(pcoll: Union[beam.PCollection, Sequence[beam.PCollection]], label: str,
                     allowed_lateness: int = 0) -> Union[beam.PCollection, Tuple[beam.PCollection, ...]]:
  """``pcoll`` (or each of several) in the global window with the default trigger, as the
  per-identity walks need it. No step when it is there already, as a bounded pipeline's usually
  is: every step costs at start-up."""
  if isinstance(pcoll, (tuple, list)):
    return tuple(in_global_window(pc, f'{label}{i}', allowed_lateness) for i, pc in enumerate(pcoll))
  ws = pcoll.windowing
  if (pcoll.is_bounded and isinstance(ws.windowfn, window.GlobalWindows)
      and ws.triggerfn == trigger.DefaultTrigger() and ws.allowed_lateness == Duration(seconds=allowed_lateness)
      and ws.accumulation_mode == trigger.AccumulationMode.DISCARDING):
    return pcoll
  return pcoll | label >> beam.WindowInto(window.GlobalWindows(),
                                          allowed_lateness=Duration(seconds=allowed_lateness))


def per_identity(globally: Union[beam.PCollection, Sequence[beam.PCollection]], new_step: Callable[[], Step],
                 start: Callable[[List[Tuple[int, Any]]], Tuple[List[Any], int]],
                 stateful_fn: beam.DoFn, walk_label: str, stream_label: str,
                 key: Callable[[Any], str] = _identity, grouped: bool = False) -> beam.PCollection:
  """One keyed timer loop per identity (or per ``key``), chosen by boundedness: on bounded
  input the grouped walk of ``new_step`` (no state cache), on unbounded input ``stateful_fn``
  with state and event-time timers over (key, element) pairs. Both run the same step function.
  ``globally``: one PCollection or several (walked together, as if flattened).
  ``grouped`` (bounded input): elements are (key, [(timestamp ms, element)]) already, one per
  key, and are walked as they come."""
  inputs = _several(globally)
  if grouped:
    if len(inputs) > 1 or not inputs[0].is_bounded:
      raise ValueError('grouped walks are for one bounded input')
    return inputs[0] | walk_label >> beam.ParDo(WalkFn(new_step, start))
  if all(pc.is_bounded for pc in inputs):
    return (globally
            | 'GroupByIdentity' >> GroupWithTimestamps(key)
            | walk_label >> beam.ParDo(WalkBatchesFn(new_step, start)))
  # Keyed where they are made, then flattened (as GroupWithTimestamps does): a keying step after
  # the Flatten is a stage of its own on Prism, a bundle there for each bundle of each input.
  keyed = [pc | ('KeyByIdentity' + (str(i) if len(inputs) > 1 else '')) >> beam.Map(
      lambda x: (key(x), x)).with_output_types(typing.Tuple[str, typing.Any]) for i, pc in enumerate(inputs)]
  if len(keyed) > 1:
    keyed = [keyed | 'Together' >> beam.Flatten()]
  return keyed[0] | stream_label >> beam.ParDo(stateful_fn)
