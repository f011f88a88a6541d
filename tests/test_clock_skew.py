"""A record's time cannot move time: one dated ahead of the wall clock is a dead letter, never a
watermark (transforms/clock.py), in the parse, the file replay, the folder watch and both Pub/Sub
readers. The clock is injected (``FixedClock``) where the wall clock would make a test depend on
the day it runs; 2099 is ahead of any clock these tests will meet.

The folder watch end to end (a 2099 record and a 3 MB one in a live day on Prism) is in
tests/test_watch.py.
"""
from __future__ import annotations

import datetime
import json
import time

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from postauth.transforms.parse import DEAD_LETTER, ParseRecords
from postauth.transforms.records import RawRecord, ReadLimits
from test_parse_job import _ct
from test_pubsub import pubsub  # noqa: F401 (fixture)

T = 1_780_000_000 - 1_780_000_000 % 3600  # the injected "now": 2026-05-28T20:00:00Z
FAR = '2099-01-01T00:00:00Z'
TIME_AHEAD = 'time_ahead_of_clock'


def limits(**more) -> ReadLimits:
  """The job's limits with the wall clock fixed at ``T``."""
  from postauth.transforms.clock import ClockSkew, FixedClock
  return ReadLimits(skew=ClockSkew(900, FixedClock(T)), **more)


def iso(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _reason(line: str):
  d = json.loads(line)
  return d['index'], d['reason']


def test_skew_check_is_relative_to_the_injected_clock():
  from postauth.transforms.clock import ClockSkew, FixedClock
  skew = ClockSkew(900, FixedClock(T))
  assert skew.ahead(T - 86400 * 365) == '' and skew.ahead(T + 900) == ''
  detail = skew.ahead(T + 901)
  assert detail.startswith(f'event time {iso(T + 901)} is 901 s ahead of the wall clock ({iso(T)})')
  assert '--max-clock-skew' in detail


def test_parse_dead_letters_events_ahead_of_the_clock_and_the_counters_add_up():
  records = [_ct(eventID='month-old', eventTime=iso(T - 30 * 86400)), _ct(eventID='near', eventTime=iso(T + 600)),
             _ct(eventID='ahead', eventTime=iso(T + 1200)), _ct(eventID='2099', eventTime=FAR)]
  raw = [RawRecord(orjson.dumps(r), None, '', f'f#{i}') for i, r in enumerate(records)] + [
      RawRecord(b'not json', None, '', 'f#4')]
  p = beam.Pipeline(runner='FnApiRunner')
  parsed = p | beam.Create(raw) | ParseRecords(limits=limits())
  assert_that(parsed.events | beam.Map(lambda e: e.event_id), equal_to(['month-old', 'near']))
  assert_that(parsed[DEAD_LETTER] | beam.Map(lambda l: (*_reason(l), json.loads(l).get('detail', '').split(' ahead')[0])),
              equal_to([('2', TIME_AHEAD, f'event time {iso(T + 1200)} is 1200 s'),
                        ('3', TIME_AHEAD, f'event time {FAR} is {4070908800 - T} s'),
                        ('4', "invalid JSON: invalid literal, expected 'null': line 1 column 1 (char 0)", '')]),
              label='dead')
  result = p.run()
  result.wait_until_finish()
  counters = {m.key.metric.name: m.committed for m in result.metrics().query()['counters']
              if m.key.metric.namespace == 'postauth'}
  assert (counters['records_read'], counters['events_parsed'], counters['dead_lettered'],
          counters[TIME_AHEAD]) == (5, 2, 3, 2)


def _write_replay(tmp_path):
  times = [T - 3000, T - 2000, T - 1000]
  records = [_ct(eventID=f'r{i}', eventTime=iso(t)) for i, t in enumerate(times)]
  records.insert(2, _ct(eventID='2099', eventTime=FAR))
  records.append(_ct(eventID='hour-ahead', eventTime=iso(T + 3600)))
  (tmp_path / 'day.jsonl').write_bytes(b'\n'.join(orjson.dumps(r) for r in records) + b'\n')
  return str(tmp_path / '*.jsonl'), times


class _Stamp(beam.DoFn):
  def process(self, record, ts=beam.DoFn.TimestampParam):
    yield json.loads(record.raw)['eventID'], float(ts)


def test_replay_releases_records_ahead_of_the_clock_with_their_neighbour_and_the_parse_dead_letters_them(tmp_path):
  from postauth.transforms.replay import ReplayFiles, load_replay
  pattern, times = _write_replay(tmp_path)
  # the replay's order and steps: both records ahead ride with the record before them
  assert [t for t, _ in load_replay(pattern, limits())] == [times[0], times[1], times[1], times[2], times[2]]
  p = beam.Pipeline(runner='FnApiRunner', options=PipelineOptions(['--streaming']))
  records = p | ReplayFiles(pattern, step_seconds=600, limits=limits())
  assert_that(records | beam.ParDo(_Stamp()),
              equal_to([('r0', times[0]), ('r1', times[1]), ('2099', times[1]), ('r2', times[2]),
                        ('hour-ahead', times[2])]))
  parsed = records | ParseRecords(limits=limits())
  assert_that(parsed[DEAD_LETTER] | beam.Map(lambda l: (json.loads(json.loads(l)['raw'])['eventID'],
                                                        json.loads(l)['reason'])),
              equal_to([('2099', TIME_AHEAD), ('hour-ahead', TIME_AHEAD)]), label='dead')
  p.run().wait_until_finish()
  # first in its file, a record ahead rides with the first dated one after it (not from 2000 on)
  (tmp_path / 'b').mkdir()
  (tmp_path / 'b' / 'late.jsonl').write_bytes(orjson.dumps(_ct(eventTime=FAR)) + b'\n' +
                                               orjson.dumps(_ct(eventTime=iso(T - 60))) + b'\n')
  assert [t for t, _ in load_replay(str(tmp_path / 'b' / '*'), limits())] == [T - 60, T - 60]


def test_watch_read_keeps_the_newest_time_and_applies_the_record_limit(tmp_path):
  """One poll's file: the record dated 2099 is not the newest, rides with its neighbour; a record
  over --max-record-bytes is cut there, as --events cuts it."""
  from postauth.transforms.watch import _WatchFilesFn
  big = _ct(eventID='big', requestParameters={'blob': 'x' * 5000})
  records = [_ct(eventID='a', eventTime=iso(T - 600)), _ct(eventID='2099', eventTime=FAR), big,
             _ct(eventID='b', eventTime=iso(T - 300))]
  path = tmp_path / 'part-0.json'
  path.write_text(json.dumps({'Records': records}))
  fn = _WatchFilesFn(1, 600, 900, 14400, limits=limits(max_record_bytes=4096))
  out, newest = fn._read(str(path), None)
  assert newest == T - 300
  assert [float(o.timestamp) for o in out] == [T - 600, T - 600, T - 600, T - 300]
  assert out[2].value.error.startswith(f'record of {len(orjson.dumps(big))} bytes exceeds 4096')


# --- both Pub/Sub readers (local pstest server) ---------------------------------------------------

def _publish_month_old_and_2099(topic):
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient()
  old = time.time() - 30 * 86400
  bodies = [(_ct(eventID=f'm{i}', eventTime=iso(old + 60 * i)), iso(old + 60 * i)) for i in range(3)]
  bodies.insert(1, (_ct(eventID='2099', eventTime=iso(old)), FAR))  # a fine body, a hostile attribute
  ids = [publisher.publish(topic, json.dumps(b).encode(), eventTime=a).result(10) for b, a in bodies]
  return ids, Timestamp.from_rfc3339(bodies[-1][1])


def test_sdf_reader_keeps_its_watermark_from_a_timestamp_attribute_ahead_of_the_clock(pubsub):
  from test_pubsub_sdf import _process_once, _topic_with_subscription
  from postauth.transforms.parse import RecordParser
  from postauth.transforms.pubsub_sdf import PullSettings, _PullFn
  topic, sub = _topic_with_subscription('ahead')
  ids, newest = _publish_month_old_and_2099(topic)
  fn = _PullFn(sub, False, PullSettings(timestamp_attribute='eventTime', max_messages=100, max_delay=30))
  fn.setup()
  try:
    out, _, residual, estimator = _process_once(fn, sub)
  finally:
    fn.teardown()
  by_id = {o.value.ref.rsplit('#', 1)[1]: o for o in out}
  assert residual.newest == newest.micros / 1e6  # the restriction never holds 2099
  # (a short pull proves no empty backlog: the watermark follows the oldest acceptable time read)
  assert estimator.current_watermark() == min(o.timestamp for o in out if not o.value.error) - 30
  hostile = by_id[ids[1]]
  assert hostile.timestamp == newest  # stamped with the newest acceptable time, not 2099
  assert hostile.value.error.startswith(f'{TIME_AHEAD}: timestamp attribute eventTime {FAR} is ')
  # the parse makes it a dead letter before any format reads it
  assert RecordParser().parse(hostile.value).startswith(TIME_AHEAD)
  assert all(not by_id[i].value.error for i in ids if i != ids[1])


def test_native_reader_keeps_its_watermark_from_a_timestamp_attribute_ahead_of_the_clock(pubsub):
  """The DirectRunner's evaluator stamps as the splittable reader does; ``_ToRawRecord`` marks the
  record, and on Dataflow (stamped with the attribute) stamps it again with its publish time."""
  import types
  from google.cloud import pubsub_v1
  from test_pubsub_sdf import _topic_with_subscription
  from postauth.transforms.clock import ClockSkew
  from postauth.transforms.direct_pubsub import EventTimePubSubReadEvaluator, SourceClock
  from postauth.transforms.pubsub_source import _ToRawRecord
  topic, sub = _topic_with_subscription('ahead-native')
  ids, newest = _publish_month_old_and_2099(topic)
  evaluator = object.__new__(EventTimePubSubReadEvaluator)
  evaluator.source = types.SimpleNamespace(timestamp_attribute='eventTime')
  evaluator._sub_name, evaluator._applied_ptransform = sub, None
  client = pubsub_v1.SubscriberClient()
  evaluator._get_subscriber_client = lambda transform: client
  try:
    pulled = evaluator._pull(100)  # the wall clock, --max-clock-skew's default
  finally:
    client.close()
  stamps = {m.message_id: st for st, m in pulled}
  assert stamps[ids[1]].ts == newest and stamps[ids[1]].ahead.startswith(TIME_AHEAD)
  clock = SourceClock(max_delay=30, idle_seconds=60)
  assert clock.advance([st.ts for st in stamps.values() if not st.ahead], True, time.time(), 0) == newest - 30

  messages = [TimestampedValue(m, st.ts) for st, m in pulled]
  hostile = next(m for st, m in pulled if m.message_id == ids[1])
  as_on_dataflow = TimestampedValue(hostile, Timestamp.from_rfc3339(FAR))  # stamped with the attribute
  p = beam.Pipeline(runner='FnApiRunner')
  records = ((p | beam.Create(messages + [as_on_dataflow], reshuffle=False))
             | beam.ParDo(_ToRawRecord(sub, 'eventTime', ClockSkew())))
  parsed = records | ParseRecords()
  assert_that(parsed[DEAD_LETTER] | beam.Map(_reason), equal_to([(ids[1], TIME_AHEAD)] * 2))
  assert_that(parsed.events | beam.Map(lambda e: e.event_id), equal_to(['m0', 'm1', 'm2']), label='events')
  horizon = time.time() + 3600
  assert_that(records | beam.ParDo(_StampOf()) | beam.Filter(lambda ts: ts > horizon), equal_to([]),
              label='no stamp ahead')
  p.run().wait_until_finish()


class _StampOf(beam.DoFn):
  def process(self, _, ts=beam.DoFn.TimestampParam):
    yield float(ts)


def test_max_clock_skew_is_a_checked_flag():
  from postauth.pipeline import options as opts
  from postauth.pipeline.jobs import pipeline_options
  o = pipeline_options(['--max-clock-skew=60'])
  assert ReadLimits.from_options(o).skew.max_skew == 60
  assert ReadLimits.from_options(pipeline_options([])).skew.max_skew == 900
  with pytest.raises(opts.OptionsError, match='--max-clock-skew -1 is out of range'):
    opts.validate_limits(pipeline_options(['--max-clock-skew=-1']))
