"""The AI-agent fleet's joint mode (pipeline/agent_cloud.py): the CloudTrail records its tool calls
cause, dated inside their spans, under the roles the inventory's ``runs_as`` names; read back with
the project's own parsers."""
from __future__ import annotations

import bisect
import csv
import glob
import hashlib
import json
import os
from typing import Dict, List, Tuple

import pytest

from postauth.pipeline.agent_cloud import HISTORY_TOOL, NEW_TOOLS
from postauth.pipeline.agent_fleet import generate_agents
from postauth.pipeline.evaluate_agents import joint_outcomes
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import split_records

PARSER = RecordParser()
JOINT_ATTACKS = {'agent_credential_used_outside', 'agent_injected_tool_reads_secrets',
                 'agent_tool_exports_other_team_data'}
# sha256 of a joint=False fleet's traces, labels and benign cases (8 agents, 2 days, seed 3), as the
# generator wrote them before the joint mode: the figures and tests on the span-only fleet rely on it.
SPAN_ONLY_DIGEST = '975f719cfcffc375a4b0329a4fcb3dc97daf42498c7faabc1c953f4e915dd73a'


def _files(out: str) -> List[str]:
  return sorted(glob.glob(os.path.join(out, '*', '*'))) + [os.path.join(out, n) for n in ('labels.json', 'benign.json')]


def _digest(out: str) -> str:
  h = hashlib.sha256()
  for path in _files(out):
    h.update(os.path.relpath(path, out).encode())
    with open(path, 'rb') as f:
      h.update(f.read())
  return h.hexdigest()


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
  """A joint fleet (16 agents, 3 days) parsed: events by format, dead letters, tool spans, cases."""
  out = str(tmp_path_factory.mktemp('joint'))
  counts = generate_agents(out, agents=16, days=3, seed=7, joint=True)
  events: Dict[str, list] = {'otel': [], 'cloudtrail': []}
  dead, cloud = [], []  # cloud: (raw record, event)
  spans: Dict[str, List[Tuple[int, int, str]]] = {}  # agent id -> its tool spans (start ns, end ns, tool)
  for path in sorted(glob.glob(os.path.join(out, '*', '*.jsonl'))):
    with open(path, 'rb') as f:
      data = f.read()
    for record in split_records(data, path):
      for fmt, item in PARSER.parse_items(record):
        if item.event is not None:
          events[fmt].append(item.event)
          if fmt == 'cloudtrail':
            cloud.append((record.obj, item.event))
        elif not item.skipped:
          dead.append(item.reason)
      for block in (record.obj or {}).get('resourceSpans', []):
        for s in (s for scope in block['scopeSpans'] for s in scope['spans'] if s['name'].startswith('execute_tool')):
          attrs = {a['key']: a['value'].get('stringValue') for a in s['attributes']}
          spans.setdefault(attrs['gen_ai.agent.id'], []).append(
              (int(s['startTimeUnixNano']), int(s['endTimeUnixNano']), attrs['gen_ai.tool.name']))
  with open(os.path.join(out, 'inventory.csv'), newline='') as f:
    runs_as = {row['identity']: row['runs_as'].split(';') for row in csv.DictReader(f)}
  with open(os.path.join(out, 'labels.json')) as f:
    labels = json.load(f)
  with open(os.path.join(out, 'benign.json')) as f:
    benign = json.load(f)
  for v in spans.values():
    v.sort()
  return {'out': out, 'counts': counts, 'events': events, 'dead': dead, 'cloud': cloud, 'spans': spans,
          'runs_as': runs_as, 'labels': labels, 'benign': benign}


def _in_flight(spans: List[Tuple[int, int, str]], t: float, margin: float = 0.0) -> List[Tuple[int, int, str]]:
  i = bisect.bisect_right(spans, (int((t + margin) * 1e9), 2**63, ''))
  return [s for s in spans[max(0, i - 200):i] if s[0] - margin * 1e9 <= t * 1e9 <= s[1] + margin * 1e9]


def _label(sample, scenario: str) -> dict:
  (label,) = [l for l in sample['labels'] if l['scenario'] == scenario]
  return label


def _within(event, label: dict) -> bool:
  from postauth.pipeline.evaluate import parse_time
  return parse_time(label['start']) <= event.event_time <= parse_time(label['end'])


def test_every_record_parses_and_names_an_agent_role(sample):
  assert sample['dead'] == []
  cloud = sample['cloud']
  assert sample['counts']['history_cloud_events'] + sample['counts']['live_cloud_events'] == len(cloud) > 1000
  roles = {r for v in sample['runs_as'].values() for r in v}
  assert all(e.identity in roles and e.identity.startswith('arn:aws:iam::111122223333:role/agent-') for _, e in cloud)
  assert sum(1 for v in sample['runs_as'].values() if v == ['arn:aws:iam::111122223333:role/agent-ops-sre-shared']) >= 2
  assert all(e.resource for _, e in cloud if e.action not in ('ListBuckets', 'ListSecrets'))
  assert {(e.service, e.action) for _, e in cloud} >= {
      ('athena', 'StartQueryExecution'), ('s3', 'GetObject'), ('s3', 'PutObject'), ('ses', 'SendEmail'),
      ('dynamodb', 'GetItem'), ('monitoring', 'GetMetricData'), ('eks', 'DescribeCluster')}


def test_records_of_tool_calls_lie_inside_a_span_of_an_agent_running_as_them(sample):
  by_role: Dict[str, List[str]] = {}
  for agent, roles in sample['runs_as'].items():
    for role in roles:
      by_role.setdefault(role, []).append(agent)
  durations = [(e - s) / 1e9 for v in sample['spans'].values() for s, e, _ in v]
  assert 1.0 <= min(durations) and max(durations) <= 8.0
  fleet = [(raw, e) for raw, e in sample['cloud'] if e.source_ip.startswith('10.')]
  assert len(fleet) > 1000 and all(e.user_agent.startswith('Boto3/1.34.0 ') for _, e in fleet)
  for raw, e in fleet:
    assert raw['eventTime'].endswith('Z') and e.event_time == int(e.event_time)
    owners = [a for a in by_role[e.identity] if _in_flight(sample['spans'].get(a, []), e.event_time)]
    assert owners, (e.identity, raw['eventTime'], e.action)


def test_strong_keys_name_the_agent_for_some_and_nothing_for_others(sample):
  claimed: Dict[str, set] = {'source_identity': set(), 'session_name': set(), 'user_agent': set()}
  agents, roles_used = set(sample['runs_as']), set()
  for raw, e in sample['cloud']:
    if not e.source_ip.startswith('10.'):
      continue
    roles_used.add(e.identity)
    session = raw['userIdentity']['arn'].rsplit('/', 1)[1]
    claims = {'source_identity': raw['userIdentity']['sessionContext'].get('sourceIdentity'),
              'session_name': session if session in agents else None,
              'user_agent': e.user_agent.rsplit(' agent/', 1)[1] if ' agent/' in e.user_agent else None}
    named = {k: v for k, v in claims.items() if v}
    assert len(named) <= 1, named  # one key per agent
    for key, agent in named.items():
      assert e.identity in sample['runs_as'][agent]
      claimed[key].add(agent)
  assert all(claimed.values()), claimed
  unkeyed = {a for a, roles in sample['runs_as'].items() if set(roles) & roles_used} - set().union(*claimed.values())
  assert unkeyed  # agents whose records only time can join


def test_credentials_used_outside_while_no_tool_call_is_in_flight(sample):
  label = _label(sample, 'agent_credential_used_outside')
  assert label['principal'] in sample['runs_as'][label['identity']]
  outside = [(raw, e) for raw, e in sample['cloud'] if not e.source_ip.startswith('10.')]
  assert 5 <= len(outside) and {e.identity for _, e in outside} == {label['principal']}
  assert all(e.source_ip.startswith('203.0.113.') and e.user_agent.startswith('aws-cli/2.15.0 ') and _within(e, label)
             and 'sourceIdentity' not in raw['userIdentity']['sessionContext'] for raw, e in outside)
  assert {e.action for _, e in outside} == {'ListBuckets', 'ListSecrets', 'GetObject'}
  every_span = sorted(s for v in sample['spans'].values() for s in v)
  assert not [e for _, e in outside if _in_flight(every_span, e.event_time, margin=1.0)]


def test_an_injected_tool_reads_secrets_and_a_tool_exports_another_teams_data(sample):
  secrets = [e for _, e in sample['cloud'] if e.category == 'secret_access']
  label = _label(sample, 'agent_injected_tool_reads_secrets')
  assert len(secrets) >= 10 and all(e.identity == label['principal'] and _within(e, label) for e in secrets)
  live_day = secrets[0].event_time // 86400
  history_tools = {t for s, _, t in sample['spans'][label['identity']] if s // (86400 * 10**9) < live_day}
  assert HISTORY_TOOL in history_tools  # a tool it used before, with no cloud call then
  label = _label(sample, 'agent_tool_exports_other_team_data')
  team = label['identity'].split('-')[2]
  drops = [e for _, e in sample['cloud'] if e.resource.startswith('arn:aws:s3:::dropbox-')]
  assert len(drops) >= 8 and all(e.action == 'PutObject' and e.identity == label['principal'] and _within(e, label)
                                 for e in drops)
  foreign = [e for _, e in sample['cloud'] if e.identity == label['principal'] and _within(e, label)
             and e.action == 'GetObject' and f'-{team}/' not in e.resource]
  assert foreign and all(e.resource.startswith(('arn:aws:s3:::data-', 'arn:aws:s3:::warehouse-')) for e in foreign)


def test_labels_and_benign_changes(sample):
  scenarios = {l['scenario'] for l in sample['labels']}
  assert scenarios == JOINT_ATTACKS | {
      'agent_mass_mail_new_domains', 'agent_reads_new_path_posts_external', 'agent_queries_other_teams_and_exports',
      'agent_tries_privileged_tools', 'agent_identity_forged_by_other_service'}
  for l in sample['labels']:
    assert ('principal' in l) == (l['scenario'] != 'agent_identity_forged_by_other_service')  # its calls: not the agent's
    if 'principal' in l:
      assert l['principal'] in sample['runs_as'][l['identity']] and l['start'] < l['end']
  kinds = {c['kind'] for c in sample['benign']}
  assert {'new_tool', 'tool_new_own_table', 'busier_day'} <= kinds
  assert all(c['principal'] in sample['runs_as'][c['identity']] for c in sample['benign'])
  live_day = max(s for v in sample['spans'].values() for s, _, _ in v) // (86400 * 10**9)
  new = {t for ts in NEW_TOOLS.values() for t in ts}
  assert set(sample['counts']['history_changes']) == {'new_tool', 'tool_new_own_table'}  # on history days too
  assert any(t in new for v in sample['spans'].values() for s, _, t in v if s // (86400 * 10**9) < live_day)


def test_joint_outcomes_match_the_agent_or_its_role():
  labels = [{'identity': 'agent-a', 'principal': 'arn:aws:iam::1:role/agent-a', 'scenario': 'x',
             'start': '2026-11-05T10:00:00Z', 'end': '2026-11-05T10:10:00Z'},
            {'identity': 'agent-b', 'principal': 'arn:aws:iam::1:role/agent-b', 'scenario': 'y',
             'start': '2026-11-05T12:00:00Z', 'end': '2026-11-05T12:10:00Z'}]

  def finding(who, start, severity='high', **more):
    return dict({'finding_id': f'{who}{start}', 'identity': who, 'severity': severity, 'score': 1.0,
                 'window_start': f'2026-11-05T{start}:00:00Z', 'window_end': f'2026-11-05T{start}:59:59Z'}, **more)

  found = [finding('arn:aws:iam::1:role/agent-a', '10'), finding('agent-b', '12', 'low'),
           finding('agent-b', '15', pages=2), finding('arn:aws:iam::1:role/agent-b', '12', 'medium')]
  out = joint_outcomes(found, labels, identity_days=500)
  assert [(a['scenario'], a['paged'], a['paged_on']) for a in out['attacks']] == [
      ('x', True, ['arn:aws:iam::1:role/agent-a']), ('y', True, ['arn:aws:iam::1:role/agent-b'])]
  assert (out['pages'], out['findings_paged'], out['pages_per_1000_identity_days']) == (2, 1, 4.0)


def test_same_seed_same_bytes_and_the_span_only_fleet_unchanged(sample, tmp_path):
  again = str(tmp_path / 'again')
  generate_agents(again, agents=16, days=3, seed=7, joint=True)
  assert _digest(again) == _digest(sample['out'])
  with open(os.path.join(again, 'inventory.csv'), 'rb') as a, open(os.path.join(sample['out'], 'inventory.csv'), 'rb') as b:
    assert a.read() == b.read()
  plain = str(tmp_path / 'plain')
  generate_agents(plain, agents=8, days=2, seed=3)
  assert not glob.glob(os.path.join(plain, '*', 'cloudtrail-agents-*'))
  assert _digest(plain) == SPAN_ONLY_DIGEST
  with open(os.path.join(plain, 'inventory.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert rows[0]['runs_as'] == '' and all(r['runs_as'] == '' for r in rows)
