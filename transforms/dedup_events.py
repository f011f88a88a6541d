"""Drop redelivered or republished events by event id, and say which message each dropped copy was.

Beam's ``DeduplicatePerKey`` drops duplicates silently. A Pub/Sub reader that acknowledges a
message only once its outcome is counted (``transforms.pubsub_ack``) must learn about the
dropped copies too, or their messages would never be acknowledged and would come back after
every ack deadline. Same semantics otherwise: the first copy of an id passes, later copies
until ``duration`` seconds after its pane ends are dropped, and the state is released by an
event-time timer (so it stays bounded). Keyed per (identity, pane) and batched per bundle, so
state is touched per batch, not per event, and keys spread with the data. Only a watermark timer: no REAL_TIME timer, which would
keep the DirectRunner from picking Prism.
"""
from __future__ import annotations

import typing
import zlib

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from postauth.domain.event import Event
from postauth.transforms.bundle_batches import BatchPerBundle

DUPLICATE = 'duplicate'  # tagged output: raw_ref of every dropped copy


SPREAD = 16  # keys per (identity, pane): a hot identity's ids are split over them


def _pane_key(period: int):
  """(identity, pane start, a 1/SPREAD share of event ids): copies of an event meet under one
  key, and one identity's busy pane is SPREAD keys, each reading a SPREAD-th of its ids."""
  return lambda e: (e.identity, int(e.event_time // period) * period,
                    zlib.crc32((e.event_id or e.raw_ref).encode()) % SPREAD)


class _DropDuplicatesFn(beam.DoFn):
  """((identity, pane start, share), [events]) -> first copy of each event id; raw_ref of the
  others.

  Copies of one event share its identity, time and id, so they meet under one key: the state
  is that key's ids, read and written once per batch (``BatchPerBundle``), and cleared by an
  event-time timer ``duration`` after the pane ends."""

  SEEN = ReadModifyWriteStateSpec('seen', PickleCoder())
  EXPIRE = TimerSpec('expire', TimeDomain.WATERMARK)

  def __init__(self, seconds: int, period: int):
    self._duration, self._period = seconds, period
    self.unique = Metrics.counter('postauth', 'events_unique')
    self.duplicates = Metrics.counter('postauth', 'events_duplicate')
    self.batches = Metrics.counter('postauth', 'dedup_batches')  # state reads: one per batch

  def process(self, kv, seen=beam.DoFn.StateParam(SEEN), expire=beam.DoFn.TimerParam(EXPIRE)):
    (_, pane, _), events = kv
    self.batches.inc()
    known = seen.read()
    first = known is None
    known = known or set()
    before = len(known)
    for event in events:
      key = event.event_id or event.raw_ref
      if key in known:
        self.duplicates.inc()
        yield beam.pvalue.TaggedOutput(DUPLICATE, event.raw_ref)
        continue
      known.add(key)
      self.unique.inc()
      yield TimestampedValue(event, event.event_time)
    if len(known) != before:
      seen.write(known)
    if first:
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
                typing.Tuple[typing.Tuple[str, int, int], typing.List[Event]])
            | 'DropDuplicates' >> beam.ParDo(_DropDuplicatesFn(self._seconds, self._period)).with_outputs(
                DUPLICATE, main='events'))
