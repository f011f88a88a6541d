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

State per message id (kept in one of ``BUCKETS`` keyed cells): the latest ack id (a redelivered
copy brings a new one), dropped when the outcome arrives; or, when the outcome came first, a
"done" mark released by an event-time timer ``horizon`` seconds after the message's event time
(the dedup span). A copy redelivered after its
message was acked brings a new ack id and a new outcome (a dropped duplicate), and is acked in
turn.
"""
from __future__ import annotations

import json
import logging
import zlib
from typing import Dict, List

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

_LOG = logging.getLogger('postauth')
ACK, DONE = 'ack', 'done'


def message_id(ref: str) -> str:
  """``pubsub:<source>#<message id>`` -> the message id."""
  return ref.rpartition('#')[2]


def dead_letter_message_id(line: str) -> str:
  return str(json.loads(line).get('index', ''))


BUCKETS = 32  # keys of the ack step (message ids are hashed into these)


def bucket(mid: str) -> int:
  return zlib.crc32(mid.encode()) % BUCKETS


def _set_earliest(expire, cell) -> None:
  """One timer per key: at the earliest expiry among the cell's "done" marks."""
  expiries = [v for v in cell.values() if isinstance(v, int)]
  if expiries:
    expire.set(Timestamp(micros=min(expiries)))


def _store(pending, cell) -> None:
  if cell:
    pending.write(cell)
  else:
    pending.clear()


class _AckWhenDoneFn(beam.DoFn):
  # Keyed by a hash bucket of the message id, not the id itself: on Prism each key's state and
  # each bundle cost round trips, and a key per message made this step as dear as the rest of
  # the pipeline. A bucket's cell maps message id -> (subscription, ack id) while the outcome is
  # awaited, or -> expiry (event-time micros) when the outcome came first; it holds only the
  # messages in flight.
  PENDING = ReadModifyWriteStateSpec('pending', PickleCoder())
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

  def _ack_later(self, held) -> None:
    self._pending.setdefault(held[0], []).append(held[1])

  def process(self, kv, ts=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
              expire=beam.DoFn.TimerParam(EXPIRE)):
    _, (mid, kind, value) = kv
    cell = pending.read() or {}
    held = cell.get(mid)
    if kind == ACK:
      if isinstance(held, int):  # its outcome came first (it travels a longer path: rare)
        self._ack_later(value)
        del cell[mid]
      else:
        cell[mid] = value  # the latest delivery's ack id
    elif held is None:  # the outcome before the ack id: remember it for the dedup span
      cell[mid] = (ts + self._horizon).micros
      _set_earliest(expire, cell)
    elif not isinstance(held, int):
      self._ack_later(held)
      del cell[mid]
    _store(pending, cell)

  @on_timer(EXPIRE)
  def release(self, now=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
              expire=beam.DoFn.TimerParam(EXPIRE)):
    cell = {k: v for k, v in (pending.read() or {}).items()
            if not (isinstance(v, int) and v <= now.micros)}
    _set_earliest(expire, cell)
    _store(pending, cell)

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
             | 'DoneMarker' >> beam.Map(lambda mid: (bucket(mid), (mid, DONE, None))))
    ids = acks | 'AckMarker' >> beam.Map(lambda kv: (bucket(kv[0]), (kv[0], ACK, kv[1])))
    return ((ids, marks)
            | 'AcksAndDone' >> beam.Flatten()
            | 'AckWhenDone' >> beam.ParDo(_AckWhenDoneFn(self._horizon)))
