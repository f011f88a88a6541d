"""Per-identity event-time sliding windows, built from panes.

A 1 h window sliding every 15 min is the union of four 15 min panes. Each event
is added once to its pane; pane summaries are then merged into the sliding
windows that contain them: a quarter of the per-event work of assigning events
to sliding windows directly, with the same result.

Unbounded input uses Beam windowing (``FixedWindows`` panes, ``SlidingWindows``)
so results follow the watermark, with late data handled by triggers. Bounded
input computes the very same windows by key, in the global window: Beam's Python
runners drive every non-global window of a batch GroupByKey through the general
trigger machinery (measured here: ~5k windows/s, the whole batch job's
bottleneck), while keyed combines in the global window take the fast path; each
identity's panes are then shuffled once and slid into its windows in one DoFn. Both
paths emit identical ``IdentityWindow`` elements stamped at the window's end
(tested in tests/test_windowing.py).
"""
from __future__ import annotations

import functools
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration

from postauth.domain.window import WindowAggregate
from postauth.transforms.aggregate import (WindowAggregateFn, aggregate_from_fields, encode_aggregate, estimated_size,
                                          loads_or_unpickle)
from postauth.domain.event import Event
from postauth.transforms.sampled_size import SampledSizeCoder

EPSILON = 1e-6  # the last instant (1 us) before a window's end: Beam's window.max_timestamp()


class IdentityWindow(typing.NamedTuple):
  """One identity's activity in one event-time window.

  ``firing``: which firing of the window this is (Beam's pane index: 0 the first; a streaming
  window fires again for late events and, on some runners, once more as it closes)."""
  identity: str
  window_start: float
  window_end: float
  agg: WindowAggregate
  firing: int = 0


def estimated_window_size(w: IdentityWindow) -> int:
  """About ``IdentityWindowCoder``'s size of ``w``, without encoding it (``estimated_size``)."""
  return 40 + len(w.identity) + estimated_size(w.agg)


class IdentityWindowCoder(SampledSizeCoder):
  """An IdentityWindow as one orjson list (identity, bounds, firing, then its aggregate's fields).

  Without it Beam would pickle the tuple and its aggregate at the history shuffle.
  """

  def encode(self, value: IdentityWindow) -> bytes:
    return encode_aggregate(value, value.agg, [value.identity, value.window_start, value.window_end, value.firing])

  def decode(self, encoded: bytes) -> IdentityWindow:
    return loads_or_unpickle(
        encoded, lambda v, ev: IdentityWindow(v[0], v[1], v[2], aggregate_from_fields(v[4:], ev), v[3]))

  def measured_size(self, value: IdentityWindow) -> int:
    return estimated_window_size(value)

  def is_deterministic(self) -> bool:
    return False

  def to_type_hint(self):
    return IdentityWindow


beam.coders.registry.register_coder(IdentityWindow, IdentityWindowCoder)

# One identity's windows, in time order (bounded input, ``grouped``).
IDENTITY_WINDOWS = typing.Tuple[str, typing.List[IdentityWindow]]

# (identity, aggregates of its panes or parts of them): typed so the shuffle uses WindowAggregateCoder.
PANE_PARTS = typing.Tuple[str, typing.List[WindowAggregate]]


def is_pane_parts(pcoll: beam.PCollection) -> bool:
  """Whether ``pcoll`` holds pane parts (``PANE_PARTS``) rather than Events."""
  return pcoll.element_type == beam.typehints.Tuple[str, beam.typehints.List[WindowAggregate]]


class _AttachWindow(beam.DoFn):
  """(identity, agg) in a Beam sliding window -> IdentityWindow, once per firing.

  The windows discard, so a late firing carries only its late events; the history step, which
  keeps each identity's recent windows, puts the whole window back together (an accumulating
  grouping on Prism keeps every fired element until the window expires and holds the
  watermark, so every finding, the allowed lateness behind). A late event that reaches the
  window as it closes comes only in that closing pane (late and last). So every firing goes on,
  numbered (``firing``); the history drops the repeats that bring nothing new and folds each
  window once (transforms/history.py, models/history.py).
  """

  def __init__(self):
    self.windows = Metrics.counter('postauth', 'identity_windows')

  def process(self, kv, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    identity, agg = kv
    self.windows.inc()
    yield IdentityWindow(identity, float(win.start), float(win.end), agg, pane.index)


class _CountPaneEvents(beam.DoFn):
  """Counts the events the pane windows kept (``events_windowed``); passes panes through.

  Panes discard, so a late re-firing carries only its new events: the sum is every event
  the windows accepted. Behind ``LateEventGate`` it equals the gate's ``events_on_time``
  minus duplicates; a shortfall would be events Beam dropped as late.
  """

  def __init__(self):
    self.events = Metrics.counter('postauth', 'events_windowed')

  def process(self, kv):
    self.events.inc(kv[1].count)
    yield kv


def _pane_start(agg: WindowAggregate, period: int) -> int:
  return int(agg.first_time // period) * period


def _part_order(agg: WindowAggregate):
  return agg.first_time, agg.last_time, agg.count


class _SlidePanes(beam.DoFn):
  """(identity, its lists of pane parts) -> IdentityWindow per window with activity, stamped at its end.

  Parts of one pane (one per file it spans, when the parse aggregated them) are merged first,
  in time order. Each window's aggregate is then a fresh merge of the panes it holds, in time
  order (a pane sits in ``size / period`` windows; merging copies, so panes are never shared
  between windows). One shuffle of panes by identity instead of one per window holding the
  pane; the windows leave stamped like Beam's window output (``end - EPSILON``).
  """

  def __init__(self, size: int, period: int, grouped: bool = False):
    self._size, self._period, self._grouped = size, period, grouped
    self.windows = Metrics.counter('postauth', 'identity_windows')

  def process(self, kv):
    windows = self._slide(*kv)
    if self._grouped:
      yield kv[0], [w.value for w in windows]
    else:
      yield from windows

  def _slide(self, identity, part_lists) -> typing.List[TimestampedValue]:
    period, size = self._period, self._size
    parts = sorted((part for parts in part_lists for part in parts), key=_part_order)
    panes: typing.List[WindowAggregate] = []
    starts: typing.List[int] = []
    for part in parts:  # sorted by first event: a pane's parts are adjacent
      start = _pane_start(part, period)
      if starts and starts[-1] == start:
        panes[-1].merge(part)
      else:
        panes.append(part)
        starts.append(start)
    windows = sorted({s - k * period for s in starts for k in range(size // period)})
    lo, out = 0, []
    for start in windows:
      while starts[lo] < start:
        lo += 1
      agg, i = WindowAggregate(), lo
      while i < len(starts) and starts[i] < start + size:
        agg.merge(panes[i], lazy=True)  # the panes stay as they are from here on
        i += 1
      end = float(start + size)
      out.append(TimestampedValue(IdentityWindow(identity, float(start), end, agg), end - EPSILON))
    self.windows.inc(len(out))
    return out


class _MergePanes(beam.PTransform):
  """(identity, [pane aggregates or parts]) -> IdentityWindow per window, bounded input; or, with
  ``grouped``, (identity, [its IdentityWindows in time order]) per identity."""

  def __init__(self, size: int, period: int, grouped: bool = False):
    super().__init__()
    self._size, self._period, self._grouped = size, period, grouped

  def expand(self, panes):
    out = IDENTITY_WINDOWS if self._grouped else IdentityWindow
    return (panes
            | 'GroupByIdentity' >> beam.GroupByKey()
            | 'SlidePanes' >> beam.ParDo(_SlidePanes(self._size, self._period, self._grouped))
            .with_output_types(out))


# Functions, not lambdas, bound by keyword: this module may run compiled (setup.py COMPILED),
# where Beam pickles a function by reference and calls it with the element alone.
def _by_identity_pane(e: Event, period: int) -> typing.Tuple[typing.Tuple[str, int], Event]:
  return (e.identity, int(e.event_time // period) * period), e


def _pane_parts(kv):
  return kv[0][0], [kv[1]]


def _by_identity(e: Event) -> typing.Tuple[str, Event]:
  return e.identity, e


class IdentityWindows(beam.PTransform):
  """Timestamped Events -> IdentityWindow per (identity, sliding window) with activity.

  Streaming: late events within ``allowed_lateness`` re-fire their panes and
  their windows, both discarding: only the late delta travels, and the history
  step (``TrackHistoryFn``) adds it to the window's earlier firings, so scoring
  always sees whole windows. Later events are dropped by Beam, silently: the detection job puts
  ``transforms.lateness.LateEventGate`` in front, which dead-letters them first,
  and gives this transform the gate's lateness plus its margin.

  ``grouped`` (bounded input only): one (identity, [its windows in time order]) per identity,
  for a next step that walks an identity's windows in order anyway (the history), so the
  windows need no second shuffle.
  """

  def __init__(self, size_seconds: int = 3600, period_seconds: int = 900,
               allowed_lateness: int = 0, evidence: bool = True, grouped: bool = False):
    super().__init__()
    self.grouped = grouped
    self.evidence = evidence  # keep a sample of the events for findings (domain/evidence.py)
    if size_seconds % period_seconds:
      raise ValueError('window size must be a multiple of the period')
    self.size = size_seconds
    self.period = period_seconds
    self.allowed_lateness = allowed_lateness

  def expand(self, events):
    if events.is_bounded:
      return self._keyed(events)
    if self.grouped:
      raise ValueError('grouped windows are for bounded input')
    return self._windowed(events)

  def _keyed(self, events):
    if is_pane_parts(events):  # the parse aggregated them (ParseFiles(pane_seconds=...))
      return events | 'MergePanes' >> _MergePanes(self.size, self.period, self.grouped)
    period = self.period
    return (
        events
        | 'KeyByIdentityPane' >> beam.Map(functools.partial(_by_identity_pane, period=period)).with_output_types(
            typing.Tuple[typing.Tuple[str, int], Event])
        | 'AggregatePanes' >> beam.CombinePerKey(WindowAggregateFn(period, self.evidence))
        | 'PaneToWindows' >> beam.Map(_pane_parts).with_output_types(PANE_PARTS)
        | 'MergePanes' >> _MergePanes(self.size, period, self.grouped))

  def _windowed(self, events):
    pane_kwargs, slide_kwargs = {}, {}
    if self.allowed_lateness > 0:
      late = trigger.AfterWatermark(late=trigger.AfterCount(1))
      lateness = Duration(seconds=self.allowed_lateness)
      # Both discard, see _AttachWindow: TrackHistoryFn adds a late firing to the earlier ones.
      pane_kwargs = slide_kwargs = dict(trigger=late, allowed_lateness=lateness,
                                        accumulation_mode=trigger.AccumulationMode.DISCARDING)
    return (
        events
        | 'KeyByIdentity' >> beam.Map(_by_identity).with_output_types(typing.Tuple[str, Event])
        | 'PaneWindows' >> beam.WindowInto(window.FixedWindows(self.period), **pane_kwargs)
        | 'AggregatePanes' >> beam.CombinePerKey(WindowAggregateFn(self.period, self.evidence))
        | 'CountPaneEvents' >> beam.ParDo(_CountPaneEvents()).with_output_types(
            typing.Tuple[str, WindowAggregate])
        | 'SlidingWindows' >> beam.WindowInto(
            window.SlidingWindows(self.size, self.period), **slide_kwargs)
        | 'MergePanes' >> beam.CombinePerKey(WindowAggregateFn())
        | 'AttachWindow' >> beam.ParDo(_AttachWindow()).with_output_types(IdentityWindow))
