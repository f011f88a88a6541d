"""Parsing: canonical events from CloudTrail, and nothing lost on bad input."""
from __future__ import annotations

import glob
import gzip
import json
import os
import shutil

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, shared_data
from test_canonical import avro_bytes, fixture_events
from postauth.domain.event import Event
from postauth.transforms.parse import ParseFiles, RecordParser
from postauth.transforms.records import split_records

PARSER = RecordParser()


def parse_file(path):
  with open(path, 'rb') as f:
    data = f.read()
  return [PARSER.parse(r) for r in split_records(data, path)]


def test_delivery_file_canonical_identities_and_categories():
  out = parse_file(os.path.join(FIXTURES, 'cloudtrail_delivery.json'))
  events = [o for o in out if isinstance(o, Event)]
  dead = [o for o in out if isinstance(o, str)]
  assert len(events) == 3 and len(dead) == 2
  ci, key, trail = events
  assert ci.identity == 'arn:aws:iam::123456789012:role/ci-build'  # role, not the session
  assert ci.principal_raw.endswith('assumed-role/ci-build/build-42')
  assert (ci.service, ci.action, ci.category) == ('ecs', 'UpdateService', 'config_change')
  assert ci.resource == 'payments-api' and not ci.read_only
  assert key.identity == 'arn:aws:iam::123456789012:user/svc-billing'
  assert key.session_id == 'AKIAEXAMPLEKEY01' and key.category == 'secret_access'
  # no sessionIssuer: the role ARN is derived from the assumed-role ARN
  assert trail.identity == 'arn:aws:iam::123456789012:role/automation'
  assert trail.category == 'defense_evasion' and not trail.success
  assert trail.error_code == 'AccessDenied'
  assert any('absurd time' in d for d in dead) and any('userIdentity' in d for d in dead)


def test_gzip_delivery_equals_plain(tmp_path):
  src = os.path.join(FIXTURES, 'cloudtrail_delivery.json')
  gz = tmp_path / 'x.json.gz'
  with open(src, 'rb') as f, gzip.open(gz, 'wb') as g:
    g.write(f.read())
  plain = [o for o in parse_file(src) if isinstance(o, Event)]
  zipped = [o for o in parse_file(str(gz)) if isinstance(o, Event)]
  assert [e._replace(raw_ref='') for e in plain] == [e._replace(raw_ref='') for e in zipped]


def test_json_lines_envelopes_and_bad_lines():
  out = parse_file(os.path.join(FIXTURES, 'cloudtrail.jsonl'))
  events = [o for o in out if isinstance(o, Event)]
  reasons = [o for o in out if isinstance(o, str)]
  assert [e.action for e in events] == ['CreateAccessKey', 'Publish']
  assert events[0].category == 'credential_create'
  assert events[1].identity == 'arn:aws:iam::123456789012:role/agent-support'  # EventBridge detail
  assert events[1].category == 'notify'
  assert len(reasons) == 4  # truncated JSON, a JSON array, wrong type, non-UTF-8
  assert any(r.startswith('invalid JSON') for r in reasons)
  assert any('not an object' in r for r in reasons)
  assert any('expected a string' in r for r in reasons)


def _run_parse(pattern, tmp_path):
  dead_path = str(tmp_path / 'dead.jsonl')
  p = beam.Pipeline(runner='FnApiRunner', options=PipelineOptions())
  parsed = p | ParseFiles(pattern)
  parsed.dead_letter | beam.io.WriteToText(dead_path, shard_name_template='', num_shards=1)
  counted = parsed.events | beam.combiners.Count.Globally()
  assert_that(counted, equal_to([5]))
  result = p.run()
  result.wait_until_finish()
  return result, dead_path


def test_pipeline_counters_add_up_and_dead_letters_keep_payload(tmp_path):
  for name in ('cloudtrail_delivery.json', 'cloudtrail.jsonl'):
    shutil.copy(os.path.join(FIXTURES, name), tmp_path / name)
  (tmp_path / 'junk.log').write_bytes(b'\x00\x01 not a log at all')
  result, dead_path = _run_parse(str(tmp_path / '*'), tmp_path)
  from postauth.pipeline.summary import counters
  c = counters(result)
  assert c['records_read'] == c['events_parsed'] + c['dead_lettered']
  assert (c["events_parsed"], c["dead_lettered"]) == (5, 7)
  with open(dead_path) as f:
    dead = [json.loads(l) for l in f]
  assert len(dead) == 7
  assert all(d['reason'] and d['source'] and 'raw' in d for d in dead)
  assert any('s3.amazo' in d['raw'] for d in dead)  # the truncated line, verbatim
  assert any(d['source'].endswith('junk.log') for d in dead)


def test_real_otrf_cloudtrail():
  path = shared_data('otrf-aws', 'ec2_proxy_s3_exfiltration_2020-09-14011940.json')
  out = parse_file(path)
  events = [o for o in out if isinstance(o, Event)]
  assert len(out) == 103 and len(events) == 103
  attacker = [e for e in events if 'BankingWAFRole' in e.identity]
  assert attacker and all(e.identity.startswith('arn:aws:iam::123456789123:role/') for e in attacker)
  assert {e.action for e in attacker} >= {'ListObjects', 'GetObject'}
  assert {e.category for e in attacker if e.action == 'GetObject'} == {'data_read'}


def test_real_panther_cloudtrail_categories():
  path = shared_data('panther-rule-tests', 'aws-cloudtrail.jsonl')
  with open(path, 'rb') as f:
    rows = [orjson.loads(l) for l in f if l.strip()]
  results = {}
  for i, row in enumerate(rows):
    raw = orjson.dumps(row['log'])
    recs = list(split_records(raw, f'{path}#{i}'))
    results[(row['rule_id'], row['test_name'])] = [PARSER.parse(r) for r in recs]
  flat = [o for v in results.values() for o in v]
  parsed = [o for o in flat if isinstance(o, Event)]
  assert len(parsed) / len(flat) > 0.85, 'most real CloudTrail test records must parse'
  by_action = {}
  for e in parsed:
    by_action.setdefault(e.action, set()).add(e.category)
  assert by_action.get('StopLogging') == {'defense_evasion'}
  assert by_action.get('CreateAccessKey') == {'credential_create'}
  assert 'privilege_change' in by_action.get('AttachUserPolicy', {'privilege_change'})
  assert by_action.get('ConsoleLogin', {'auth_other'}) == {'auth_other'}


REAL_RECORD = {
    'eventVersion': '1.08',
    'userIdentity': {'type': 'AssumedRole', 'arn': 'arn:aws:sts::1:assumed-role/r/s',
                     'sessionContext': {'sessionIssuer': {'arn': 'arn:aws:iam::1:role/r'}}},
    'eventTime': '2026-03-02T10:01:02Z', 'eventSource': 's3.amazonaws.com', 'eventName': 'GetObject',
    'awsRegion': 'us-east-1', 'sourceIPAddress': '10.0.0.1', 'userAgent': 'x',
    'requestParameters': {'bucketName': 'b', 'key': 'k'}, 'eventID': 'id'}


def _seed_records():
  """Records that parse, by the format that parsed them: the fixtures of every format, plus
  canonical events (as JSON objects; the same events go into the Avro seeds)."""
  seeds = {'cloudtrail': [REAL_RECORD]}
  for path in sorted(glob.glob(os.path.join(FIXTURES, '*'))):
    with open(path, 'rb') as f:
      for r in split_records(f.read(), path):
        fmt, out = PARSER.parse_with_format(r)
        if isinstance(out, Event):
          seeds.setdefault(fmt, []).append(r.obj)
  seeds['canonical'] = [e._asdict() for e in fixture_events()]
  return seeds


SEEDS = _seed_records()
EVENTS = fixture_events()

values = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2 ** 70, 2 ** 70),
                   st.floats(allow_nan=True), st.text(max_size=20),
                   st.sampled_from(['2024-03-05T10:15:30.123456789Z', '1970-01-01T00:00:00Z', '9999-12-31T23:59:59Z',
                                    'system:serviceaccount:ns:sa', 'data_read', 'ResponseStarted']),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


def _paths(obj, prefix=()):
  """Every key path in a record, nested objects included."""
  for k, v in obj.items():
    yield prefix + (k,)
    if isinstance(v, dict):
      yield from _paths(v, prefix + (k,))


@st.composite
def mutated_json(draw, fmt):
  """1-4 records of one format, fields dropped or retyped, bytes spliced in, maybe gzipped."""
  records, intact = [], []
  for _ in range(draw(st.integers(1, 4))):
    rec = json.loads(json.dumps(draw(st.sampled_from(SEEDS[fmt]))))
    changes = draw(st.integers(0, 3))
    for _ in range(changes):
      paths = list(_paths(rec))
      if not paths:
        break
      path = draw(st.sampled_from(paths))
      target = rec
      for k in path[:-1]:
        target = target[k]
      if draw(st.booleans()):
        target.pop(path[-1], None)
      else:
        target[path[-1]] = draw(values)
    records.append(json.dumps(rec).encode())  # big ints and NaN too, as other writers emit them
    intact.append(changes == 0)
  data = b'\n'.join(records)
  spliced = draw(st.booleans())
  if spliced:
    cut = draw(st.integers(0, len(data)))
    data = data[:cut] + draw(st.binary(max_size=8)) + data[cut:]
  if draw(st.integers(0, 4)) == 0:
    data = gzip.compress(data)
    if draw(st.booleans()):
      data = data[:draw(st.integers(0, len(data)))]
      spliced = True
  return data, (None if spliced else intact)


@st.composite
def mutated_avro(draw):
  """An Avro container of canonical events, maybe cut, with bytes flipped or inserted."""
  events = draw(st.lists(st.sampled_from(EVENTS), min_size=1, max_size=8))
  data = bytearray(avro_bytes(events, codec=draw(st.sampled_from(['null', 'deflate'])),
                              sync_interval=draw(st.sampled_from([300, 16000]))))
  damaged = False
  for _ in range(draw(st.integers(0, 3))):
    damaged = True
    op, pos = draw(st.sampled_from(['flip', 'cut', 'insert'])), draw(st.integers(0, len(data) - 1))
    if op == 'flip':
      data[pos] ^= draw(st.integers(1, 255))
    elif op == 'cut':
      data = data[:max(pos, 4)]
    else:
      data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
  return bytes(data), (None if damaged else events)


@st.composite
def mutated_files(draw):
  kind = draw(st.sampled_from(sorted(SEEDS) + ['avro']))
  if kind == 'avro':
    data, expected = draw(mutated_avro())
  else:
    data, expected = draw(mutated_json(kind))
  return kind, data, expected


def test_seeds_cover_every_format():
  assert set(SEEDS) == {'cloudtrail', 'gcp_audit', 'k8s_audit', 'ocsf', 'canonical'}
  assert all(len(v) >= 3 for v in SEEDS.values())


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_mutations_never_raise_and_never_lose_records(case):
  kind, data, expected = case
  records = list(split_records(data, 'fuzz'))  # must not raise
  outcomes = [PARSER.parse(r) for r in records]  # must not raise
  assert all(isinstance(o, (Event, str)) and o for o in outcomes)
  assert all(not r.error or r.raw is not None for r in records)
  if kind == 'avro':
    if expected is not None:  # an intact container gives back exactly its events
      assert outcomes == expected
    else:
      assert outcomes or len(data) <= 4 or not data.startswith(b'Obj\x01')
    return
  if data[:2] == b'\x1f\x8b':
    try:
      data = gzip.decompress(data)
    except Exception:
      assert len(records) == 1 and records[0].error.startswith('corrupt gzip')
      return
  if expected is not None:  # no byte damage: one outcome per record, intact ones parse
    assert len(outcomes) == len(expected)
    for ok, out in zip(expected, outcomes):
      assert isinstance(out, Event) or not ok, out
  nonblank = [l for l in data.strip().split(b'\n') if l.strip()]
  try:
    whole = orjson.loads(data.strip())
  except orjson.JSONDecodeError:
    whole = None
  if whole is None and not data.startswith(b'Obj\x01'):  # JSON lines: one record per line
    assert len(records) == len(nonblank)
