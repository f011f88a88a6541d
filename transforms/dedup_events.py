"""Drop redelivered or republished events by event id, and say which message each dropped copy was.

Beam's ``DeduplicatePerKey`` drops duplicates silently. A Pub/Sub reader that acknowledges a
message only once its outcome is counted (``transforms.pubsub_ack``) must learn about the
dropped copies too, or their messages would never be acknowledged and would come back after
every ack deadline. Same semantics otherwise: the first copy of an id passes, later copies
until ``duration`` seconds after its pane ends are dropped, and the state is released by an
event-time timer (so it stays bounded). Keyed per (identity, pane) and batched per bundle, so
state is touched per batch, not per event, and keys spread with the identities. A busy
identity's pane is one key whose batches each copy its id digests (8 bytes an id): linear in
the pane's size with a small constant (``bench/scale.py --hot-key-only``). Only a watermark
timer: no REAL_TIME timer, which would keep the DirectRunner from picking Prism.
"""
from __future__ import annotations

import hashlib
import typing

import apache_beam as beam
import numpy as np
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from postauth.domain.event import Event
from postauth.transforms.bundle_batches import BatchPerBundle

DUPLICATE = 'duplicate'  # tagged output: raw_ref of every dropped copy


def _pane_key(period: int):
  """(identity, pane start): copies of an event share its identity and time, so they meet under
  one key, and an identity's few events in a bundle are one key batch, not one each."""
  return lambda e: (e.identity, int(e.event_time // period) * period)


_DIGEST = np.dtype('<u8')


def id_digests(ids: typing.Iterable[str]) -> np.ndarray:
  """Stable 64-bit digests (blake2b) of event ids, what the dedup state holds: 8 bytes an id.

  A collision makes a unique event pass for a copy of another in the same key; with n ids under
  a key that has probability ~n**2 / 2**65 (a pane of 200,000 ids: ~1e-9)."""
  return np.frombuffer(b''.join(hashlib.blake2b(i.encode('utf-8', 'surrogatepass'), digest_size=8).digest()
                                for i in ids), _DIGEST)


_SEARCH_FROM = 256  # from this many ids in the state, a binary search beats building a set


def _copies(known: np.ndarray, digests: np.ndarray) -> typing.List[bool]:
  """Which of ``digests`` (a batch, in order) are copies: in ``known`` (sorted, unique) or equal
  to an earlier one in the batch. The first copy of an id is never one. Plain Python for the
  few ids of a typical batch and state (numpy's per-call cost is larger there)."""
  ids = digests.tolist()
  if len(known) >= _SEARCH_FROM:
    found = (known.take(known.searchsorted(digests), mode='clip') == digests).tolist()
  else:
    held = set(known.tolist())
    found = [d in held for d in ids]
  in_batch: typing.Set[int] = set()
  copies = []
  for d, is_known in zip(ids, found):
    copies.append(is_known or d in in_batch)
    in_batch.add(d)
  return copies


class _DropDuplicatesFn(beam.DoFn):
  """((identity, pane start), [events]) -> first copy of each event id; raw_ref of the others.

  Copies of one event share its identity, time and id, so they meet under one key. The state is
  that key's id digests, sorted, 8 bytes each: read and written once per batch
  (``BatchPerBundle``), a copy of bytes rather than a set to unpickle, so a busy pane's batch
  costs a memory copy of its ids plus a search per event; cleared by an event-time timer
  ``duration`` after the pane ends."""

  SEEN = ReadModifyWriteStateSpec('seen', BytesCoder())
  EXPIRE = TimerSpec('expire', TimeDomain.WATERMARK)

  def __init__(self, seconds: int, period: int):
    self._duration, self._period = seconds, period
    self.unique = Metrics.counter('postauth', 'events_unique')
    self.duplicates = Metrics.counter('postauth', 'events_duplicate')
    self.batches = Metrics.counter('postauth', 'dedup_batches')  # state reads: one per batch

  def process(self, kv, seen=beam.DoFn.StateParam(SEEN), expire=beam.DoFn.TimerParam(EXPIRE)):
    (_, pane), events = kv
    self.batches.inc()
    stored = seen.read()
    known = id_digests(()) if stored is None else np.frombuffer(stored, _DIGEST)
    digests = id_digests([event.event_id or event.raw_ref for event in events])
    copies = _copies(known, digests)
    for event, is_copy in zip(events, copies):
      if is_copy:
        yield beam.pvalue.TaggedOutput(DUPLICATE, event.raw_ref)
      else:
        yield TimestampedValue(event, event.event_time)
    dropped = sum(copies)
    if dropped:
      self.duplicates.inc(dropped)
    if dropped < len(copies):
      self.unique.inc(len(copies) - dropped)
      new = np.sort(digests[~np.array(copies)])  # unique: each is its id's first copy
      seen.write(np.insert(known, known.searchsorted(new), new).tobytes())
    if stored is None:
      expire.set(Timestamp.of(pane + self._period + self._duration))

  @on_timer(EXPIRE)
  def release(self, seen=beam.DoFn.StateParam(SEEN)):
    seen.clear()


class DropDuplicateEvents(beam.PTransform):
  """Events -> {'events': first copy of each event id, DUPLICATE: raw_ref of each later copy}."""

  def __init__(self, seconds: int, period: int = 900):
    super().__init__()
    self._seconds, self._period = seconds, period

  def expand(self, events):
    return (events
            | 'BatchPerPane' >> beam.ParDo(BatchPerBundle(_pane_key(self._period))).with_output_types(
                typing.Tuple[typing.Tuple[str, int], typing.List[Event]])
            | 'DropDuplicates' >> beam.ParDo(_DropDuplicatesFn(self._seconds, self._period)).with_outputs(
                DUPLICATE, main='events'))
