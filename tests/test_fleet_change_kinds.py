"""The generator's change nobody in the fleet made (issue 22 item 7): each kind, labelled, as it says.

Small samples (40 identities x 3 days, at a routine rate high enough for per-identity checks),
generated once per module in both modes: the default (change on every day) and the quiet history
(no change before the live day, a third of the fleet changing on it).
"""
from __future__ import annotations

import gzip
import ipaddress
import json
import os
from typing import Dict, List

import numpy as np
import pytest

from postauth.pipeline.evaluate import parse_time

NEW_KINDS = ('novel_harmless', 'scale_out', 'reschedule', 'burst')


def _arn(record: dict) -> str:
  ui = record['userIdentity']
  return ((ui.get('sessionContext') or {}).get('sessionIssuer') or {}).get('arn') or ui.get('arn')


def _net(record: dict) -> str:
  return record['sourceIPAddress'].rsplit('.', 1)[0]


def _load(out: str, counts: Dict) -> Dict:
  history: List[dict] = []
  for name in sorted(os.listdir(os.path.join(out, 'history'))):
    with gzip.open(os.path.join(out, 'history', name)) as f:
      history += json.load(f)['Records']
  live = [json.loads(line) for name in os.listdir(os.path.join(out, 'live'))
          for line in open(os.path.join(out, 'live', name))]
  with open(os.path.join(out, 'benign.json')) as f:
    benign = json.load(f)
  with open(os.path.join(out, 'inventory.csv')) as f:
    types = [line.split(',')[1] for line in f.readlines()[1:]]
  return {'counts': counts, 'history': history, 'live': live, 'benign': benign, 'types': types}


@pytest.fixture(scope='module')
def samples(tmp_path_factory):
  from postauth.pipeline.generate import generate
  out = {}
  for quiet in (False, True):
    d = str(tmp_path_factory.mktemp('quiet' if quiet else 'default'))
    counts = generate(d, identities=40, days=3, seed=5, rate_scale=1.5, quiet_history=quiet)
    out[quiet] = _load(d, counts)
  return out


def _cases(sample, kind):
  return [b for b in sample['benign'] if b.get('kind') == kind]


def _after(sample, case, records=None):
  start = parse_time(case['start'])
  return [r for r in (records or sample['live'])
          if _arn(r) == case['identity'] and parse_time(r['eventTime']) >= start]


@pytest.mark.parametrize('quiet', [False, True])
def test_every_new_kind_is_on_the_live_day_with_its_label(samples, quiet):
  kinds = {b.get('kind') for b in samples[quiet]['benign']}
  assert set(NEW_KINDS) <= kinds
  for b in samples[quiet]['benign']:
    assert b['expected'] == 'low_or_none' or b.get('change') == 'month_end_close_spike'


@pytest.mark.parametrize('quiet', [False, True])
def test_novel_harmless_calls_are_harmless_and_no_history_day_holds_them(samples, quiet):
  from postauth.domain import high_impact
  from postauth.domain.taxonomy import Taxonomy
  from postauth.pipeline.synthetic_fleet import HARMLESS_CATEGORIES
  sample = samples[quiet]
  taxonomy = Taxonomy()
  made_before = {(r['eventSource'].partition('.')[0], r['eventName']) for r in sample['history']}
  cases = _cases(sample, 'novel_harmless')
  assert cases
  rollouts: Dict[tuple, List[float]] = {}
  used = 0
  for case in cases:
    for call in case['calls']:
      service, _, action = call.partition(':')
      assert (service, action) not in made_before, call
      assert taxonomy.categorize('aws', service, action) in HARMLESS_CATEGORIES, call
      assert high_impact.what_of(call, 'aws') is None
    made = {f'{r["eventSource"].partition(".")[0]}:{r["eventName"]}' for r in _after(sample, case)}
    used += bool(made & set(case['calls']))
    rollouts.setdefault(tuple(case['calls']), []).append(parse_time(case['start']))
  assert used >= len(cases) // 2  # adopters make the new calls (a quiet identity may not within its day)
  spread = [max(s) - min(s) for s in rollouts.values() if len(s) > 1]
  assert spread and all(h > 3600 for h in spread)  # adopters start at their own times, over hours


def _private_block(net: str) -> ipaddress.IPv4Network:
  addr = ipaddress.ip_address(net + '.0')
  return next(b for b in map(ipaddress.ip_network, ('10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16'))
              if addr in b)


@pytest.mark.parametrize('quiet', [False, True])
def test_scale_out_adds_a_private_network_of_the_fleet_and_keeps_the_old_one(samples, quiet):
  sample = samples[quiet]
  history_nets = {}
  for r in sample['history']:
    history_nets.setdefault(_net(r), set()).add(_arn(r))
  cases = _cases(sample, 'scale_out')
  assert cases
  checked = 0
  for case in cases:
    (new,) = case['networks']
    assert new not in history_nets
    same16 = {n for n in history_nets if n.split('.')[:2] == new.split('.')[:2]}
    in_block = {n for n in history_nets if ipaddress.ip_address(n + '.0') in _private_block(new)}
    others = [{i for n in nets for i in history_nets[n]} - {case['identity']} for nets in (same16, in_block)]
    assert max(map(len, others)) >= 2  # other identities of the fleet call from that /16 or that block
    after = [_net(r) for r in _after(sample, case)]
    if len(after) >= 12:
      checked += 1
      assert new in after and set(after) & set(case['old_networks']), 'beside, not instead'
  assert checked


@pytest.mark.parametrize('quiet', [False, True])
def test_reschedule_moves_a_workload_through_new_networks_of_its_pod_range(samples, quiet):
  sample = samples[quiet]
  history_nets = {_net(r) for r in sample['history']}
  cases = _cases(sample, 'reschedule')
  assert cases
  for case in cases:
    assert 'role/wl-' in case['identity']
    new, old = case['networks'], case['old_networks']
    assert len(new) >= 3 and not set(new) & history_nets
    assert {n.split('.')[:2] == old[0].split('.')[:2] for n in new} == {True}  # the cluster's pod /16
    seen = {_net(r) for r in _after(sample, case)}
    assert seen <= set(new) | {old[0]} and len(seen & set(new)) >= 2


def test_burst_is_a_pause_then_three_times_the_routine(samples):
  cases = _cases(samples[False], 'burst') + _cases(samples[True], 'burst')
  assert cases
  for case in cases:
    sample = samples[False] if case in samples[False]['benign'] else samples[True]
    pause = float(case['detail'].split('paused ')[1].split(' h')[0]) * 3600
    start = parse_time(case['start'])
    mine = [parse_time(r['eventTime']) for r in sample['live'] if _arn(r) == case['identity']]
    assert not [t for t in mine if start < t < start + pause - 360]  # silent while paused
    assert [t for t in mine if start + pause <= t <= parse_time(case['end'])]


def test_quiet_history_has_no_change_before_the_live_day_and_a_third_changing_on_it(samples):
  quiet, default = samples[True], samples[False]
  assert quiet['counts']['history_changes'] == {}
  assert default['counts']['history_changes']  # the default mode changes every day
  nhis = sum(1 for t in quiet['types'] if t != 'human')
  changing = {b['identity'] for b in quiet['benign'] if b.get('kind') in NEW_KINDS + (
      'rollout', 'redeploy', 'backfill', 'new_resources')}
  assert 0.25 <= len(changing) / nhis <= 0.5, (len(changing), nhis)
  assert not _cases(quiet, 'key_rotation')


def test_fleet_change_day_is_empty_on_quiet_history_days():
  from postauth.pipeline.activity import Simulator
  from postauth.pipeline.fleet_change import FleetChange
  from postauth.pipeline.synthetic_fleet import build_fleet
  rng = np.random.default_rng(3)
  fleet = build_fleet(30, rng)
  before = [(w.networks[:], len(w.extra_calls)) for w in fleet]
  size = len(fleet)
  change = FleetChange(Simulator(rng, 0.4), rng)
  assert change.day(fleet, 0.0, release=False, taken=set(), quiet=True) == ([], set())
  assert [(w.networks, len(w.extra_calls)) for w in fleet] == before and len(fleet) == size
