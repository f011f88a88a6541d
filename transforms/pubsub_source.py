"""The streaming source: Pub/Sub messages (one raw log record each) -> Events + dead letters.

Two readers give the same ``RawRecord`` (the message body, ``ref`` =
``pubsub:<subscription>#<message id>``): ``reader='native'`` is Beam's
``ReadFromPubSub(with_attributes=True)`` (Dataflow, the DirectRunner), ``reader='sdf'`` is
``transforms.pubsub_sdf.PullFromPubSub``, a splittable DoFn that acks at bundle finalization
(Prism, Flink, the FnApiRunner; ``choose_reader`` picks by runner). Then the same ``ParseRecords``
as every other path, so a record parses identically from a file or a message.
Malformed messages become dead letters that keep the message id and body.

Pub/Sub delivers at least once, and publishers retry: the same event can
arrive twice. Findings have deterministic ids already, but a duplicated event
would still count twice in its window, so events are deduplicated by
``event_id`` (CloudTrail's eventID, the audit log's insertId, ...) with
``transforms.dedup_events.DropDuplicateEvents`` (Beam's ``DeduplicatePerKey`` semantics, plus
the message of each dropped copy, which the ack step needs) over an event-time span (by default window size +
allowed lateness: after that a duplicate cannot reach an open window anyway, so
the per-id state is released by an event-time timer and stays bounded).

With ``allowed_lateness`` given, events are first passed through
``transforms.lateness.LateEventGate``: those later than the allowed lateness are
dead-lettered (reason ``late``, with the message body and id) instead of being
dropped silently by the windows. The gate comes before deduplication so the
message body need not travel further; a redelivered copy that arrives that late
is dead-lettered too.
"""
from __future__ import annotations

import typing
from typing import List, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from postauth.transforms.clock import ClockSkew
from postauth.transforms.direct_pubsub import stamp_messages
from postauth.transforms.lateness import LATE, LateEventGate
from postauth.transforms.parse import DEAD_LETTER, ParseRecords
from postauth.transforms.records import DEFAULT_LIMITS, RawRecord, ReadLimits


class ParsedStream(typing.NamedTuple):
  events: beam.PCollection
  dead_letter: beam.PCollection  # records that did not parse
  late: Optional[beam.PCollection] = None  # events later than the allowed lateness (dead letters)


class _ToRawRecord(beam.DoFn):
  """PubsubMessage -> RawRecord; the body is parsed later by ParseRecords, like any record.

  A message whose timestamp attribute is more than ``--max-clock-skew`` ahead of the wall
  clock is marked for the dead letters (``time_ahead_of_clock``), as the splittable reader
  marks it. Stamped with that attribute (Dataflow's native read), it is stamped again with its
  publish time, so its dead letter is not held in a file part of its future hour; the
  DirectRunner's evaluator (``transforms/direct_pubsub.py``) has stamped it already.
  """

  def __init__(self, source: str, attribute: Optional[str] = None, skew: ClockSkew = ClockSkew()):
    self._source, self._attribute, self._skew = source, attribute, skew
    self.messages = Metrics.counter('postauth', 'pubsub_messages')

  def process(self, message, timestamp=beam.DoFn.TimestampParam):
    self.messages.inc()
    from postauth.transforms.pubsub_sdf import message_ref
    ref = message_ref(self._source, message.message_id)
    [stamp] = stamp_messages([((message.attributes or {}).get(self._attribute) if self._attribute else None,
                               timestamp)], self._attribute, self._skew, None)
    record = RawRecord(message.data or b'', None, stamp.ahead, ref)
    if stamp.ahead and timestamp > Timestamp.of(self._skew.horizon()):
      published = getattr(message, 'publish_time', None)
      yield TimestampedValue(record, Timestamp.from_utc_datetime(published) if published is not None
                             else Timestamp.of(self._skew.clock()))
    else:
      yield record


def choose_reader(reader: str, runner: str) -> str:
  """``native`` or ``sdf`` for ``--pubsub-reader`` on ``runner`` (its name or class path).

  auto: the native read where it runs (Dataflow; the DirectRunner, which routes a native Pub/Sub
  read to its BundleBasedDirectRunner -- and that runner cannot expand a streaming splittable
  DoFn, Beam #26577); the splittable DoFn everywhere else (Prism, Flink, FnApiRunner, Portable).
  """
  if reader in ('native', 'sdf'):
    return reader
  name = (runner or 'DirectRunner').rsplit('.', 1)[-1]
  return 'native' if 'Dataflow' in name or name in ('DirectRunner', 'BundleBasedDirectRunner',
                                                      'SwitchingDirectRunner') else 'sdf'


class ReadPubSubEvents(beam.PTransform):
  """Pub/Sub subscription or topic -> ParsedStream(events, dead_letter), duplicates dropped."""

  def __init__(self, subscription: Optional[str] = None, topic: Optional[str] = None,
               timestamp_attribute: Optional[str] = None, format_name: Optional[str] = None,
               taxonomy_files: Optional[List[str]] = None, dedup_seconds: int = 3600,
               window_period: int = 900, allowed_lateness: Optional[int] = None,
               reader: str = 'native', pull_settings=None, events_out: Optional[str] = None,
               limits: ReadLimits = DEFAULT_LIMITS):
    super().__init__()
    self._limits = limits
    if reader not in ('native', 'sdf'):
      raise ValueError(f'reader must be native or sdf, not {reader!r}')
    self._reader, self._pull_settings, self._events_out = reader, pull_settings, events_out
    self._period, self._lateness = window_period, allowed_lateness
    if bool(subscription) == bool(topic):
      raise ValueError('give exactly one of subscription or topic')
    self._subscription, self._topic = subscription, topic
    self._timestamp_attribute = timestamp_attribute
    self._format, self._taxonomy = format_name, taxonomy_files
    self._dedup = dedup_seconds

  def _records(self, pbegin):
    """(RawRecords, ack ids keyed by message id or None when the reader acks by itself)."""
    source = self._subscription or self._topic
    if self._reader == 'sdf':
      from postauth.transforms.pubsub_sdf import ACK_IDS, PullFromPubSub, PullSettings
      settings = (self._pull_settings or PullSettings())._replace(
          timestamp_attribute=self._timestamp_attribute,
          ack_mode='counted' if self._events_out else 'finalize', skew=self._limits.skew)
      pulled = pbegin | 'PullFromPubSub' >> PullFromPubSub(self._subscription, self._topic, settings)
      return pulled.records, pulled[ACK_IDS] if self._events_out else None
    from apache_beam.io.gcp.pubsub import ReadFromPubSub
    from postauth.transforms import direct_pubsub
    direct_pubsub.install()  # the DirectRunner's event-time watermark (no effect on other runners)
    messages = pbegin | 'ReadFromPubSub' >> ReadFromPubSub(
        subscription=self._subscription, topic=self._topic, with_attributes=True,
        timestamp_attribute=self._timestamp_attribute)
    return messages | 'ToRawRecord' >> beam.ParDo(
        _ToRawRecord(source, self._timestamp_attribute, self._limits.skew)), None

  def expand(self, pbegin):
    from postauth.transforms.dedup_events import DUPLICATE, DropDuplicateEvents
    gate = self._lateness is not None
    records, ack_ids = self._records(pbegin)
    parsed = records | 'ParseRecords' >> ParseRecords(self._format, self._taxonomy, with_raw=gate,
                                                      limits=self._limits)
    events, late = parsed.events, None
    if gate:  # late events dead-lettered with their message body, before the windows drop them
      gated = events | 'LateEvents' >> LateEventGate(self._period, self._lateness)
      events, late = gated['events'], gated[LATE]
    unique = events | 'Deduplicate' >> DropDuplicateEvents(self._dedup)
    events = unique.events
    if self._events_out:
      from postauth.transforms.events_out import WriteEventsOut
      written = events | 'EventsOut' >> WriteEventsOut(self._events_out)
      if ack_ids is not None:  # ack each message once its outcome is written (pubsub_ack.py)
        from postauth.transforms.pubsub_ack import AckWhenDone, dead_letter_message_id, message_id
        done = [written | 'WrittenId' >> beam.Map(message_id),
                unique[DUPLICATE] | 'DuplicateId' >> beam.Map(message_id),
                parsed[DEAD_LETTER] | 'DeadLetterId' >> beam.Map(dead_letter_message_id)]
        if late is not None:
          done.append(late | 'LateId' >> beam.Map(dead_letter_message_id))
        _ = (ack_ids, *done) | 'AckWhenDone' >> AckWhenDone(self._dedup)
    return ParsedStream(events, parsed[DEAD_LETTER], late)


def pull_settings(options):
  """The sdf reader's settings from ``PubSubSourceOptions`` (the --watermark-* flags are shared)."""
  from postauth.transforms.pubsub_sdf import PullSettings
  return PullSettings(timestamp_attribute=options.timestamp_attribute,
                      max_messages=options.pubsub_max_messages,
                      interval=options.pubsub_pull_interval,
                      readers=options.pubsub_readers,
                      max_delay=options.watermark_max_delay,
                      idle_seconds=options.watermark_idle_seconds,
                      idle_limit=options.watermark_idle_limit,
                      stop_idle=options.pubsub_stop_idle)
