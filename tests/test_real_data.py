"""Every real sample in ../shared/data: a per-file report, labels cross-checked, categories spot-checked.

The report is printed (pytest -s) and written to the test's tmp dir; `bench/parse_report.py`
writes the same markdown for quoting.
"""
from __future__ import annotations

import csv
import collections
import os

import pytest

from conftest import shared_data
from postauth.pipeline.parse_report import report, sample_files, to_markdown
from postauth.domain.event import Event
from postauth.transforms.formats.base import parse_time

KNOWN_FORMATS = {'cloudtrail', 'gcp_audit', 'k8s_audit', 'ocsf', 'canonical'}


@pytest.fixture(scope='module')
def real():
  root = shared_data()
  rows = report(sample_files(root))
  return root, {os.path.relpath(r['file'], root): r for r in rows}


def test_every_real_file_is_parsed_or_explained(real, tmp_path):
  root, rows = real
  md = to_markdown(list(rows.values()), root)
  (tmp_path / 'parse_report.md').write_text(md)
  print('\n' + md)
  assert len(rows) >= 50
  for name, r in rows.items():
    assert r['records'] == r['parsed'] + r['dead_lettered'] + r['skipped'] > 0, name
    assert set(r['formats']) <= KNOWN_FORMATS and sum(r['formats'].values()) == r['parsed']
    assert sum(r['categories'].values()) == r['parsed']
    assert not [d for d in r['reasons'] if 'malformed record' in d], (name, r['reasons'])
  otrf = rows['otrf-aws/ec2_proxy_s3_exfiltration_2020-09-14011940.json']
  assert (otrf['records'], otrf['parsed'], otrf['formats']) == (103, 103, {'cloudtrail': 103})
  falco = [r for n, r in rows.items() if n.startswith('falco-k8s-audit/')]
  assert sum(r['records'] for r in falco) == 52 and sum(r['parsed'] for r in falco) == 49
  # exec and attach traces hold only their ResponseStarted stage: skipped, not dead letters
  assert sum(r['skipped'] for r in falco) == 2
  assert collections.Counter(d for r in falco for d in r['reasons']) == {'unknown format': 1}
  ct = rows['panther-rule-tests/aws-cloudtrail.jsonl']
  assert ct['parsed'] >= 0.9 * ct['records'] and ct['formats'] == {'cloudtrail': ct['parsed']}
  assert rows['panther-rule-tests/gcp-auditlog.jsonl']['parsed'] >= 110
  assert rows['panther-rule-tests/amazon-eks-audit.jsonl']['formats'].get('k8s_audit', 0) >= 10
  # Azure activity/audit logs are not a format postauth reads: dead-lettered, never mis-parsed.
  for name in ('panther-rule-tests/azure-audit.jsonl', 'panther-rule-tests/azure-monitoractivity.jsonl'):
    assert rows[name]['parsed'] == 0 and set(rows[name]['reasons']) == {'unknown format'}


def _events(rows, prefix):
  return [e for n, r in rows.items() if n.startswith(prefix) for e in r['events']]


def test_labels_match_parsed_events(real):
  root, rows = real
  # traces reuse audit ids (one was edited into another): match on file and id
  falco = {(os.path.basename(n), e.event_id): e for n, r in rows.items() if n.startswith('falco-k8s-audit/')
           for e in r['events']}
  with open(os.path.join(root, 'falco-k8s-audit', 'labels.csv')) as f:
    labels = list(csv.DictReader(f))
  missing = []
  for row in labels:
    e = falco.get((row['trace_file'], row['auditID']))
    if e is None:
      missing.append(row['trace_file'])
      continue
    sub = f'/{row["subresource"]}' if row['subresource'] else ''
    assert (e.identity, e.action) == (row['user'], f'{row["verb"]}:{row["resource"]}{sub}'), row
    assert e.event_time == pytest.approx(parse_time(row['timestamp']), abs=1.0)
  # ResponseStarted only (skipped), and a junk file with no audit id ({"kind": 0})
  assert sorted(missing) == ['attach_pod.json', 'exec_pod.json', 'fal_01_003.json']
  otrf = {e.event_id: e for e in _events(rows, 'otrf-aws/')}
  with open(os.path.join(root, 'otrf-aws', 'labels.csv')) as f:
    labels = list(csv.DictReader(f))
  assert len(labels) == len(otrf) == 103
  for row in labels:
    e = otrf[row['eventID']]
    assert (e.principal_raw, e.identity_type, e.action) == (row['identity'], row['identity_type'], row['eventName'])
    assert e.service + '.amazonaws.com' == row['eventSource'] and e.event_time == parse_time(row['eventTime'])
    if row['label'] == '1':  # the stolen instance-profile session: its role, S3 reads
      assert e.identity.startswith('arn:aws:iam::123456789123:role/MordorNginxStack-BankingWAFRole')
      assert e.category in ('enumerate', 'data_read') and e.read_only


def test_known_records_land_in_the_right_category(real):
  _, rows = real
  falco = {os.path.basename(n): r['events'] for n, r in rows.items() if n.startswith('falco-k8s-audit/')}
  [binding] = falco['attach_cluster_admin_role.json']  # role binding to cluster-admin
  assert (binding.action, binding.category) == ('create:clusterrolebindings', 'privilege_change')
  assert falco['create_cluster_role_wildcard_verbs.json'][0].category == 'privilege_change'
  assert falco['create_service_account_token_secret.json'][0].category == 'credential_create'
  assert falco['create_nginx_pod_privileged.json'][0].category == 'compute_launch'
  assert {e.category for e in falco['create_configmap_sensitive_values.json']} == {'config_change'}
  by_action = collections.defaultdict(set)
  for e in _events(rows, 'panther-rule-tests/'):
    by_action[(e.provider, e.action)].add(e.category)
  expected = {
      ('aws', 'GetSecretValue'): 'secret_access', ('aws', 'GetParameters'): 'secret_access',
      ('aws', 'StopLogging'): 'defense_evasion', ('aws', 'DeleteTrail'): 'defense_evasion',
      ('aws', 'PutEventSelectors'): 'defense_evasion', ('aws', 'DeleteFlowLogs'): 'defense_evasion',
      ('aws', 'ModifySnapshotAttribute'): 'resource_sharing', ('aws', 'PutBucketPolicy'): 'resource_sharing',
      ('aws', 'SendCommand'): 'remote_execution', ('aws', 'SendSSHPublicKey'): 'remote_execution',
      ('aws', 'CreateAccessKey'): 'credential_create',
      ('gcp', 'SignJwt'): 'credential_create', ('gcp', 'google.iam.admin.v1.CreateServiceAccountKey'): 'credential_create',
      ('gcp', 'SetIamPolicy'): 'privilege_change', ('gcp', 'google.logging.v2.ConfigServiceV2.DeleteSink'): 'defense_evasion',
      ('gcp', 'storage.objects.get'): 'data_read', ('gcp', 'v1.compute.instances.insert'): 'compute_launch',
      ('k8s', 'create:serviceaccounts/token'): 'credential_create', ('k8s', 'watch:endpointslices'): 'enumerate',
  }
  for key, category in expected.items():
    assert by_action.get(key) == {category}, (key, by_action.get(key))


def test_postauth_parse_job_agrees_with_the_report(real, tmp_path):
  from postauth.pipeline.parse_job import run_parse
  root, rows = real
  falco = [r for n, r in rows.items() if n.startswith('falco-k8s-audit/')]
  out = run_parse([f'--events={root}/falco-k8s-audit/*.json', f'--out={tmp_path}', '--runner=FnApiRunner'])
  s = out['summary']
  assert (s['read'], s['parsed'], s['dead_lettered']) == (
      sum(r['records'] for r in falco), sum(r['parsed'] for r in falco), sum(r['dead_lettered'] for r in falco))
  categories = collections.Counter(c for r in falco for c, n in r['categories'].items() for _ in range(n))
  assert s['by_category'] == dict(sorted(categories.items())) and s['by_format'] == {'k8s_audit': 49}
  assert all(isinstance(e, Event) for r in falco for e in r['events'])
