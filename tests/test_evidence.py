"""Issue 14: findings carry evidence a responder can pivot on, by the provider's own event id.

The sample behind it (domain/evidence.py) is bounded and exact under merging; every
evidence id of a detection run exists in the input, at the place the finding says it was
read; each provider's id field is named.
"""
from __future__ import annotations

import json
import os
import random

import pytest

from postauth.domain import evidence
from postauth.domain.window import WindowAggregate
from postauth.transforms.aggregate import WindowAggregateCoder, evidence_part
from postauth.domain.event import Event
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import split_records

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
T0 = 1_800_000_000


def _event(i: int, action: str, ip: str = '10.0.0.7', t: float = None) -> Event:
  return Event(f'id-{i:05d}', T0 + (i if t is None else t), 'role/x', 'AssumedRole', 'role/x', '',
               'aws', 's3', action, 'data_read', f'bucket/obj-{i}', 'us-east-1', ip,
               'Boto3/1.34 Python/3.11 Linux', True, '', True, f'file.jsonl#{i}')


def _events(n: int, seed: int = 3):
  rng = random.Random(seed)
  return [_event(i, rng.choice(['GetObject', 'PutObject', 'ListBucket', f'Rare{i % 50}']),
                 ip=rng.choice(['10.0.0.7', '10.0.1.8', f'198.51.100.{i % 20}']),
                 t=rng.uniform(0, 3600)) for i in range(n)]


def test_sample_is_bounded_whatever_the_volume():
  agg = WindowAggregate()
  for e in _events(5000):
    agg.add(e, 900)
  kept = evidence.samples(agg.evidence)
  bound = evidence.MAX_ACTIONS * sum(evidence.KEEP['a']) + evidence.MAX_NETWORKS * sum(evidence.KEEP['n'])
  assert 0 < len(kept) <= bound
  assert sum(1 for k in agg.evidence if k[0] == 'a') == evidence.MAX_ACTIONS
  # per action: exactly its first and last events by time
  first, last = evidence.KEEP['a']
  gets = sorted((e for e in _events(5000) if e.action == 'GetObject'), key=lambda e: (e.event_time, e.event_id))
  assert [s[0] for s in agg.evidence['as3:GetObject']] == [e.event_id for e in gets[:first] + gets[-last:]]


def test_sample_is_exact_under_merging_in_any_order():
  events = _events(800)
  whole = WindowAggregate()
  for e in events:
    whole.add(e, 900)
  for seed in range(3):
    rng = random.Random(seed)
    shuffled = events[:]
    rng.shuffle(shuffled)
    parts = [WindowAggregate() for _ in range(5)]
    for i, e in enumerate(shuffled):
      parts[i % 5].add(e, 900)
    rng.shuffle(parts)
    merged = parts[0]
    for p in parts[1:]:
      merged.merge(p)
    assert merged.evidence == whole.evidence


def test_sample_survives_the_coder_and_is_written_once_per_event():
  agg = WindowAggregate()
  for e in _events(300):
    agg.add(e, 900)
  coder = WindowAggregateCoder()
  encoded = coder.encode(agg)
  assert coder.decode(encoded) == agg
  # an event kept for its action and its network is encoded once
  keys, sample = evidence_part(coder.decode(encoded))  # the sample's own bytes, undecoded
  assert keys == len(agg.evidence) and len(json.loads(sample)[1]) == len(evidence.samples(agg.evidence))
  # and survives a second round trip (decoded samples are shared again)
  assert coder.decode(coder.encode(coder.decode(encoded))) == agg


def test_pick_takes_events_behind_each_reason_in_turn():
  agg = WindowAggregate()
  events = [_event(i, 'GetObject') for i in range(40)] + [_event(100 + i, 'PutSecretValue') for i in range(3)]
  events += [_event(200 + i, 'GetObject', ip='203.0.113.9') for i in range(4)]
  for e in events:
    agg.add(e, 900)
  w = {'window_start': T0, 'window_end': T0 + 3600, 'score': 5.0, 'event_count': agg.count,
       'evidence': evidence.for_window(agg, None)}
  for ev in w['evidence']['events']:  # as the profile would flag them: the network is new
    ev['new'] = ['networks'] if ev['source_ip'] == '203.0.113.9' else []
  reasons = [{'rule': 'credential_create', 'actions': ['s3:PutSecretValue'], 'detail': 'x'},
             {'feature': 'new_network_share', 'value': '203.0.113.0/24', 'detail': 'calls from new network'}]
  out = evidence.pick([w], reasons, limit=4)
  by_reason = {}
  for e in out['evidence']:
    by_reason.setdefault(e['reason'], []).append(e)
  assert {e['action'] for e in by_reason['credential_create']} == {'s3:PutSecretValue'}
  assert {e['source_ip'] for e in by_reason['new_network_share']} == {'203.0.113.9'}
  assert len(out['evidence']) == 4 and len({e['event_id'] for e in out['evidence']}) == 4
  assert out['window_actions'] == [{'window_start': '2027-01-15T08:00:00.000Z',
                                    'window_end': '2027-01-15T09:00:00.000Z', 'calls': 47,
                                    'actions': {'s3:GetObject': 44, 's3:PutSecretValue': 3}}]


@pytest.mark.parametrize('fixture,raw_id', [
    ('cloudtrail.jsonl', lambda r: r.get('eventID') or (r.get('detail') or {}).get('eventID')),
    ('cloudtrail_delivery.json', lambda r: r.get('eventID')),
    ('gcp_audit.jsonl', lambda r: r.get('insertId')),
    ('k8s_audit.jsonl', lambda r: r.get('auditID')),
    ('ocsf.jsonl', lambda r: (r.get('metadata') or {}).get('uid')),
])
def test_each_provider_names_its_own_event_id(fixture, raw_id):
  path = os.path.join(FIXTURES, fixture)
  with open(path, 'rb') as f:
    records = list(split_records(f.read(), path))
  parser = RecordParser()
  events = [e for e in (parser.parse(r) for r in records) if isinstance(e, Event)]
  assert events
  agg = WindowAggregate()
  for e in events:
    agg.add(e, 900)
  out = evidence.from_aggregate(agg, [{'rule': 'unregistered_identity', 'detail': ''}], T0, T0 + 3600)
  assert out['evidence']
  raw = {r.ref: r.obj for r in records}
  for e in out['evidence']:
    record = raw[e['read_from']]  # read where the finding says
    assert e['id_from_log'] and raw_id(record) == e['event_id']


# -- a detection run: every evidence id exists in the input ----------------------------------

@pytest.fixture(scope='session')
def evidence_run(sample, model_dir, tmp_path_factory):
  """One batch detection writing findings and OCSF findings (shared with test_ocsf.py)."""
  from postauth.pipeline.jobs import run
  out = tmp_path_factory.mktemp('evidence')
  findings, ocsf = str(out / 'findings.jsonl'), str(out / 'findings.ocsf.jsonl')
  run([f'--events={sample["dir"]}/live/*', f'--inventory={sample["inventory"]}',
       f'--model-dir={model_dir}', f'--findings={findings}', f'--sink={ocsf}', '--runner=FnApiRunner'])
  with open(findings) as f:
    rows = [json.loads(l) for l in f]
  with open(ocsf) as f:
    ocsf_rows = [json.loads(l) for l in f]
  return {'findings': rows, 'ocsf': ocsf_rows, 'findings_path': findings, 'ocsf_path': ocsf}


def _input_records(sample):
  """ref -> record of every live input file, as the pipeline reads them."""
  import glob
  out = {}
  for path in glob.glob(f'{sample["dir"]}/live/*'):
    with open(path, 'rb') as f:
      for r in split_records(f.read(), path):
        out[r.ref] = r.obj
  return out


def test_every_evidence_id_exists_in_the_input_where_it_was_read(evidence_run, sample):
  records = _input_records(sample)
  ids = {r.get('eventID') for r in records.values() if r}
  rows = [f for f in evidence_run['findings'] if f.get('kind') != 'fleet_change']
  assert rows
  checked = 0
  for f in rows:
    assert 0 < len(f['evidence']) <= evidence.MAX_EVIDENCE, f['finding_id']
    reason_keys = {r.get('rule') or r.get('feature') for r in f['reasons']}
    for e in f['evidence']:
      assert e['event_id'] in ids
      assert records[e['read_from']]['eventID'] == e['event_id']
      assert e['id_from_log']
      assert e['reason'] in reason_keys
      assert f['window_start'] <= e['time'][:19] + 'Z' <= f['window_end']
      checked += 1
    # calls per action of each window add up to the window's calls (none beyond the cap here)
    assert len(f['window_actions']) == f['windows']
    for w in f['window_actions']:
      assert sum(w['actions'].values()) == w['calls']
  assert checked >= len(rows)


def test_attack_evidence_shows_the_attack(evidence_run, sample):
  """The injected attacks' findings point at events of the attack, not at routine calls."""
  labels = {l['identity']: l for l in sample['labels']}
  hits = 0
  for f in evidence_run['findings']:
    label = labels.get(f['identity'])
    if not label or not (f['window_start'] <= label['end'] and label['start'] <= f['window_end']):
      continue
    inside = [e for e in f['evidence'] if label['start'] <= e['time'][:19] + 'Z' <= label['end']]
    assert inside, (label['scenario'], f['evidence'][:3])
    hits += 1
  assert hits >= len(labels) - 1
