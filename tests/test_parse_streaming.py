"""Streaming parse: every format through ParseRecords on TestStream, and ReplayFiles over Avro files."""
from __future__ import annotations

import glob
import os

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from conftest import FIXTURES
from test_canonical import avro_bytes, fixture_events
from postauth.domain.event import Event
from postauth.transforms.formats.base import MIN_TIME
from postauth.transforms.parse import ParseRecords, RecordParser, dead_letter
from postauth.transforms.records import RawRecord, split_records
from postauth.transforms.replay import ReplayFiles


def streaming_pipeline():
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  return beam.Pipeline(runner='BundleBasedDirectRunner', options=options)


def all_format_records():
  """Records of every format, some decoded on read (files), some as bare bytes (messages)."""
  records = []
  for path in sorted(glob.glob(os.path.join(FIXTURES, '*'))):
    with open(path, 'rb') as f:
      for i, r in enumerate(split_records(f.read(), os.path.basename(path))):
        records.append(r if i % 2 else RawRecord(r.raw, None, r.error, r.ref))
  events = fixture_events()
  records += [RawRecord(orjson.dumps(e._asdict()), None, '', f'canonical.jsonl#{i}')
              for i, e in enumerate(events[:4])]
  records += list(split_records(avro_bytes(events[4:9]), 'events.avro'))
  records.append(RawRecord(b'{"foo": 1}', None, '', 'junk#0'))
  records.append(RawRecord(b'\xff\xfe', None, '', 'junk#1'))
  return records


def test_parse_records_streaming_all_formats():
  records = all_format_records()
  parser = RecordParser()
  expected = [(r, parser.parse_with_format(r)) for r in records]
  formats_seen = {fmt for _, (fmt, out) in expected if isinstance(out, Event)}
  assert formats_seen == {'cloudtrail', 'gcp_audit', 'k8s_audit', 'ocsf', 'canonical'}
  events = [out for _, (_, out) in expected if isinstance(out, Event)]
  items = [item for r in records for _, item in parser.parse_items(r)]
  dead = [dead_letter(i.reason, i.ref, i.raw) for i in items if i.event is None and not i.skipped]
  skipped = [i for i in items if i.skipped]  # the k8s fixture's RequestReceived stage
  assert len(events) == 18 + 4 + 5 and len(skipped) == 1
  assert len(dead) == len(records) - len(events) - len(skipped) >= 11

  stream = test_stream.TestStream().advance_watermark_to(MIN_TIME)
  for start in range(0, len(records), 10):  # several bundles, watermark moving between them
    stream.add_elements([TimestampedValue(r, MIN_TIME + start) for r in records[start:start + 10]])
    stream.advance_watermark_to(MIN_TIME + start + 10)
  stream.advance_watermark_to_infinity()
  p = streaming_pipeline()
  parsed = p | stream | ParseRecords()
  assert_that(parsed.events, equal_to(events), label='Events')
  assert_that(parsed.dead_letter, equal_to(dead), label='DeadLetters')
  assert_that(parsed.events | beam.WindowInto(beam.window.FixedWindows(10 ** 9))
              | beam.Map(lambda e, ts=beam.DoFn.TimestampParam: float(ts) == e.event_time)
              | beam.combiners.Count.PerElement(), equal_to([(True, len(events))]), label='Timestamps')
  p.run().wait_until_finish()


def test_replay_files_reads_avro_and_canonical_json_lines(tmp_path):
  events = fixture_events()
  (tmp_path / 'events-00000-of-00001.avro').write_bytes(avro_bytes(events[:10]))
  (tmp_path / 'canonical.jsonl').write_bytes(b'\n'.join(orjson.dumps(e._asdict()) for e in events[10:]))
  with open(os.path.join(FIXTURES, 'ocsf.jsonl'), 'rb') as f:
    (tmp_path / 'ocsf.jsonl').write_bytes(f.read())
  ocsf = [o for o in (RecordParser().parse(r) for r in split_records(
      (tmp_path / 'ocsf.jsonl').read_bytes(), str(tmp_path / 'ocsf.jsonl'))) if isinstance(o, Event)]
  p = streaming_pipeline()
  # (this pipeline runs on the BundleBasedDirectRunner: the replay's TestStream form)
  parsed = (p | ReplayFiles(str(tmp_path / '*'), step_seconds=30 * 86400, test_stream=True) | ParseRecords())
  assert_that(parsed.events, equal_to(events + ocsf), label='Events')
  assert_that(parsed.dead_letter | beam.Map(lambda d: orjson.loads(d)['reason']),
              equal_to(['ocsf: absurd time 1709636580', 'unknown format']), label='DeadLetters')
  # event-time stamps come from the events, whatever file they were in
  assert_that(parsed.events | beam.WindowInto(beam.window.FixedWindows(10 ** 9))
              | beam.Map(lambda e, ts=beam.DoFn.TimestampParam: float(ts) == e.event_time)
              | beam.combiners.Count.PerElement(), equal_to([(True, len(events) + len(ocsf))]),
              label='Timestamps')
  p.run().wait_until_finish()
