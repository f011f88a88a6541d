"""A Pub/Sub source for every runner: a splittable DoFn over ``google-cloud-pubsub``'s sync pull.

Why: Beam's ``ReadFromPubSub`` is a native read that only Dataflow and the
BundleBasedDirectRunner run (Prism and Flink reject it, the FnApiRunner reads nothing).
This source is an ordinary unbounded splittable DoFn, so Prism, Flink, the FnApiRunner
and the PortableRunner run it (``--pubsub-reader``, see ``pipeline/options.py``).

At least once, never ack at pull time: every ``process`` call pulls one batch
(``SubscriberClient.pull``, ``max_messages`` at a time, up to ``max_pulls`` pulls while each
comes back full), emits one ``RawRecord`` per message stamped with its event time, and
registers the batch's ack ids with ``DoFn.BundleFinalizerParam``. The runner calls that
callback only after it has committed the bundle's outputs (Prism: after ``PersistBundle``,
``prism/internal/stage.go``; the FnApiRunner: after the bundle's outputs are stored;
Dataflow and Flink: after a durable commit / checkpoint). A bundle that fails or a job that
dies before then leaves its messages unacked, and Pub/Sub redelivers them once the
subscription's ack deadline passes; ``DeduplicatePerKey`` downstream drops a redelivered copy
of an event the running job has already seen. A runner that never finalizes would never ack:
the messages keep coming back after every ack deadline -- safe (duplicates are dropped), but
wasteful; a failed ack is logged as a warning. No lease extension is done: a batch is finalized
within a bundle, far inside any sane ack deadline (>= 10 s); a bundle that takes longer than
the deadline gets its messages redelivered, which dedup absorbs.

Reader slots: the initial restriction holds ``readers`` slots and ``split`` makes one part of
each, so several workers read the subscription at once (Pub/Sub hands each message to one of
the pullers); a runner's dynamic split (``try_split`` with a fraction) gives away slots of a
part that holds more than one. Each part keeps its own watermark state; the stage's watermark
is the least of them, so it starts to move once every part has read a message.

Event-time watermark: ``transforms/pull_watermark.py`` (``advance``, for each part).

Its state lives in the restriction (no state API: Prism rejects stateful SDFs), so it survives
checkpoints. With ``stop_idle`` > 0 a part ends after that many seconds without a message (its
watermark goes to infinity; once every part ended every window closes and the job finishes): for
backfills, benchmarks and tests. Only a message with a newer event time counts there:
redeliveries of messages not acked yet do not keep the source alive.

With ``ack_mode='counted'`` (``--events-out`` given) the reader acks nothing itself: it hands
each ack id to ``transforms.pubsub_ack``, which acks once the message's outcome is written
(what makes a kill of Prism, whose commits are in memory, lose nothing).

A ``topic`` read creates its own subscription (ack deadline 60 s) in the initial restriction,
before the parts split, so every slot reads the same one; the first part to stop deletes it and
the others end when they find it gone.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from typing import List, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from postauth.transforms.direct_pubsub import Stamp, stamp_messages
from postauth.transforms.poll_tracker import PollTracker
from postauth.transforms.pull_watermark import (PullOutcome, PullSettings,  # noqa: F401
                                                 PullState, advance)
from postauth.transforms.records import RawRecord

_LOG = logging.getLogger('postauth')
ACK_CHUNK = 1000  # ack ids per Acknowledge request (Pub/Sub caps a request at 512 KiB)


def message_ref(source: str, message_id: str) -> str:
  """The record reference every Pub/Sub reader gives: dead letters keep it with the body."""
  return f'pubsub:{source}#{message_id}'


class SlotTracker(PollTracker):
  """One claim per process() call; a checkpoint keeps the slots, a split gives some away."""

  def try_claim(self, new_state: PullState) -> bool:
    # (the state was computed from the restriction at the start of the call: a split since
    # then took slots away, and the claim must not hand them back)
    return super().try_claim(new_state._replace(slot_start=self._state.slot_start,
                                                slot_end=self._state.slot_end))

  def try_split(self, fraction_of_remainder):
    if fraction_of_remainder <= 0:
      return super().try_split(fraction_of_remainder)  # a checkpoint
    state, claimed = self._state, self._claimed
    slots = state.slot_end - state.slot_start
    if state.done or slots < 2 or (claimed is not None and claimed.done):
      return None
    cut = state.slot_start + min(slots - 1, max(1, math.ceil(slots * fraction_of_remainder)))
    residual = (claimed if claimed is not None else state)._replace(slot_start=cut, done=False)
    self._state = state._replace(slot_end=cut)
    if claimed is not None:
      self._claimed = claimed._replace(slot_end=cut)
    return self._state, residual


ACK_IDS = 'ack_ids'


class _PullFn(beam.DoFn, RestrictionProvider):
  """subscription or topic path -> RawRecords of its messages, acked at bundle finalization."""

  def __init__(self, source: str, is_topic: bool, settings: PullSettings):
    self._source, self._is_topic, self._s = source, is_topic, settings
    self._client = None
    self.messages = Metrics.counter('postauth', 'pubsub_messages')
    self.bad_times = Metrics.counter('postauth', 'pubsub_bad_timestamp_attribute')

  def setup(self):
    from google.cloud import pubsub_v1
    self._client = pubsub_v1.SubscriberClient()

  def teardown(self):
    if self._client is not None:
      self._client.close()
      self._client = None

  # -- RestrictionProvider
  def initial_restriction(self, element) -> PullState:
    # (a topic's subscription is made here, before the parts split: they all read the same one)
    subscription = self._subscription_for_topic(element) if self._is_topic else element
    return PullState(subscription, None, float('-inf'), time.time(),
                     slot_end=max(1, self._s.readers))

  def split(self, element, restriction: PullState):
    """One part per reader slot: each pulls the same subscription in its own loop."""
    if restriction.done:
      yield restriction
      return
    for slot in range(restriction.slot_start, restriction.slot_end):
      yield restriction._replace(slot_start=slot, slot_end=slot + 1)

  def create_tracker(self, restriction) -> SlotTracker:
    return SlotTracker(restriction, 'pubsub')

  def restriction_size(self, element, restriction) -> int:
    return restriction.slot_end - restriction.slot_start

  def restriction_coder(self):
    return PickleCoder()

  def truncate(self, element, restriction):
    return None  # drain: stop pulling; what is unacked is redelivered to the next job

  # -- pulling
  def _subscription_for_topic(self, topic: str) -> str:
    # (called where the runner pairs the element with its restriction: no setup() ran there)
    from google.cloud import pubsub_v1
    project = topic.split('/')[1]
    name = f'projects/{project}/subscriptions/postauth-{uuid.uuid4().hex[:12]}'
    client = self._client or pubsub_v1.SubscriberClient()
    try:
      client.create_subscription(name=name, topic=topic, ack_deadline_seconds=60)
    finally:
      if client is not self._client:
        client.close()
    _LOG.info('--topic %s: reading through the new subscription %s', topic, name)
    return name

  def _ack(self, subscription: str, ack_ids: List[str]) -> None:
    """The bundle finalization callback: the bundle that read these messages is committed."""
    if not ack_ids:
      return
    # (no Beam counters here: a callback runs after its bundle reported its metrics)
    for i in range(0, len(ack_ids), ACK_CHUNK):
      chunk = ack_ids[i:i + ACK_CHUNK]
      try:
        self._client.acknowledge(subscription=subscription, ack_ids=chunk)
      except Exception as e:  # expired ids or a transient error: the messages come back, dedup drops them
        _LOG.warning('acknowledging %d message(s) on %s failed (they will be redelivered): %s',
                     len(chunk), subscription, e)

  def _release(self, subscription: str, ack_ids: List[str]) -> None:
    """Pulled but not emitted (the runner split the restriction meanwhile): redeliver now."""
    if not ack_ids:
      return
    try:
      self._client.modify_ack_deadline(subscription=subscription, ack_ids=ack_ids,
                                       ack_deadline_seconds=0)
    except Exception as e:  # they come back after the ack deadline anyway
      _LOG.warning('releasing %d message(s) on %s failed: %s', len(ack_ids), subscription, e)

  def _stamps(self, received, newest: Optional[float]) -> List[Stamp]:
    """Each message's element timestamp; one whose attribute is ahead of the clock is marked."""
    attribute = self._s.timestamp_attribute
    stamps = stamp_messages(
        [(r.message.attributes.get(attribute) if attribute else None,
          Timestamp.from_utc_datetime(r.message.publish_time)) for r in received],
        attribute, self._s.skew, None if newest is None else Timestamp.of(newest))
    # absent or unparsable: the publish time (the parser reads the record's own time)
    self.bad_times.inc(sum(1 for st in stamps if st.bad))
    return stamps

  def _pull_round(self, subscription: str) -> Tuple[list, List[PullOutcome], bool]:
    """Pulls until one comes back short or ``max_pulls``: (messages, each pull, subscription gone)."""
    from google.api_core.exceptions import DeadlineExceeded, NotFound
    out, pulls = [], []
    for _ in range(max(1, self._s.max_pulls)):
      sent = time.time()
      try:
        response = self._client.pull(subscription=subscription, max_messages=self._s.max_messages,
                                     timeout=self._s.pull_timeout)
      except DeadlineExceeded:  # the server held the pull and had nothing: an empty answer
        pulls.append(PullOutcome(sent, 0))
        break
      except NotFound as e:
        if self._is_topic:  # our own subscription, deleted by the part that stopped first
          return out, pulls, True
        _LOG.warning('pull from %s failed: %s', subscription, e)
        pulls.append(PullOutcome(sent, -1))
        break
      except Exception as e:  # transient (unavailable): try again next round
        _LOG.warning('pull from %s failed: %s', subscription, e)
        pulls.append(PullOutcome(sent, -1))
        break
      out += response.received_messages
      pulls.append(PullOutcome(sent, len(response.received_messages)))
      if len(response.received_messages) < self._s.max_messages:
        break
    return out, pulls, False

  @beam.DoFn.unbounded_per_element()
  def process(self, element, finalizer=beam.DoFn.BundleFinalizerParam,
              tracker=beam.DoFn.RestrictionParam(),
              watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
    # (the finalizer comes before the SDF parameters: Beam 2.77 passes those by keyword and
    # a finalizer after them shifts its positional slot onto ``tracker``)
    state: PullState = tracker.current_restriction()
    if state.done:
      return
    if watermark.current_watermark() is None:
      watermark.set_watermark(MIN_TIMESTAMP)
    subscription = state.subscription
    received, pulls, gone = self._pull_round(subscription)
    if gone:
      _LOG.info('pubsub %s: the subscription %s is gone, this reader stops', self._source, subscription)
      tracker.try_claim(state._replace(done=True))
      finalizer.register(lambda: None)  # (see below: every bundle of the stage registers one)
      return
    now = time.time()
    stamped = list(zip(self._stamps(received, state.newest), received))
    next_state = advance(state, [st.ts.micros / 1e6 for st, _ in stamped if not st.ahead], pulls,
                         now, self._s)
    last_newer = state.last_newer if state.last_newer is not None else state.last_message
    if next_state.newest is not None and (state.newest is None or next_state.newest > state.newest):
      last_newer = now
    # (a message redelivered because its outcome is not written yet -- with ack_mode 'counted'
    # that can wait for the watermark -- is not news: it must not keep the source from ending)
    stop = self._s.stop_idle > 0 and now - last_newer >= self._s.stop_idle
    next_state = next_state._replace(done=stop, last_newer=last_newer)
    if not tracker.try_claim(next_state):
      self._release(subscription, [r.ack_id for r in received])
      return
    counted = self._s.ack_mode == 'counted'
    for st, r in stamped:
      yield TimestampedValue(RawRecord(r.message.data or b'', None, st.ahead,
                                       message_ref(self._source, r.message.message_id)), st.ts)
      if counted:
        yield beam.pvalue.TaggedOutput(
            ACK_IDS, TimestampedValue((r.message.message_id, (subscription, r.ack_id)), st.ts))
    ack_ids = [] if counted else [r.ack_id for r in received]
    self.messages.inc(len(received))
    # Registered for an empty pull too: Prism finalizes every bundle of a stage that asks for
    # finalization, and the SDK answers an error for a bundle that registered nothing.
    finalizer.register(lambda: self._ack(subscription, ack_ids))
    if stop:
      _LOG.info('pubsub %s: no newer event for %.0f s, stopping', self._source, now - last_newer)
      if self._is_topic:
        self._delete_subscription(subscription)
      return  # restriction done: the watermark goes to infinity
    mark = (MIN_TIMESTAMP if next_state.watermark == float('-inf')
            else Timestamp.of(next_state.watermark))
    if mark > watermark.current_watermark():
      watermark.set_watermark(mark)
    full = bool(pulls) and pulls[-1].count >= self._s.max_messages
    tracker.defer_remainder(Duration.of(0 if full else self._s.interval))

  def _delete_subscription(self, subscription: str) -> None:
    from google.api_core.exceptions import NotFound
    try:
      self._client.delete_subscription(subscription=subscription)
    except NotFound:
      pass  # another part stopped first and deleted it
    except Exception as e:
      _LOG.warning('deleting the temporary subscription %s failed: %s', subscription, e)


class PullFromPubSub(beam.PTransform):
  """Subscription (or topic) -> unbounded RawRecords stamped with event time, acked after commit."""

  def __init__(self, subscription: Optional[str] = None, topic: Optional[str] = None,
               settings: PullSettings = PullSettings()):
    super().__init__()
    if bool(subscription) == bool(topic):
      raise ValueError('give exactly one of subscription or topic')
    if (settings.max_messages < 1 or settings.stop_idle < 0 or settings.readers < 1
        or settings.ack_mode not in ('finalize', 'counted')):
      raise ValueError('--pubsub-max-messages and the reader slots must be >= 1 and '
                       '--pubsub-stop-idle >= 0')
    self._path = subscription or topic
    self._fn = _PullFn(self._path, bool(topic), settings)

  def expand(self, pbegin):
    """{'records': RawRecords, ACK_IDS: (message id, (subscription, ack id)) in 'counted' mode}."""
    from postauth.transforms.fnapi_metrics import install_fnapi_metrics_fix
    install_fnapi_metrics_fix()  # long-running SDF stages on the FnApiRunner (see watch.py)
    return (pbegin
            | 'Source' >> beam.Create([self._path])
            | 'PullAndAck' >> beam.ParDo(self._fn).with_outputs(ACK_IDS, main='records'))
