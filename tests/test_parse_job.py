"""`postauth parse`: the batch parse job, its Avro output read back, bad input, the summary line."""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re

import fastavro
import orjson
import pytest

from conftest import FIXTURES
from test_canonical import avro_bytes, fixture_events
from postauth.pipeline import cli
from postauth.transforms import avro_events
from postauth.domain.event import Event
from postauth.transforms.records import AVRO_MAGIC

RUNNER = '--runner=FnApiRunner'


def parse_cli(capsys, *args):
  """Runs `postauth parse`; returns (exit code, summary dict from the last stdout line)."""
  code = cli.main(['parse', *args, RUNNER])
  out = capsys.readouterr().out.strip().splitlines()
  return code, json.loads(out[-1])


def read_avro(out_dir):
  events = []
  for path in sorted(glob.glob(os.path.join(out_dir, 'events-*.avro'))):
    with open(path, 'rb') as f:
      events += list(avro_events.read_events(f))
  return sorted(events, key=lambda e: e.raw_ref)


def read_dead(out_dir):
  dead = []
  for path in sorted(glob.glob(os.path.join(out_dir, 'dead-letter*.jsonl'))):
    with open(path) as f:
      dead += [json.loads(line) for line in f if line.strip()]
  return dead


def test_parse_writes_avro_and_dead_letters_and_round_trips(tmp_path, capsys):
  first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
  code, s = parse_cli(capsys, f'--events={FIXTURES}/*', f'--out={first}')
  assert code == 0
  events, dead = read_avro(first), read_dead(first)
  # the summary comes from the job's counters and agrees with what it wrote
  assert s['read'] == s['parsed'] + s['dead_lettered'] + s['skipped'] == 28
  assert (s['parsed'], s['dead_lettered']) == (len(events), len(dead)) == (18, 9)
  assert s['skipped_by_reason'] == {  # the k8s fixture's RequestReceived stage
      'k8s_audit: stage RequestReceived is not the final stage (ResponseComplete or Panic)': 1}
  assert s['by_format'] == {'cloudtrail': 5, 'gcp_audit': 5, 'k8s_audit': 5, 'ocsf': 3}
  assert sum(s['by_category'].values()) == s['parsed']
  assert s['by_category'] == {c: sum(e.category == c for e in events) for c in s['by_category']}
  assert all(d['reason'] and d['source'].startswith(FIXTURES) and d['raw'] for d in dead)
  # its own output is an input format: the same events again, every one 'canonical'
  code, s2 = parse_cli(capsys, f'--events={first}/events-*.avro', f'--out={second}')
  assert code == 0
  assert read_avro(second) == events
  assert s2 == {'read': 18, 'parsed': 18, 'dead_lettered': 0, 'skipped': 0, 'by_format': {'canonical': 18},
                'by_category': s['by_category'], 'skipped_by_reason': {}}
  assert read_dead(second) == []
  # a rerun replaces its earlier shards instead of mixing with them
  code, _ = parse_cli(capsys, f'--events={FIXTURES}/ocsf.jsonl', f'--out={first}')
  assert len(read_avro(first)) == 3 and len(read_dead(first)) == 2


def test_forced_format_and_option_errors(tmp_path, capsys):
  out = str(tmp_path / 'forced')
  code, s = parse_cli(capsys, f'--events={FIXTURES}/cloudtrail_delivery.json', f'--out={out}',
                      '--format=k8s_audit')
  assert code == 0 and s['parsed'] == 0 and s['dead_lettered'] == s['read'] == 5
  assert {d['reason'] for d in read_dead(out)} == {'k8s_audit: missing user'}
  extra = tmp_path / 'ours.csv'
  extra.write_text('provider,service,action,category\naws,ecs,UpdateService,remote_execution\n')
  code, s = parse_cli(capsys, f'--events={FIXTURES}/cloudtrail_delivery.json', f'--out={out}',
                      '--format=cloudtrail', f'--taxonomy-file={extra}')
  assert (s['parsed'], s['by_format']) == (3, {'cloudtrail': 3})
  assert s['by_category'] == {'defense_evasion': 1, 'remote_execution': 1, 'secret_access': 1}
  assert cli.main(['parse', f'--events={FIXTURES}/*', f'--out={out}', '--format=syslog', RUNNER]) == 2
  assert "'syslog' is not one of canonical, cloudtrail" in capsys.readouterr().err
  assert cli.main(['parse', f'--events={FIXTURES}/*']) == 2
  assert 'needs --out' in capsys.readouterr().err
  assert cli.main(['parse', '--help']) == 0
  assert '--taxonomy-file' in capsys.readouterr().out


def _ct(**over):
  rec = {'eventVersion': '1.08', 'eventTime': '2024-03-05T10:00:00Z', 'eventSource': 's3.amazonaws.com',
         'eventName': 'GetObject', 'eventID': 'ok-1', 'awsRegion': 'us-east-1',
         'userIdentity': {'type': 'IAMUser', 'arn': 'arn:aws:iam::1:user/u'}}
  rec.update(over)
  return {k: v for k, v in rec.items() if v is not None}


K8S = {'kind': 'Event', 'apiVersion': 'audit.k8s.io/v1', 'stage': 'ResponseComplete', 'verb': 'get',
       'user': {'username': 'system:serviceaccount:ns:sa'}, 'objectRef': {'resource': 'secrets'},
       'stageTimestamp': '2024-03-05T10:00:00.123456789Z'}
GCP = {'timestamp': '2024-03-05T10:00:00Z', 'protoPayload': {
    '@type': 'type.googleapis.com/google.cloud.audit.AuditLog', 'methodName': 'storage.objects.get',
    'serviceName': 'storage.googleapis.com', 'authenticationInfo': {'principalEmail': 'a@p.iam.gserviceaccount.com'}}}
OCSF = {'class_uid': 6003, 'time': 1709632800000, 'actor': {'user': {'uid': 'svc'}},
        'api': {'operation': 'GetObject', 'service': {'name': 's3'}}}
CANONICAL = {f: '' for f in Event._fields} | {
    'event_id': 'c-1', 'event_time': 1709632800.0, 'identity': 'svc', 'provider': 'aws', 'service': 's3',
    'action': 'GetObject', 'category': 'data_read', 'success': True, 'read_only': True, 'raw_ref': 'x#0'}


def lines(*records) -> bytes:
  return b'\n'.join(r if isinstance(r, bytes) else orjson.dumps(r) for r in records) + b'\n'


TOO_BIG = r'record of 10\d{6} bytes exceeds 1048576'


def bad_inputs():
  """{file name: (bytes, events expected, dead-letter reasons expected: regex matched at the start)}."""
  good = orjson.dumps(_ct())
  huge = _ct(requestParameters={'blob': 'x' * (10 << 20)})
  avro = avro_bytes(fixture_events(), codec='null', sync_interval=600)
  blocks = list(fastavro.block_reader(io.BytesIO(avro)))
  with open(os.path.join(FIXTURES, 'cloudtrail_delivery.json'), 'rb') as f:
    gz = gzip.compress(f.read())
  return {
      'truncated.jsonl': (lines(good, good[:70]), 1, ['invalid JSON: unexpected end of data']),
      'wrong_types.jsonl': (lines(
          _ct(userIdentity={'type': 'IAMUser', 'arn': 123}), dict(GCP, protoPayload=dict(
              GCP['protoPayload'], methodName={'x': 1})), dict(K8S, user=['admin']),
          dict(OCSF, time='2024-03-05'), dict(CANONICAL, success='yes'), _ct(eventTime=1709632800)), 0,
          ['cloudtrail: userIdentity.arn: expected a string, got int', 'gcp_audit: expected a string, got dict',
           'k8s_audit: missing user', 'ocsf: time: expected epoch milliseconds',
           'canonical: success: expected a boolean', 'cloudtrail: missing or non-string time: 1709632800']),
      'missing.jsonl': (lines(
          _ct(userIdentity=None), _ct(eventTime=None), dict(GCP, protoPayload=dict(
              GCP['protoPayload'], authenticationInfo={})), {k: v for k, v in K8S.items() if k != 'stageTimestamp'},
          {k: v for k, v in OCSF.items() if k != 'actor'}, dict(CANONICAL, identity=''),
          {k: v for k, v in CANONICAL.items() if k != 'event_time'}), 0,
          ['cloudtrail: missing userIdentity', 'cloudtrail: missing or non-string time: None',
           'gcp_audit: missing protoPayload.authenticationInfo.principalEmail',
           'k8s_audit: missing or non-string time', 'ocsf: missing actor.user.uid', 'canonical: missing identity',
           'canonical: missing event_time']),
      'absurd.jsonl': (lines(
          _ct(eventTime='1970-01-01T00:00:00Z'), dict(K8S, stageTimestamp='9999-12-31T23:59:59Z'),
          dict(OCSF, time=1709632800), dict(CANONICAL, event_time=1.7e12)), 0,
          ["cloudtrail: absurd time '1970", "k8s_audit: absurd time '9999", 'ocsf: absurd time 1709632800',
           'canonical: absurd time 17']),
      'huge.jsonl': (lines(good, huge), 1, [TOO_BIG]),
      'huge_doc.json': (orjson.dumps(huge), 0, [TOO_BIG]),
      'latin1.jsonl': (lines(good, good.replace(b'GetObject', b'G\xe9tObject')), 1,
                       ['invalid JSON: str is not valid UTF-8']),
      'unknown.jsonl': (lines({'foo': 1}, {'operationName': 'Microsoft.Storage/read', 'category': 'Write'},
                              {'kind': 'Event', 'apiVersion': 'v1', 'involvedObject': {}}), 0,
                        ['unknown format'] * 3),
      'corrupt.json.gz': (b'\x1f\x8b\x08\x00' + b'not deflate at all', 0, ['corrupt gzip']),
      'truncated.json.gz': (gz[:len(gz) // 2], 0, ['corrupt gzip']),
      'corrupt.avro': (AVRO_MAGIC + b'\x02\x00garbage', 0, ['corrupt Avro header']),
      'truncated.avro': (avro[:blocks[2].offset + 10], blocks[0].num_records + blocks[1].num_records,
                         [f'corrupt Avro block at byte {blocks[2].offset}']),
  }


def test_bad_input_is_dead_lettered_with_payload_and_reason(tmp_path, capsys):
  src, out = tmp_path / 'in', str(tmp_path / 'out')
  src.mkdir()
  cases = bad_inputs()
  for name, (data, _, _) in cases.items():
    (src / name).write_bytes(data)
  code, s = parse_cli(capsys, f'--events={src}/*', f'--out={out}')
  assert code == 0
  dead = read_dead(out)
  assert s['read'] == s['parsed'] + s['dead_lettered']
  assert s['parsed'] == sum(n for _, n, _ in cases.values()) == len(read_avro(out))
  assert s['dead_lettered'] == sum(len(r) for _, _, r in cases.values()) == len(dead)
  by_file = {}
  for d in dead:
    assert d['reason'] and d['raw'] and d['stage'] == 'parse', d['reason']
    by_file.setdefault(os.path.basename(d['source']), []).append(d)
  for name, (data, _, reasons) in cases.items():
    got = sorted(by_file.get(name, []), key=lambda d: int(d['index'] or 0))
    assert len(got) == len(reasons), (name, [d['reason'] for d in got])
    for d, prefix in zip(got, reasons):
      assert re.match(prefix, d['reason']), (name, d['reason'], prefix)
  # the raw payload is the record itself, whole and readable, but for an oversized one: its first
  # 64 KiB, its size and SHA-256 (tests/test_bounded_input.py)
  huge = by_file['huge.jsonl'][0]
  assert len(huge['raw']) == 64 << 10 and huge['raw_bytes'] > 10 << 20 and len(huge['raw_sha256']) == 64
  assert by_file['truncated.jsonl'][0]['raw'] == orjson.dumps(_ct())[:70].decode()
  assert '\\xe9' in by_file['latin1.jsonl'][0]['raw']  # undecodable byte kept, visibly
  assert by_file['corrupt.avro'][0]['raw'].startswith('Obj\x01\x02\x00garbage')
