"""The canonical event as Avro and as JSON lines: schema agreement, round trips, validation,
damaged Avro containers, and RFC 3339 fractions in every format."""
from __future__ import annotations

import glob
import io
import json
import math
import os
import typing

import fastavro
import orjson
import pytest

from conftest import FIXTURES
from postauth.transforms import avro_events, formats
from postauth.domain.event import Event
from postauth.transforms.formats.base import ParseError, _microsecond_fraction, parse_time
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import AVRO_MAGIC, RawRecord, split_records

PARSER = RecordParser()


def fixture_events():
  """Every event the hand-written fixtures of the four log formats parse to."""
  out = []
  for path in sorted(glob.glob(os.path.join(FIXTURES, '*'))):
    with open(path, 'rb') as f:
      out += [o for o in (PARSER.parse(r) for r in split_records(f.read(), path)) if isinstance(o, Event)]
  return out


def avro_bytes(events, codec='deflate', sync_interval=16000):
  buf = io.BytesIO()
  fastavro.writer(buf, avro_events.parsed_schema(), [avro_events.to_avro(e) for e in events],
                  codec=codec, sync_interval=sync_interval)
  return buf.getvalue()


def parse_bytes(data, source='mem'):
  return [PARSER.parse_with_format(r) for r in split_records(data, source)]


def test_avsc_fields_and_types_match_event():
  schema = avro_events.schema_json()
  assert (schema['type'], schema['name'], schema['namespace']) == ('record', 'Event', 'postauth')
  hints = typing.get_type_hints(Event)
  assert [f['name'] for f in schema['fields']] == list(Event._fields)
  for field in schema['fields']:
    assert field['type'] == avro_events.AVRO_TYPES[hints[field['name']]], field['name']
    assert field.get('doc'), f'{field["name"]} needs a doc string'
  # shipped as package data, next to the taxonomy tables
  with open(os.path.join(os.path.dirname(__file__), '..', 'setup.py')) as f:
    assert "'schemas/*.avsc'" in f.read()
  assert avro_events.parsed_schema() is avro_events.parsed_schema()  # parsed once


def test_avro_round_trip_through_fastavro_and_split_records():
  events = fixture_events()
  assert len(events) == 18 and {e.provider for e in events} >= {'aws', 'gcp', 'k8s'}
  data = avro_bytes(events)
  assert data[:4] == AVRO_MAGIC
  assert list(avro_events.read_events(io.BytesIO(data))) == events
  out = parse_bytes(data, 'events.avro')
  assert [fmt for fmt, _ in out] == ['canonical'] * len(events)
  assert [e for _, e in out] == events  # raw_ref of the original record kept
  # a record's raw payload is its JSON form, which parses to the same event (replays, dead letters)
  rec = next(split_records(data, 'events.avro'))
  assert orjson.loads(rec.raw) == avro_events.to_avro(events[0])
  assert PARSER.parse(RawRecord(rec.raw, None, '', rec.ref)) == events[0]


def test_canonical_json_lines_round_trip_and_defaults():
  events = fixture_events()
  data = b'\n'.join(orjson.dumps(e._asdict()) for e in events)
  assert [e for _, e in parse_bytes(data)] == events
  # hand-written: RFC 3339 time, no category (taxonomy decides), no id/ref/flags
  minimal = {'event_time': '2024-03-05T10:15:30.5Z', 'identity': 'svc-a', 'identity_type': 'service_account',
             'principal_raw': 'svc-a', 'provider': 'aws', 'service': 'secretsmanager',
             'action': 'GetSecretValue', 'resource': 'db', 'region': 'eu-west-1', 'error_code': 'AccessDenied'}
  fmt, e = PARSER.parse_with_format(RawRecord(b'', minimal, '', 'hand.jsonl#3'))
  assert fmt == 'canonical'
  assert e.event_time == 1709633730.5 and e.category == 'secret_access'
  assert (e.event_id, e.raw_ref, e.success, e.read_only) == ('hand.jsonl#3', 'hand.jsonl#3', False, False)


BASE = fixture_events()[0]._asdict()


@pytest.mark.parametrize('change, reason', [
    ({'identity': ''}, 'canonical: missing identity'),
    ({'identity': None}, 'canonical: missing identity'),
    ({'event_time': None}, 'canonical: missing event_time'),
    ({'provider': ''}, 'canonical: missing provider'),
    ({'identity': 42}, 'canonical: identity: expected a string, got int'),
    ({'action': ['GetObject']}, 'canonical: action: expected a string, got list'),
    ({'success': 'yes'}, 'canonical: success: expected a boolean, got str'),
    ({'read_only': 1}, 'canonical: read_only: expected a boolean, got int'),
    ({'event_time': True}, 'canonical: expected epoch seconds, got True'),
    ({'event_time': 'yesterday'}, "canonical: unparseable time 'yesterday'"),
    ({'event_time': 1.7e12}, 'canonical: absurd time 1700000000000.0'),  # milliseconds read as seconds
    ({'event_time': 0}, 'canonical: absurd time 0'),
    ({'event_time': math.nan}, 'canonical: absurd time nan'),
    ({'event_time': '9999-12-31T23:59:59Z'}, "canonical: absurd time '9999-12-31T23:59:59Z'"),
    ({'category': 'exfiltration'}, "canonical: unknown category 'exfiltration'"),
])
def test_canonical_validation_dead_letters(change, reason):
  record = dict(BASE, **change)
  assert PARSER.parse(RawRecord(b'', record, '', 'x#0')) == reason


def test_canonical_is_sniffed_by_its_fields_only_and_can_be_forced():
  canonical = formats.BY_NAME['canonical']
  assert [f.name for f in formats.FORMATS if f.sniff(BASE)] == ['canonical']
  assert canonical.sniff({k: BASE[k] for k in list(Event._fields)[:9]})
  assert not canonical.sniff({k: BASE[k] for k in list(Event._fields)[:8]})
  for path in glob.glob(os.path.join(FIXTURES, '*')):
    with open(path, 'rb') as f:
      assert not any(canonical.sniff(r.obj) for r in split_records(f.read(), path) if r.obj)
  ct = {'eventSource': 's3.amazonaws.com', 'eventName': 'GetObject', 'eventTime': '2024-03-05T10:15:30Z',
        'userIdentity': {'type': 'IAMUser', 'arn': 'arn:aws:iam::1:user/u'}}
  assert RecordParser('canonical').parse(RawRecord(b'', ct, '', 'x#0')) == 'canonical: missing identity'
  assert RecordParser('cloudtrail').parse(RawRecord(b'', BASE, '', 'x#0')) == 'cloudtrail: missing userIdentity'


def test_every_format_takes_zero_to_nine_fraction_digits():
  base = '2024-03-05T10:15:30'
  for digits in range(10):
    frac = '123456789'[:digits]
    stamp = base + ('.' + frac if digits else '') + 'Z'
    expected = 1709633730 + (int((frac + '000000')[:6]) / 1e6 if digits else 0)
    assert parse_time(stamp) == pytest.approx(expected, abs=1e-6), stamp
    ct = {'eventSource': 's3.amazonaws.com', 'eventName': 'GetObject', 'eventTime': stamp,
          'userIdentity': {'type': 'IAMUser', 'arn': 'arn:aws:iam::1:user/u'}}
    gcp = {'timestamp': stamp, 'protoPayload': {
        '@type': 'type.googleapis.com/google.cloud.audit.AuditLog', 'methodName': 'storage.objects.get',
        'serviceName': 'storage.googleapis.com', 'authenticationInfo': {'principalEmail': 'a@b.iam.gserviceaccount.com'}}}
    k8s = {'kind': 'Event', 'apiVersion': 'audit.k8s.io/v1', 'stage': 'ResponseComplete', 'verb': 'get',
           'user': {'username': 'system:serviceaccount:ns:sa'}, 'objectRef': {'resource': 'secrets'},
           'stageTimestamp': stamp}
    canonical = dict(BASE, event_time=stamp)
    for record in (ct, gcp, k8s, canonical):
      e = PARSER.parse(RawRecord(b'', record, '', 'x#0'))
      assert isinstance(e, Event) and e.event_time == pytest.approx(expected, abs=1e-6), (record, e)
  # the Python 3.10 fallback path: fractions cut or padded to microseconds
  assert _microsecond_fraction('2024-03-05T10:15:30.123456789+00:00') == '2024-03-05T10:15:30.123456+00:00'
  assert _microsecond_fraction('2024-03-05 10:15:30.1') == '2024-03-05 10:15:30.100000'
  assert parse_time('2024-03-05T12:15:30.5+02:00') == 1709633730.5
  with pytest.raises(ParseError):
    parse_time('2024-13-05T10:15:30Z')


# --- damaged Avro containers: nothing raises, nothing disappears ---------------------------


def test_corrupt_avro_header():
  out = list(split_records(AVRO_MAGIC + b'\x00garbage header', 'bad.avro'))
  assert len(out) == 1 and out[0].obj is None and out[0].error.startswith('corrupt Avro header')
  assert out[0].raw.startswith(AVRO_MAGIC)  # the whole file is the payload


def test_truncated_avro_keeps_whole_blocks_and_dead_letters_the_tail():
  events = fixture_events()
  data = avro_bytes(events, codec='null', sync_interval=600)  # several small blocks
  blocks = list(fastavro.block_reader(io.BytesIO(data)))
  assert len(blocks) >= 3
  cut = blocks[2].offset + blocks[2].size // 2
  out = list(split_records(data[:cut], 'cut.avro'))
  good = [r for r in out if not r.error]
  assert len(good) == blocks[0].num_records + blocks[1].num_records
  [dead] = [r for r in out if r.error]
  assert dead.error.startswith(f'corrupt Avro block at byte {blocks[2].offset}')
  assert dead.raw == data[blocks[2].offset:cut]  # every undecoded byte is in the dead letter


def test_damaged_block_is_one_dead_letter_and_later_blocks_still_read():
  events = fixture_events()
  data = bytearray(avro_bytes(events, codec='deflate', sync_interval=600))
  blocks = list(fastavro.block_reader(io.BytesIO(bytes(data))))
  middle = blocks[1]
  for i in range(middle.offset + 4, middle.offset + middle.size - 16):
    data[i] ^= 0x5A  # scramble the compressed payload, keep framing and sync marker
  out = list(split_records(bytes(data), 'flip.avro'))
  dead = [r for r in out if r.error]
  assert len(dead) == 1 and dead[0].error.startswith(f'corrupt Avro block at byte {middle.offset}')
  assert dead[0].raw == bytes(data[middle.offset:middle.offset + middle.size])
  assert len(out) - 1 == len(events) - middle.num_records
  later = [e for _, e in (PARSER.parse_with_format(r) for r in out if not r.error)]
  assert later[-1] == events[-1]


def test_avro_of_another_schema_is_read_and_detected_per_record():
  schema = {'type': 'record', 'name': 'Wrapped', 'fields': [
      {'name': 'eventSource', 'type': 'string'}, {'name': 'eventName', 'type': 'string'},
      {'name': 'eventTime', 'type': 'string'}, {'name': 'payload', 'type': 'bytes'}]}
  buf = io.BytesIO()
  fastavro.writer(buf, schema, [{'eventSource': 's3.amazonaws.com', 'eventName': 'GetObject',
                                 'eventTime': '2024-03-05T10:15:30Z', 'payload': b'\xff\x00'}])
  [(fmt, reason)] = parse_bytes(buf.getvalue())
  assert (fmt, reason) == ('cloudtrail', 'cloudtrail: missing userIdentity')
  rec = next(split_records(buf.getvalue(), 'w.avro'))
  assert json.loads(rec.raw)['payload'] == '/wA='  # bytes kept, base64, in the raw payload
