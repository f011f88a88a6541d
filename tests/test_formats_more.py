"""GCP audit, Kubernetes audit and OCSF: canonical events, categories and dead letters.

Hand-written fixtures (tests/fixtures/*.jsonl) pin the field mapping; the real samples in
../shared/data prove the parsers hold on records written by other people.
"""
from __future__ import annotations

import collections
import glob
import json
import os

import pytest

from postauth.transforms import formats
from postauth.domain.event import Event
from postauth.transforms.formats.base import ParseError, parse_time
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import RawRecord, split_records
from postauth.domain.taxonomy import Taxonomy

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
PARSER = RecordParser()


def shared(*parts: str) -> str:
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f'real sample {path} is absent (../shared/data is provided beside the project)')
  return path


def parse_file(path):
  with open(path, 'rb') as f:
    return [PARSER.parse(r) for r in split_records(f.read(), path)]


def split(results):
  return ([r for r in results if isinstance(r, Event)], [r for r in results if isinstance(r, str)])


def parse_log(log, ref):
  return PARSER.parse(RawRecord(json.dumps(log).encode(), log, '', ref))


def panther_logs(name):
  """(test_name, log) per line of a Panther rule-test file."""
  with open(shared('panther-rule-tests', name)) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [(f'{r["rule_id"]}/{r["test_name"]}', r['log']) for r in rows]


# --- hand-written fixtures ------------------------------------------------


def test_gcp_audit_fixture():
  events, dead = split(parse_file(os.path.join(FIXTURES, 'gcp_audit.jsonl')))
  assert len(events) == 5 and len(dead) == 1
  key, secret, iam, gcs, gke = events
  assert all(e.provider == 'gcp' for e in events)
  assert key.identity == 'deployer@acme-prod.iam.gserviceaccount.com'  # emails stay as logged
  assert key.identity_type == 'service_account'
  assert (key.service, key.action) == ('iam', 'google.iam.admin.v1.CreateServiceAccountKey')
  assert key.category == 'credential_create' and key.success and not key.read_only
  assert key.session_id.endswith('/keys/0123456789abcdef')
  assert key.event_time == pytest.approx(1709633730.123456)  # nanoseconds cut to microseconds
  assert (key.source_ip, key.user_agent, key.event_id) == (
      '203.0.113.10', 'google-cloud-sdk gcloud/467.0.0', 'gcp-key-1')
  # no timestamp: receiveTimestamp; status code 7 is a failure
  assert secret.event_time == pytest.approx(1709633762.5)
  assert secret.category == 'secret_access' and secret.read_only
  assert not secret.success and secret.error_code == '7'
  assert iam.identity_type == 'user' and iam.category == 'privilege_change'
  assert iam.resource == 'projects/acme-prod' and iam.success
  assert (gcs.category, gcs.region, gcs.read_only, gcs.success) == ('data_read', 'us-east1', True, True)
  assert gcs.resource.endswith('/objects/customers.csv')
  # GKE through Cloud Logging: a Kubernetes service account, typed as in k8s audit
  assert gke.identity == 'system:serviceaccount:ci:runner' and gke.identity_type == 'service_account'
  assert (gke.service, gke.category, gke.region) == ('k8s.io', 'remote_execution', 'us-central1-a')
  assert dead == ['gcp_audit: missing protoPayload.authenticationInfo.principalEmail']


def test_k8s_audit_fixture():
  events, dead = split(parse_file(os.path.join(FIXTURES, 'k8s_audit.jsonl')))
  assert len(events) == 5 and len(dead) == 1
  secret, exec_, anon, crb, token = events
  assert all(e.provider == 'k8s' for e in events)
  assert secret.identity == 'system:serviceaccount:ci:deployer'
  assert secret.identity_type == 'service_account'
  assert (secret.service, secret.action, secret.category) == ('core', 'get:secrets', 'secret_access')
  assert secret.resource == 'prod/secrets/db-password' and secret.read_only
  assert secret.session_id.startswith('JTI=')
  assert secret.event_time == pytest.approx(1709636400.654321)  # stageTimestamp
  assert (secret.source_ip, secret.event_id) == ('10.0.3.7', 'k8s-secret-1')
  assert exec_.action == 'create:pods/exec' and exec_.category == 'remote_execution'
  assert exec_.resource == 'prod/pods/web-7d4b9/exec'
  assert exec_.success and not exec_.read_only  # 101 Switching Protocols is not an error
  assert exec_.identity_type == 'user' and exec_.session_id == 'ASIAEXAMPLEKEY0001'
  assert anon.identity_type == 'anonymous' and anon.category == 'enumerate'
  assert not anon.success and anon.error_code == '403'
  assert crb.service == 'rbac.authorization.k8s.io' and crb.category == 'privilege_change'
  assert crb.resource == 'clusterrolebindings/ops-admin'
  assert token.identity_type == 'node' and token.category == 'credential_create'
  assert token.event_time == pytest.approx(1709636400.6)  # no stageTimestamp: requestReceivedTimestamp
  # skipped and counted, not dead-lettered (parse() names the reason either way)
  assert dead == ['k8s_audit: stage RequestReceived is not the final stage (ResponseComplete or Panic)']


def test_ocsf_fixture():
  events, dead = split(parse_file(os.path.join(FIXTURES, 'ocsf.jsonl')))
  assert len(events) == 3 and len(dead) == 2
  secret, token, attach = events
  # Security Lake: an assumed-role session becomes its role, as CloudTrail's parser does
  assert secret.identity == 'arn:aws:iam::123456789012:role/ci-build'
  assert secret.principal_raw == 'arn:aws:sts::123456789012:assumed-role/ci-build/build-42'
  assert (secret.provider, secret.service, secret.action) == ('aws', 'secretsmanager', 'GetSecretValue')
  assert secret.category == 'secret_access' and secret.read_only and secret.success
  assert secret.event_time == pytest.approx(1709636400.123)  # epoch milliseconds
  assert (secret.region, secret.source_ip, secret.session_id) == ('us-east-1', '203.0.113.50', 'ASIAEXAMPLEKEY0002')
  assert secret.resource.startswith('arn:aws:secretsmanager:')
  # a vendor without a table: verb prefixes on api.operation
  assert (token.provider, token.identity, token.identity_type) == ('examplesaas', 'svc-integration', 'System')
  assert token.category == 'credential_create'
  assert not token.success and token.error_code == '403'
  # Account Change without api: activity_name, actor.user.name when there is no uid
  assert (attach.identity, attach.action, attach.category) == ('automation-bot', 'AttachPolicy', 'privilege_change')
  assert attach.success and attach.identity_type == ''
  assert any(d.startswith('ocsf: absurd time') for d in dead)
  assert 'unknown format' in dead  # class 4001 is not sniffed


def test_each_fixture_is_sniffed_by_its_own_format_only():
  expected = {'gcp_audit.jsonl': 'gcp_audit', 'k8s_audit.jsonl': 'k8s_audit', 'ocsf.jsonl': 'ocsf',
              'cloudtrail.jsonl': 'cloudtrail', 'cloudtrail_delivery.json': 'cloudtrail'}
  for name, fmt in expected.items():
    with open(os.path.join(FIXTURES, name), 'rb') as f:
      objs = [r.obj for r in split_records(f.read(), name) if r.obj is not None]
    for obj in objs:
      sniffed = [f.name for f in formats.FORMATS if f.sniff(obj)]
      assert sniffed in ([fmt], []), (name, sniffed)
  assert [f.name for f in formats.FORMATS] == ['cloudtrail', 'gcp_audit', 'k8s_audit', 'ocsf', 'otel', 'canonical']
  ocsf = formats.BY_NAME['ocsf']
  assert not ocsf.sniff({'class_uid': 'abc'}) and ocsf.sniff({'class_uid': '3001'})
  k8s = formats.BY_NAME['k8s_audit']
  assert not k8s.sniff({'kind': 'Event', 'apiVersion': 'v1', 'involvedObject': {}})  # a core Event


def test_k8s_non_resource_request_and_forced_format():
  log = {'kind': 'Event', 'apiVersion': 'audit.k8s.io/v1', 'stage': 'ResponseComplete', 'verb': 'get',
         'requestURI': '/version?timeout=32s', 'user': {'username': 'system:kube-controller-manager'},
         'requestReceivedTimestamp': '2024-03-05T11:00:00Z', 'responseStatus': {'code': 200}}
  e = parse_log(log, 'inline#0')
  assert (e.service, e.action, e.resource, e.category) == ('nonresource', 'get:/version', '/version', 'enumerate')
  assert e.identity_type == 'system' and e.event_id == 'inline#0'
  forced = RecordParser('gcp_audit').parse(RawRecord(b'{}', log, '', 'inline#1'))
  assert forced == 'gcp_audit: missing protoPayload'


def test_taxonomy_tables_globs_and_fallbacks():
  t = Taxonomy()
  assert t.categorize('gcp', 'iamcredentials', 'SignBlob') == 'credential_create'
  assert t.categorize('gcp', 'iamcredentials', 'GenerateAccessToken') == 'credential_create'
  assert t.categorize('gcp', 'iam', 'google.iam.admin.v1.SetIAMPolicy') == 'privilege_change'  # case-blind
  assert t.categorize('gcp', 'compute', 'v1.compute.instances.insert') == 'compute_launch'
  assert t.categorize('gcp', 'logging', 'google.logging.v2.ConfigServiceV2.DeleteSink') == 'defense_evasion'
  assert t.categorize('gcp', 'pubsub', 'google.pubsub.v1.Publisher.Publish') == 'message_publish'
  assert t.categorize('gcp', 'storage', 'storage.buckets.list') == 'enumerate'  # prefix on the last segment
  assert t.categorize('k8s', 'apps', 'patch:deployments') == 'config_change'
  assert t.categorize('k8s', 'core', 'deletecollection:pods') == 'delete'
  assert t.categorize('k8s', 'core', 'create:pods/portforward') == 'remote_execution'
  assert t.categorize('k8s', 'certificates.k8s.io', 'create:certificatesigningrequests') == 'credential_create'
  assert t.categorize('ocsf', '', 'DescribeInstances') == 'enumerate'
  assert t.categorize('aws', 'iam', 'ListRoles') == 'enumerate'  # aws table unchanged


def test_time_fractions_of_any_length():
  assert parse_time('2024-03-05T10:15:30.123456789Z') == pytest.approx(1709633730.123456)
  assert parse_time('2022-11-29 00:09:04.38') == pytest.approx(1669680544.38)
  assert parse_time('2024-03-05T10:15:30Z') == 1709633730.0


# --- real samples in ../shared/data -----------------------------------------


def test_falco_k8s_audit_traces():
  paths = sorted(glob.glob(os.path.join(shared('falco-k8s-audit'), '*.json')))
  by_file = {os.path.basename(p): parse_file(p) for p in paths}
  results = [r for rs in by_file.values() for r in rs]
  events, dead = split(results)
  assert len(events) >= 0.8 * len(results), collections.Counter(dead)
  assert by_file['fal_01_003.json'] == ['unknown format']  # junk
  [crb] = by_file['attach_cluster_admin_role.json']
  assert (crb.identity, crb.category) == ('minikube-user', 'privilege_change')
  [pod] = by_file['create_nginx_pod_privileged.json']
  assert pod.identity == 'system:serviceaccount:kube-system:replicaset-controller'
  assert (pod.identity_type, pod.category) == ('service_account', 'compute_launch')
  assert by_file['anonymous_creates_namespace_foo.json'][0].identity_type == 'anonymous'
  assert by_file['create_nginx_pod_unsensitive_mount.json'][0].identity_type == 'node'
  assert by_file['delete_secret.json'][0].category == 'delete'
  assert by_file['create_secret.json'][0].category == 'credential_create'
  # exec and attach are long-running: the traces hold only their ResponseStarted stage, which
  # is skipped (the ResponseComplete of the same auditID is); as complete they are exec.
  for name in ('exec_pod.json', 'attach_pod.json'):
    assert by_file[name] == ['k8s_audit: stage ResponseStarted is not the final stage (ResponseComplete or Panic)']
    with open(os.path.join(SHARED_DATA, 'falco-k8s-audit', name)) as f:
      log = dict(json.load(f), stage='ResponseComplete')
    assert parse_log(log, name).category == 'remote_execution'


def _complete_k8s(log):
  user = log.get('user')
  return (log.get('kind') == 'Event' and isinstance(user, dict) and user.get('username') and log.get('verb')
          and log.get('stage') in (None, 'ResponseComplete')
          and any(log.get(k) for k in ('stageTimestamp', 'requestReceivedTimestamp', 'timestamp')))


def _complete_gcp(log):
  payload = log.get('protoPayload')
  return (isinstance(payload, dict) and payload.get('methodName')
          and (payload.get('authenticationInfo') or {}).get('principalEmail')
          and (log.get('timestamp') or log.get('receiveTimestamp')))


def _check_panther_set(name, complete):
  """Panther's unit-test logs are hand-made and often partial (no time, no user, another log
  type under the same rule): every record must get an Event or a named reason, and nearly every
  record that carries what an event needs must parse."""
  logs = panther_logs(name)
  results = [(log, parse_log(log, f'{name}#{i}')) for i, (_, log) in enumerate(logs)]
  _, dead = split([r for _, r in results])
  assert not [d for d in dead if 'malformed record' in d], 'a parser crashed instead of explaining'
  whole = [r for log, r in results if complete(log)]
  parsed = [r for r in whole if isinstance(r, Event)]
  assert whole and len(parsed) >= 0.9 * len(whole), collections.Counter(r for r in whole if isinstance(r, str))
  return [r for _, r in results if isinstance(r, Event)], dead


def test_panther_eks_audit():
  events, dead = _check_panther_set('amazon-eks-audit.jsonl', _complete_k8s)
  k8s = [e for e in events if e.provider == 'k8s']
  assert len(k8s) >= 10
  tokens = [e for e in k8s if e.action == 'create:serviceaccounts/token']
  assert tokens and all(e.category == 'credential_create' and e.identity_type == 'node' for e in tokens)
  watches = [e for e in k8s if e.action == 'watch:endpointslices']
  assert {e.identity_type for e in watches} == {'service_account'}
  assert any(not e.success and e.error_code == '403' for e in watches)
  assert any(e.service == 'nonresource' and e.identity_type == 'anonymous' for e in k8s)
  assert any('stage ResponseStarted is not the final stage' in d for d in dead)  # skipped (test_dead_letter_secrets)


def test_panther_gcp_auditlog():
  events, _ = _check_panther_set('gcp-auditlog.jsonl', _complete_gcp)
  assert len(events) >= 110  # of 168; the rest lack a principal, a time or a method
  by_action = collections.defaultdict(set)
  for e in events:
    by_action[(e.service, e.action)].add(e.category)
  assert by_action[('cloudresourcemanager', 'SetIamPolicy')] == {'privilege_change'}
  assert by_action[('iam', 'google.iam.admin.v1.CreateServiceAccountKey')] == {'credential_create'}
  assert by_action[('iamcredentials', 'SignJwt')] == {'credential_create'}
  assert by_action[('logging', 'google.logging.v2.ConfigServiceV2.DeleteSink')] == {'defense_evasion'}
  assert by_action[('compute', 'v1.compute.instances.insert')] == {'compute_launch'}
  assert by_action[('storage', 'storage.objects.get')] == {'data_read'}
  sa = [e for e in events if e.identity.endswith('.gserviceaccount.com')]
  assert sa and all(e.identity_type == 'service_account' for e in sa)
  reads = [e for e in events if e.action == 'storage.objects.get']
  assert all(e.read_only for e in reads)
  assert any(not e.success and e.error_code for e in events)
