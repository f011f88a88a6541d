"""Drop redelivered or republished events by event id, and say which message each dropped copy was.

Beam's ``DeduplicatePerKey`` drops duplicates silently. A Pub/Sub reader that acknowledges a
message only once its outcome is counted (``transforms.pubsub_ack``) must learn about the
dropped copies too, or their messages would never be acknowledged and would come back after
every ack deadline. Same semantics otherwise: the first copy of an id passes, later copies
until ``duration`` seconds after the end of its span (``SPAN``: the hour of its event time)
are dropped, and the state is released by an event-time timer (so it stays bounded). Keyed per
(identity, span) and batched per bundle, so state is touched per batch, not per event, and
keys spread with the identities: a batch reads its key's id digests and appends its new ones
(8 bytes an id), two state requests. A busy identity's span is one key whose batches each read
its digests: linear in the span's size with a small constant (``bench/scale.py
--hot-key-only``). Only a watermark timer: no REAL_TIME timer, which would keep the
DirectRunner from picking Prism.
"""
from __future__ import annotations

import hashlib
import typing

import apache_beam as beam
import numpy as np
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from postauth.domain.event import Event
from postauth.transforms.bundle_batches import BatchPerBundle

DUPLICATE = 'duplicate'  # tagged output: raw_ref of every dropped copy


# A key's span of event time. Copies of an event share its identity and time, so any span
# makes them meet; the span sets what a state access buys. A backlog (a restart, a drain) puts
# many spans of an identity in one bundle, a key batch each, and each costs its state requests
# (~0.5 ms of SDK and runner CPU on Prism): longer spans, fewer batches. Live, a bundle holds
# one span of an identity whatever the span, and a batch reads the ids of the span so far:
# about span / (2 x bundle seconds) ids an event, a few microseconds at an hour
# (``bench/scale.py --hot-key-only``; docs/performance.md weighs other spans).
SPAN = 3600


def _span_key(span: int):
  """(identity, span start): an identity's events of a bundle within one span are one key batch."""
  return lambda e: (e.identity, int(e.event_time // span) * span)


_DIGEST = np.dtype('<u8')


def id_digests(ids: typing.Iterable[str]) -> np.ndarray:
  """Stable 64-bit digests (blake2b) of event ids, what the dedup state holds: 8 bytes an id.

  A collision makes a unique event pass for a copy of another in the same key; with n ids under
  a key that has probability ~n**2 / 2**65 (a span of 200,000 ids: ~1e-9)."""
  return np.frombuffer(b''.join(hashlib.blake2b(i.encode('utf-8', 'surrogatepass'), digest_size=8).digest()
                                for i in ids), _DIGEST)


_SEARCH_FROM = 256  # from this many ids in the state, a binary search beats building a set
# From this many chunks in a key's bag, a batch writes them back as one: a busy span's batches
# then read a few chunks, not one per batch so far, for one more write in this many batches.
_COMPACT_AT = 8


def _copies(known: typing.List[np.ndarray], digests: np.ndarray) -> typing.List[bool]:
  """Which of ``digests`` (a batch, in order) are copies: in one of the ``known`` chunks (each
  sorted; unique across them) or equal to an earlier one in the batch. The first copy of an id
  is never one. Plain Python for the few ids of a typical batch and state (numpy's per-call
  cost is larger there)."""
  ids = digests.tolist()
  if sum(len(chunk) for chunk in known) >= _SEARCH_FROM:
    hits = np.zeros(len(ids), dtype=bool)
    for chunk in known:
      hits |= chunk.take(chunk.searchsorted(digests), mode='clip') == digests
    found = hits.tolist()
  else:
    held = {d for chunk in known for d in chunk.tolist()}
    found = [d in held for d in ids]
  in_batch: typing.Set[int] = set()
  copies = []
  for d, is_known in zip(ids, found):
    copies.append(is_known or d in in_batch)
    in_batch.add(d)
  return copies


class _DropDuplicatesFn(beam.DoFn):
  """((identity, span start), [events]) -> first copy of each event id; raw_ref of the others.

  Copies of one event share its identity, time and id, so they meet under one key. The state is
  that key's id digests, 8 bytes each, in sorted chunks: read once per batch (``BatchPerBundle``),
  and the batch's new ones appended as one chunk (no rewrite of what is there), bytes rather
  than a set to unpickle, so a busy span's batch costs a memory copy of its ids plus a search
  per event and chunk; cleared by an event-time timer ``duration`` after the span ends."""

  SEEN = BagStateSpec('seen', BytesCoder())
  EXPIRE = TimerSpec('expire', TimeDomain.WATERMARK)

  def __init__(self, seconds: int, span: int = SPAN):
    self._duration, self._span = seconds, span
    self.unique = Metrics.counter('postauth', 'events_unique')
    self.duplicates = Metrics.counter('postauth', 'events_duplicate')
    self.batches = Metrics.counter('postauth', 'dedup_batches')  # state reads: one per batch

  def process(self, kv, seen=beam.DoFn.StateParam(SEEN), expire=beam.DoFn.TimerParam(EXPIRE)):
    (_, start), events = kv
    self.batches.inc()
    known = [np.frombuffer(chunk, _DIGEST) for chunk in seen.read()]
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
      if len(known) >= _COMPACT_AT:  # sorted runs: a stable sort merges them in a few passes
        seen.clear()
        new = np.sort(np.concatenate(known + [new]), kind='stable')
      seen.add(new.tobytes())
    if not known:
      expire.set(Timestamp.of(start + self._span + self._duration))

  @on_timer(EXPIRE)
  def release(self, seen=beam.DoFn.StateParam(SEEN)):
    seen.clear()


class DropDuplicateEvents(beam.PTransform):
  """Events -> {'events': first copy of each event id, DUPLICATE: raw_ref of each later copy}."""

  def __init__(self, seconds: int, span: int = SPAN):
    super().__init__()
    self._seconds, self._span = seconds, span

  def expand(self, events):
    return (events
            | 'BatchPerSpan' >> beam.ParDo(BatchPerBundle(_span_key(self._span))).with_output_types(
                typing.Tuple[typing.Tuple[str, int], typing.List[Event]])
            | 'DropDuplicates' >> beam.ParDo(_DropDuplicatesFn(self._seconds, self._span)).with_outputs(
                DUPLICATE, main='events'))
