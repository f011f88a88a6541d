"""An event-time watermark for ``ReadFromPubSub`` on Beam's Python DirectRunner.

Why this exists: on Dataflow, a Pub/Sub source read with a timestamp attribute
has a watermark estimated from the event times of the backlog. Beam's Python
DirectRunner instead holds the source watermark at the wall clock
(``_PubSubReadEvaluator.finish_bundle`` returns ``Timestamp.of(time.time())``,
marked "TODO: Correct value for watermark hold" in Beam 2.77). With that, every
record older than "now" is late after the first bundle and its windows are
dropped, and a window only closes when the real clock passes its end: an
event-time pipeline with 1 h windows cannot be tried or tested locally.

This evaluator keeps Beam's Pub/Sub read (same subscription handling, same
timestamp-attribute parsing, same auto-ack) and changes only the watermark it
reports, following the policy of Beam's Kafka
``CustomTimestampPolicyWithLimitedDelay``:

* the watermark trails the newest event time read by ``max_delay`` seconds,
  but only advances when a pull came back short (the subscription's backlog was
  drained): Pub/Sub does not deliver in order (pstest returns its backlog in
  random order), so while a backlog remains an older message may still be in it;
* it never passes wall-clock time minus ``max_delay``;
* when no message arrived for ``idle_seconds``, it advances to wall-clock time
  minus ``max_delay`` (the source is idle: nothing older is coming), which is
  what closes the last windows at the end of a replay -- but only once a message
  has been read (before that the watermark stays at its minimum: records published
  to a job that idled since its start are on time, not all late), and at most
  ``idle_limit`` seconds of event time past the newest event read (default 4 h:
  past every window, finding flush and file part of that event), so older logs
  published after a quiet spell (a backfill, a delivery backlog) are not all late.
  Events later than the allowed lateness are dead-lettered with reason ``late`` by
  ``transforms.lateness.LateEventGate``, never dropped silently;
* a timestamp attribute more than ``--max-clock-skew`` ahead of the wall clock is not
  a time the watermark follows (``stamp_messages``, shared with the splittable reader):
  before, one message stamped 2099 took the watermark to the wall clock, and a replay of
  older logs was late from then on. Its record is dead-lettered (``time_ahead_of_clock``).

It also pulls up to ``--pubsub-max-messages`` per bundle (Beam's evaluator pulls
10) and creates the temporary subscription of a ``topic`` read with an explicit
ack deadline (the local pstest server rejects the default of 0).

It is registered through ``TransformEvaluatorRegistry._test_evaluators_overrides``,
the DirectRunner's own hook for replacing an evaluator, affects only the
DirectRunner (Dataflow, Flink and Prism use their own Pub/Sub sources), and
``--direct-pubsub-watermark wall-clock`` restores Beam's behaviour.
"""
from __future__ import annotations

import logging
import threading
import time
import typing
import weakref
from typing import List, Optional, Tuple

from apache_beam.runners.direct.direct_runner import _DirectReadFromPubSub
from apache_beam.runners.direct.transform_evaluator import (TransformEvaluatorRegistry,
                                                            _PubSubReadEvaluator)
from apache_beam.runners.direct.util import TransformResult
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from apache_beam import pvalue

from postauth.transforms.clock import ClockSkew, ahead_reason
from postauth.transforms.options import EventOptions, PubSubSourceOptions

_LOG = logging.getLogger(__name__)


class SourceClock:
  """Watermark state of one Pub/Sub read of one running pipeline, and its policy."""

  def __init__(self, max_delay: float, idle_seconds: float, idle_limit: float = 0):
    self.lock = threading.Lock()
    self.max_delay = max_delay
    self.idle_seconds = idle_seconds
    self.idle_limit = idle_limit  # seconds of event time an idle advance may pass the newest event
    self.watermark = MIN_TIMESTAMP
    self.newest = None  # newest event time read so far
    self.last_message = time.monotonic()

  def advance(self, times: List[Timestamp], drained: bool, wall: float, monotonic: float) -> Timestamp:
    """The watermark after a pull that returned messages stamped ``times``.

    ``drained``: the pull returned fewer messages than asked, so no older message is
    waiting. ``wall`` is the wall-clock time, ``monotonic`` a monotonic clock reading.
    """
    with self.lock:
      now_bound = Timestamp.of(wall - self.max_delay)
      if times:
        newest = max(times)
        self.newest = newest if self.newest is None else max(self.newest, newest)
        self.last_message = monotonic
      candidate = MIN_TIMESTAMP
      if drained and self.newest is not None:
        candidate = min(self.newest - self.max_delay, now_bound)
      # Idle: advance, but only once a message was read (a job started before its first
      # message must not declare everything published later late), and not further than
      # idle_limit past the newest event (older logs published after a quiet spell).
      if not times and self.newest is not None and monotonic - self.last_message >= self.idle_seconds:
        idle = now_bound
        if self.idle_limit > 0:
          idle = min(idle, self.newest + self.idle_limit)
        candidate = max(candidate, idle)
      if candidate > self.watermark:
        self.watermark = candidate
      return self.watermark


def _attribute_time(value):
  """RFC 3339 or epoch milliseconds, as Beam reads timestamp attributes; None if absent or bad."""
  if value is None:
    return None
  try:
    return Timestamp(micros=int(value) * 1000)
  except (ValueError, OverflowError):
    pass
  try:
    return Timestamp.from_rfc3339(value)
  except ValueError:
    _LOG.warning('timestamp attribute %r does not parse; using the publish time', value[:100])
    return None


class Stamp(typing.NamedTuple):
  """How one pulled message is stamped, the same in both Pub/Sub readers."""
  ts: Timestamp  # the element timestamp
  ahead: str  # '' or the record's error (clock.ahead_reason): its attribute is ahead of the clock
  bad: bool  # a timestamp attribute was asked for and is absent or unparsable: the publish time


def stamp_messages(pulled: List[Tuple[Optional[str], Timestamp]], attribute: Optional[str],
                   skew: ClockSkew, newest: Optional[Timestamp]) -> List[Stamp]:
  """(timestamp attribute value, publish time) of each message of a pull -> its ``Stamp``.

  The attribute time stamps the message and is what the watermark follows; absent or
  unparsable, the publish time does. An attribute more than ``--max-clock-skew`` ahead of the
  wall clock (``transforms/clock.py``) moves nothing: the message is stamped with the newest
  acceptable time read so far (this pull's or ``newest``; before any, its publish time) and
  marked, so the parse dead-letters it as ``time_ahead_of_clock``. Callers give the watermark
  only the stamps without ``ahead``.
  """
  horizon = skew.horizon()
  out = []
  for value, published in pulled:
    ts = _attribute_time(value) if attribute else None
    ahead = skew.ahead(ts.micros / 1e6, f'timestamp attribute {attribute}', horizon) if ts is not None else ''
    out.append(Stamp(published if ts is None else ts, ahead_reason(ahead) if ahead else '',
                     bool(attribute) and ts is None))
  good = [st.ts for st in out if not st.ahead] + ([newest] if newest is not None else [])
  return [st._replace(ts=max(good) if good else st.ts) if st.ahead else st for st in out]


def _max_clock_skew(evaluation_context) -> float:
  return evaluation_context.pipeline_options.view_as(EventOptions).max_clock_skew


def _settings(evaluation_context):
  options = getattr(evaluation_context, 'pipeline_options', None)
  if options is None:
    return None
  return options.view_as(PubSubSourceOptions)


class EventTimePubSubReadEvaluator(_PubSubReadEvaluator):
  """Beam's DirectRunner Pub/Sub read with an event-time watermark (see the module docstring)."""

  _clocks = weakref.WeakKeyDictionary()  # applied transform -> SourceClock, like Beam's caches
  _clocks_lock = threading.Lock()

  @classmethod
  def get_subscription(cls, transform, project, short_topic_name, sub_project, short_sub_name):
    if short_sub_name:
      return super().get_subscription(transform, project, short_topic_name, sub_project,
                                      short_sub_name)
    import random
    with cls._subscriber_client_cache_lock:
      name = cls._subscription_cache.get(transform)
      if name:
        return name
      state = cls._get_subscriber_client_state_unlocked(transform)
    with state._lock:
      with cls._subscriber_client_cache_lock:
        name = cls._subscription_cache.get(transform)
        if name:
          return name
      client = state.client
      name = client.subscription_path(sub_project, 'beam_%d_%x' % (int(time.time()),
                                                                   random.randrange(1 << 32)))
      client.create_subscription(name=name, topic=client.topic_path(project, short_topic_name),
                                 ack_deadline_seconds=60)
      state.set_temporary_subscription(name)
      with cls._subscriber_client_cache_lock:
        cls._subscription_cache[transform] = name
      return name

  def _clock(self, settings) -> SourceClock:
    with self._clocks_lock:
      clock = self._clocks.get(self._applied_ptransform)
      if clock is None:
        clock = self._clocks[self._applied_ptransform] = SourceClock(
            settings.watermark_max_delay, settings.watermark_idle_seconds,
            settings.watermark_idle_limit)
      return clock

  def _pull(self, max_messages: int, skew: ClockSkew = ClockSkew(), newest: Optional[Timestamp] = None):
    """Beam's _read_from_pubsub with a configurable batch size: [(Stamp, PubsubMessage)].

    A timestamp attribute that does not parse falls back to the publish time (Beam's
    evaluator raises and stops the job): the record's own event time, read by the
    parser, decides its windows anyway. One ahead of the clock moves nothing
    (``stamp_messages``); ``_ToRawRecord`` marks its record for the dead letters.
    """
    from apache_beam.io.gcp.pubsub import PubsubMessage
    attribute = self.source.timestamp_attribute
    client = self._get_subscriber_client(self._applied_ptransform)
    response = client.pull(subscription=self._sub_name, max_messages=max_messages, timeout=30)
    messages = [PubsubMessage._from_message(r.message) for r in response.received_messages]
    stamps = stamp_messages(
        [((m.attributes or {}).get(attribute) if attribute else None,
          Timestamp.from_utc_datetime(r.message.publish_time))
         for m, r in zip(messages, response.received_messages)], attribute, skew, newest)
    ack_ids = [r.ack_id for r in response.received_messages]
    if ack_ids:
      client.acknowledge(subscription=self._sub_name, ack_ids=ack_ids)
    return list(zip(stamps, messages))

  def finish_bundle(self) -> TransformResult:
    settings = _settings(self._evaluation_context)
    if settings is None or settings.direct_pubsub_watermark != 'event-time':
      return super().finish_bundle()
    max_messages = settings.pubsub_max_messages
    clock = self._clock(settings)
    data = self._pull(max_messages, ClockSkew(_max_clock_skew(self._evaluation_context)), clock.newest)
    bundles = []
    if data:
      bundle = self._evaluation_context.create_bundle(list(self._outputs)[0])
      for stamp, message in data:
        element = message if self.source.with_attributes else message.data
        bundle.output(GlobalWindows.windowed_value(element, timestamp=stamp.ts))
      bundles = [bundle]
    watermark = clock.advance([st.ts for st, _ in data if not st.ahead], len(data) < max_messages,
                              time.time(), time.monotonic())
    if self._applied_ptransform.inputs:
      input_pvalue = self._applied_ptransform.inputs[0]
    else:
      input_pvalue = pvalue.PBegin(self._applied_ptransform.transform.pipeline)
    unprocessed = self._evaluation_context.create_bundle(input_pvalue)
    return TransformResult(self, bundles, [unprocessed], None, {None: watermark})


def install() -> None:
  """Registers the evaluator with the DirectRunner (idempotent; other runners are unaffected)."""
  TransformEvaluatorRegistry._test_evaluators_overrides[_DirectReadFromPubSub] = (
      EventTimePubSubReadEvaluator)
