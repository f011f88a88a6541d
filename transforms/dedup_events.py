"""Drop redelivered or republished events by event id, and say which message each dropped copy was.

Beam's ``DeduplicatePerKey`` drops duplicates silently. A Pub/Sub reader that acknowledges a
message only once its outcome is counted (``transforms.pubsub_ack``) must learn about the
dropped copies too, or their messages would never be acknowledged and would come back after
every ack deadline. Same semantics otherwise: the first copy of an id passes, later copies
within ``duration`` seconds of event time are dropped, the per-id state is released by an
event-time timer (so it stays bounded). Only a watermark timer: no REAL_TIME timer, which would
keep the DirectRunner from picking Prism.
"""
from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration

from postauth.domain.event import Event

DUPLICATE = 'duplicate'  # tagged output: raw_ref of every dropped copy


class _DropDuplicatesFn(beam.DoFn):
  SEEN = BagStateSpec('seen', BooleanCoder())
  EXPIRE = TimerSpec('expire', TimeDomain.WATERMARK)

  def __init__(self, seconds: int):
    self._duration = Duration(seconds=seconds)
    self.unique = Metrics.counter('postauth', 'events_unique')
    self.duplicates = Metrics.counter('postauth', 'events_duplicate')

  def process(self, kv, ts=beam.DoFn.TimestampParam, seen=beam.DoFn.StateParam(SEEN),
              expire=beam.DoFn.TimerParam(EXPIRE)):
    _, event = kv
    if True in seen.read():
      self.duplicates.inc()
      yield beam.pvalue.TaggedOutput(DUPLICATE, event.raw_ref)
      return
    expire.set(ts + self._duration)
    seen.add(True)
    self.unique.inc()
    yield event

  @on_timer(EXPIRE)
  def release(self, seen=beam.DoFn.StateParam(SEEN)):
    seen.clear()


class DropDuplicateEvents(beam.PTransform):
  """Events -> {'events': first copy of each event id, DUPLICATE: raw_ref of each later copy}."""

  def __init__(self, seconds: int):
    super().__init__()
    self._seconds = seconds

  def expand(self, events):
    return (events
            | 'KeyByEventId' >> beam.Map(lambda e: (e.event_id or e.raw_ref, e)).with_output_types(
                typing.Tuple[str, Event])
            | 'DropDuplicates' >> beam.ParDo(_DropDuplicatesFn(self._seconds)).with_outputs(
                DUPLICATE, main='events'))
