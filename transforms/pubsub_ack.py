"""Acknowledge a Pub/Sub message once its outcome is written, not when the read is committed.

Why: acking at the reading bundle's finalization is at-least-once where the runner's commit is
durable (Dataflow, Flink checkpoints). Prism and the FnApiRunner commit to memory: a job killed
between that commit and the write of what it read loses those messages (measured: 12 of 200
events for a kill -9 mid-stream, docs/pubsub.md). With ``--events-out`` the per-event output is
the commit point instead: the reader (``transforms.pubsub_sdf``, ``ack_mode='counted'``) emits
each message's ack id on a side output, every outcome of a message emits a "done" marker after
it is written -- the event written to ``--events-out`` (markers leave the writer's bundle only
when that bundle, and its file, is committed), a duplicate dropped by
``transforms.dedup_events``, a dead letter or a late event handed to the dead-letter sink --
and this keyed step acks once both meet. A kill before the write leaves the message unacked:
it is redelivered and counted by the restarted job. A kill between the write and the ack (one
bundle of this step) can count a message twice; nothing is lost.

State per message id: the latest ack id (a redelivered copy brings a new one), cleared when the
outcome arrives; or, when the outcome came first, a "done" flag released by an event-time timer
``horizon`` seconds after the message's event time (the dedup span). A copy redelivered after its
message was acked brings a new ack id and a new outcome (a dropped duplicate), and is acked in
turn.
"""
from __future__ import annotations

import json
import logging
from typing import Dict, List

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration

_LOG = logging.getLogger('postauth')
ACK, DONE = 'ack', 'done'


def message_id(ref: str) -> str:
  """``pubsub:<source>#<message id>`` -> the message id."""
  return ref.rpartition('#')[2]


def dead_letter_message_id(line: str) -> str:
  return str(json.loads(line).get('index', ''))


class _AckWhenDoneFn(beam.DoFn):
  # One cell per message id: (subscription, ack id) while waiting for the outcome, or DONE when
  # the outcome came first (one state read per element: on Prism every state access is a round
  # trip to the runner).
  STATE = ReadModifyWriteStateSpec('ack_or_done', PickleCoder())
  EXPIRE = TimerSpec('expire', TimeDomain.WATERMARK)

  def __init__(self, horizon: int):
    self._horizon = Duration(seconds=horizon)
    self._client = None
    self.acked = Metrics.counter('postauth', 'pubsub_acked')

  def setup(self):
    from google.cloud import pubsub_v1
    self._client = pubsub_v1.SubscriberClient()

  def teardown(self):
    if self._client is not None:
      self._client.close()

  def start_bundle(self):
    self._pending: Dict[str, List[str]] = {}

  def process(self, kv, ts=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(STATE),
              expire=beam.DoFn.TimerParam(EXPIRE)):
    _, (kind, value) = kv
    held = state.read()
    if kind == ACK:
      if held == DONE:  # its outcome came first (it travels a longer path: rare)
        self._pending.setdefault(value[0], []).append(value[1])
        state.clear()
      else:
        state.write(value)  # the latest delivery's ack id
      return
    if held is None:  # the outcome before the ack id: remember it, for a while
      state.write(DONE)
      expire.set(ts + self._horizon)
    elif held != DONE:
      self._pending.setdefault(held[0], []).append(held[1])
      state.clear()
    # (no timer for an ack id: every message has an outcome that consumes it, and a timer per
    # message costs Prism more than the rest of this step)

  @on_timer(EXPIRE)
  def release(self, state=beam.DoFn.StateParam(STATE)):
    state.clear()

  def finish_bundle(self):
    # Acking here is safe: a "done" marker only exists once the write it stands for is committed.
    for subscription, ids in self._pending.items():
      for i in range(0, len(ids), 1000):
        try:
          self._client.acknowledge(subscription=subscription, ack_ids=ids[i:i + 1000])
          self.acked.inc(len(ids[i:i + 1000]))
        except Exception as e:  # expired ids: the messages come back and are dropped as duplicates
          _LOG.warning('acknowledging %d message(s) on %s failed: %s', len(ids[i:i + 1000]),
                       subscription, e)
    self._pending = {}


class AckWhenDone(beam.PTransform):
  """(ack ids keyed by message id, *PCollections of done message ids) -> acks; no output."""

  def __init__(self, horizon: int):
    super().__init__()
    self._horizon = horizon

  def expand(self, inputs):
    acks, done = inputs[0], list(inputs[1:])
    marks = (done
             | 'AllDone' >> beam.Flatten()
             | 'DoneMarker' >> beam.Map(lambda mid: (mid, (DONE, None))))
    ids = acks | 'AckMarker' >> beam.Map(lambda kv: (kv[0], (ACK, kv[1])))
    return ((ids, marks)
            | 'AcksAndDone' >> beam.Flatten()
            | 'AckWhenDone' >> beam.ParDo(_AckWhenDoneFn(self._horizon)))
