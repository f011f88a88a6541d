"""Late events: caught before the event-time windows drop them, counted and dead-lettered.

Beam drops an element silently at a windowed GroupByKey when the input watermark
has passed its window's end plus the allowed lateness (Python: the trigger
driver's "ignore expired windows"; no counter, no side output). A Python DoFn
cannot read the watermark either. So ``LateEventGate`` learns it the only
portable way, from event-time timers, and decides itself, upstream of the
windows:

* Events reach the gate in batches (``transforms/bundle_batches.py``): each bundle's events
  go to one of ``shards`` keys in turn, so the gate reads and writes its state once per
  batch, not per event, and a busy identity spreads over every shard (no hot key).
  Each shard holds ``known``,
  the timestamp of the latest of its event-time timers that fired: a lower bound
  of its input watermark.
* Each shard keeps a ladder of probe timers at ``known + tick * 2**i``
  (i = 0..26, one dynamic timer tag each; 60 s * 2**26 spans the parsers'
  2000-2100 range). When the watermark moves, every probe it passed fires; the
  next ladder starts from the highest. A watermark jump of any size (a Pub/Sub
  source's idle advance, a replay's drain step) is learned in log2(jump / tick)
  timer rounds, and in steady state ``known`` trails the watermark by < tick.
* An event whose pane (``period``-second bucket of its event time) ended more
  than ``lateness`` before ``known`` is late: counter ``postauth/events_late``
  and a dead letter ``{"stage": "window", "reason": "late", ...}`` with the raw
  record, where it came from (file#index or pubsub:SUB#message-id) and, in
  ``detail``, by how much. Other events go on, stamped with their event time.
* The windows downstream keep state for ``lateness + margin`` (``GATE_MARGIN``
  = 10 min), so what the gate lets through they keep even when the watermark
  moved a little after the gate looked. On runners that hold a stateful DoFn's
  output watermark at its pending event-time timers (the Fn API runners: Prism,
  Flink, Dataflow; the Python SDK sets a timer's hold to its firing time), the
  gate's output watermark never passes ``known + tick``, so nothing it lets
  through can reach a window that has expired. The Python BundleBasedDirectRunner
  ignores timer holds: there the margin must cover how far the watermark moves
  between the gate and the windows (a large jump concurrent with arriving old
  events could still slip through; ``IdentityWindows`` counts what its panes
  received, ``events_windowed``, so a shortfall is visible).
* Each shard is seeded at start (one element per shard from a bounded
  ``Create``), so its probes run before its first event arrives.
* Events enter the gate stamped at the start of time and leave it stamped with
  their event time. Prism keeps a key's data and timers in one heap ordered by
  timestamp and will not pass a timer above the watermark, so an event stamped
  with its own time (ahead of the watermark by more than ``tick``) waited
  behind the shard's next probe until the watermark moved: on a quiet stream
  the last events of a burst were held until the source's idle advance. The
  gate's input is in the global window, which never expires, so the early
  stamp makes nothing late; the gate does not read its input's timestamp.
"""
from __future__ import annotations

import json
import math
import typing

import apache_beam as beam
from apache_beam.coders import FloatCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from postauth.domain.event import Event
from postauth.transforms.formats.base import MAX_TIME, MIN_TIME
from postauth.transforms.bundle_batches import BatchPerBundle
from postauth.transforms.parse import EVENT_WITH_RAW, dead_letter

LATE = 'late'
# Default --allowed-lateness (pipeline/options.py): CloudTrail delivers an event to S3 /
# EventBridge about 5 minutes after the call on average, without a guarantee, and delays
# of up to 45 minutes are reported; GCP audit log sinks and Kubernetes audit webhooks are
# faster. One hour covers the CloudTrail peaks with margin; its cost is that each
# identity's pane and window state lives one hour longer.
DEFAULT_ALLOWED_LATENESS = 3600
PROBE_TICK = 60  # seconds of event time between the gate's finest probes
PROBES = 27  # PROBE_TICK * 2**26 > MAX_TIME - MIN_TIME
GATE_MARGIN = 600  # windows keep state this much beyond the gate's lateness
SHARDS = 16  # gate keys: a bundle's events are dealt over them, whatever their identity
_KEYED = typing.Tuple[int, typing.Optional[typing.List[EVENT_WITH_RAW]]]


def beam_lateness(allowed_lateness: int) -> int:
  """The lateness the windows downstream of the gate need: the gate's plus its margin."""
  return allowed_lateness + GATE_MARGIN


def pane_end(event_time: float, period: int) -> float:
  return (math.floor(event_time / period) + 1) * period


class _LateGateFn(beam.DoFn):
  """(shard, [(Event, raw), ...] or None for a seed) -> Event (main) or a late dead letter each."""

  KNOWN = ReadModifyWriteStateSpec('known', FloatCoder())
  PROBE = TimerSpec('probe', TimeDomain.WATERMARK)

  def __init__(self, period: int, lateness: int, tick: int = PROBE_TICK):
    self._period, self._lateness, self._tick = period, lateness, tick
    # Beyond this every event the parsers accept is late: no probe is needed (and none
    # is set, so a watermark at infinity ends the ladder).
    self._limit = MAX_TIME + period + lateness + tick
    self.late = Metrics.counter('postauth', 'events_late')
    self.on_time = Metrics.counter('postauth', 'events_on_time')
    self.batches = Metrics.counter('postauth', 'gate_batches')  # state reads: one per batch

  def _ladder(self, probe, known: float) -> None:
    for i in range(PROBES):
      at = known + self._tick * (1 << i)
      if at > self._limit:
        break
      probe.set(Timestamp.of(at), dynamic_timer_tag=str(i))

  def process(self, kv, known=beam.DoFn.StateParam(KNOWN), probe=beam.DoFn.TimerParam(PROBE)):
    _, item = kv
    horizon = known.read()
    if horizon is None:  # the shard's first element (a seed or an event): start probing
      horizon = MIN_TIME
      known.write(horizon)
      self._ladder(probe, horizon)
    if item is None:
      return
    self.batches.inc()
    for event, raw in item:
      deadline = pane_end(event.event_time, self._period) + self._lateness
      if deadline < horizon:
        self.late.inc()
        line = json.loads(dead_letter(LATE, event.raw_ref, raw, stage='window'))
        line['detail'] = (f'event time {event.event_time:.0f} is {horizon - event.event_time:.0f} s behind '
                          f'the watermark (>= {horizon:.0f}); its {self._period} s pane closed more than '
                          f'the allowed lateness of {self._lateness} s before')
        yield beam.pvalue.TaggedOutput(
            LATE, TimestampedValue(json.dumps(line, ensure_ascii=False), event.event_time))
      else:
        self.on_time.inc()
        yield TimestampedValue(event, event.event_time)

  @on_timer(PROBE)
  def on_probe(self, fired=beam.DoFn.TimestampParam, known=beam.DoFn.StateParam(KNOWN),
               probe=beam.DoFn.TimerParam(PROBE)):
    horizon = max(known.read() or MIN_TIME, float(fired))
    known.write(horizon)
    self._ladder(probe, horizon)
    return []


class LateEventGate(beam.PTransform):
  """Timestamped (Event, raw payload) pairs -> events (main) and late dead letters (``late``).

  Unbounded input only (a bounded input has no late data); returns
  ``{'events': ..., 'late': ...}``.
  """

  def __init__(self, period: int, allowed_lateness: int, shards: int = SHARDS,
               tick: int = PROBE_TICK):
    super().__init__()
    self._period, self._lateness = period, allowed_lateness
    self._shards, self._tick = shards, tick

  def expand(self, pairs):
    keyed = pairs | 'BatchPerBundle' >> beam.ParDo(
        BatchPerBundle(spread=self._shards, stamp=MIN_TIMESTAMP)).with_output_types(_KEYED)
    seeds = (pairs.pipeline
             | 'SeedShards' >> beam.Create([(i, None) for i in range(self._shards)])
             .with_output_types(_KEYED))
    gated = ((keyed, seeds)
             | 'WithSeeds' >> beam.Flatten()
             | 'Gate' >> beam.ParDo(_LateGateFn(self._period, self._lateness, self._tick))
             .with_output_types(Event).with_outputs(LATE, main='events'))
    return {'events': gated.events, LATE: gated[LATE]}
