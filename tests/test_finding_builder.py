"""A finding version built incrementally (``FindingBuilder``, ``EvidencePool``) equals
``to_finding`` of the run's windows rebuilt from scratch, whatever the order windows join in and
however often they are re-scored (replaced), and after the builder went through pickling (state)."""
import json
import pickle
import random

import pytest

from postauth.domain import evidence
from postauth.domain.evidence_pool import EvidencePool
from postauth.transforms.finding_builder import FindingBuilder
from postauth.transforms.findings import to_finding

T0 = 1_800_000_000
Q, H = 900, 3600
ACTIONS = ['s3:GetObject', 's3:PutObject', 'iam:CreateAccessKey', 'kms:Decrypt', 'sts:AssumeRole']
NETS = ['10.0.0.0/24', '203.0.113.0/24', '198.51.100.0/24']
# few keys and details, so windows share reasons, groups (novel_*) and details
FEATURES = ['novel_resources', 'novel_family_share', 'novel_action_share', 'volume_z', 'new_network_share',
            'error_rate']
RULES = ['out_of_scope', 'credential_create', 'excess_write']
DETAILS = ['calls from 203.0.113.0/24', 's3:GetObject x3', 'kms:Decrypt new', 'many errors', 'burst']
SEVERITIES = ['low', 'medium', 'high', 'critical']


def _events(rng, slot):
  """Samples of a window; the same event (id, time) recurs in overlapping windows, its novelty
  flags as each window's profile saw them."""
  out = []
  for n in rng.sample(range(slot * 4, slot * 4 + 24), rng.randint(0, 8)):
    a, net = ACTIONS[n % len(ACTIONS)], NETS[n % len(NETS)]
    out.append({'event_id': f'e{n}', 'time': T0 + n * 60.0, 'provider': 'aws', 'action': a,
                'category': 'write' if 'Put' in a else 'read', 'resource': f'b/{n % 3}',
                'source_ip': net.replace('0/24', '9'), 'user_agent': 'ua', 'error_code': 'Denied' if n % 5 == 0 else '',
                'region': 'r', 'raw_ref': f'f#{n}', 'network': net,
                'new': rng.sample(['actions', 'resources', 'networks', 'agents'], rng.randint(0, 2))})
  return out


def _window(rng, slot):
  s = T0 + slot * Q
  reasons = [{'feature': f, 'value': rng.choice([1, None, 'b/1', 2.5]), 'baseline': 0,
              'detail': rng.choice(DETAILS), 'actions': rng.sample(ACTIONS, rng.randint(0, 2))}
             for f in rng.sample(FEATURES, rng.randint(0, 3))]
  rules = [{'rule': r, 'severity': rng.choice(SEVERITIES), 'detail': rng.choice(DETAILS + [r]),
            'actions': rng.sample(ACTIONS, 1)} for r in rng.sample(RULES, rng.randint(0, 2))]
  acts = {a: rng.randint(0, 9) for a in rng.sample(ACTIONS, rng.randint(0, 4))}
  j = {k: rng.sample(['new_scope', 'new_net', 'rollout', 'x'], rng.randint(0, 2))
       for k in ('evidence', 'shareable', 'change')}
  return {'identity': 'svc-a', 'window_start': s, 'window_end': s + H,
          'score': rng.choice([1.0, 2.0, 2.0, 3.5, 4.25]), 'score_forest': rng.random(),
          'score_rarity': rng.random(), 'model_flagged': rng.random() < 0.7,
          'severity': rng.choice(SEVERITIES + ['none']), 'model_version': 'v1', 'cohort': 'api_key',
          'reasons': reasons, 'rules': rules, 'actions': acts,
          'resources': {f'b/{k}': rng.randint(1, 5) for k in rng.sample(range(6), rng.randint(0, 3))},
          'panes': {str(s + k * Q): rng.randint(0, 7) for k in range(4)}, 'event_count': rng.randint(1, 30),
          'judgment': j,
          'evidence': {'events': _events(rng, slot), 'actions': acts if rng.random() < 0.5 else {}},
          'context': {'identity_type': 'api_key', 'owner': 'o', 'team': 't', 'environment': 'prod',
                      'criticality': rng.choice(['high', 'low', ''])}}


def _same(a, b):
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize('seed', range(12))
def test_incremental_finding_equals_rebuilt_from_scratch(seed):
  rng = random.Random(seed)
  builder = FindingBuilder()
  slots: list = []
  for step in range(40):
    if slots and rng.random() < 0.3:
      slot = rng.choice(slots)  # a re-scored window replaces its earlier version
    else:
      slot = rng.randint(0, 30) if rng.random() < 0.2 else (max(slots) + 1 if slots else 0)
      if slot not in slots:
        slots.append(slot)
    builder.put(_window(rng, slot))
    if step % 9 == 8:  # as the streaming state keeps it: windows only, the rest rebuilt
      builder = pickle.loads(pickle.dumps(builder))
    got, want = builder.finding(), to_finding(list(builder.windows.values()))
    assert _same(got, want), f'seed {seed} step {step}'
    assert builder.start == min(s for s, _ in builder.windows) and builder.end == max(e for _, e in builder.windows)


def test_pool_evidence_equals_pick_as_reasons_change():
  rng = random.Random(99)
  pool, windows = EvidencePool(), {}
  for step in range(60):
    w = _window(rng, rng.randint(0, 12))
    wk = (w['window_start'], w['window_end'])
    windows[wk] = w
    pool.put(wk, w)
    reasons = [r for x in rng.sample(list(windows.values()), min(2, len(windows))) for r in x['rules'] + x['reasons']]
    assert pool.evidence(reasons) == evidence.pick(list(windows.values()), reasons)['evidence'], step


def test_versions_share_the_records_of_events_they_repeat():
  """A record is made once while the pool holds its event: a finding's versions share it (so a
  shuffle of a bundle's versions carries it once); a replaced event gets a new record."""
  rng = random.Random(5)
  pool = EvidencePool()
  w = _window(rng, 3)
  wk = (w['window_start'], w['window_end'])
  pool.put(wk, w)
  reasons = w['rules'] + w['reasons']
  first, again = pool.evidence(reasons), pool.evidence(reasons)
  assert first and first == again
  assert all(a is b for a, b in zip(first, again))
  pool.put(wk, json.loads(json.dumps(w)))  # the window re-scored: its events replaced by equal ones
  assert all(a is not b for a, b in zip(first, pool.evidence(reasons)))
