"""Dead letters never carry secrets; Kubernetes' non-final audit stages are skipped, not dead-lettered.

Audit logs hold secrets in their bodies: a Kubernetes event at RequestResponse level holds the
Secret it wrote or read and the token a TokenRequest returned, CloudTrail the session token STS
handed out, GCP the private key of a new service-account key. Every dead letter (parse, late,
sink) goes through ``transforms.parse.dead_letter``: these are checked there and on the real job.
"""
from __future__ import annotations

import collections
import json

import orjson
import pytest

from postauth.domain import evidence
from postauth.domain.event import Event
from postauth.transforms.parse import RecordParser, dead_letter
from postauth.transforms.records import RawRecord
from test_formats_more import _complete_gcp, panther_logs
from test_parse_job import parse_cli, read_dead

SECRET = 'c3VwZXItc2VjcmV0LXBhc3N3b3Jk'  # base64 of a password, as Secret data holds it
PLAIN = 'hunter2-plain-text'
TOKEN = 'eyJhbGciOiJSUzI1NiJ9.service-account-token.sig'
SESSION = 'IQoJb3JpZ2luX2VjEFAKESESSIONTOKEN'
SECRET_KEY = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEKEY'
PRIVATE_KEY = 'ewogICJ0eXBlIjogInNlcnZpY2VfYWNjb3VudCIsICJwcml2YXRlX2tleSI6ICItLS0tLUJFR0lOIi'
MARKERS = (SECRET, PLAIN, TOKEN, SESSION, SECRET_KEY, PRIVATE_KEY)
PARSER = RecordParser()

K8S = {'kind': 'Event', 'apiVersion': 'audit.k8s.io/v1', 'level': 'RequestResponse', 'auditID': 'a-1',
       'stage': 'ResponseComplete', 'verb': 'create', 'requestURI': '/api/v1/namespaces/prod/secrets',
       'user': {'username': 'system:serviceaccount:ci:deployer'}, 'sourceIPs': ['10.0.0.7'],
       'objectRef': {'resource': 'secrets', 'namespace': 'prod', 'name': 'db', 'apiVersion': 'v1'},
       'responseStatus': {'code': 201}, 'stageTimestamp': '2024-03-05T10:00:00.1Z'}


def _secret_object():
  applied = json.dumps({'apiVersion': 'v1', 'kind': 'Secret', 'metadata': {'name': 'db'},
                        'data': {'password': SECRET}})
  return {'kind': 'Secret', 'apiVersion': 'v1',
          'metadata': {'name': 'db', 'namespace': 'prod', 'labels': {'app': 'web'},
                       'annotations': {'kubectl.kubernetes.io/last-applied-configuration': applied}},
          'data': {'password': SECRET}, 'stringData': {'plain': PLAIN}, 'type': 'Opaque'}


def _k8s(**over):
  return {k: v for k, v in dict(K8S, **over).items() if v is not None}


def _ct(**over):
  rec = {'eventVersion': '1.08', 'eventTime': '2024-03-05T10:00:00Z', 'eventSource': 'sts.amazonaws.com',
         'eventName': 'AssumeRole', 'eventID': 'ct-1', 'awsRegion': 'us-east-1',
         'userIdentity': {'type': 'IAMUser', 'arn': 'arn:aws:iam::1:user/u', 'accessKeyId': 'AKIAEXAMPLE'},
         'requestParameters': {'roleArn': 'arn:aws:iam::1:role/r', 'roleSessionName': 's'},
         'responseElements': {'credentials': {'accessKeyId': 'ASIAEXAMPLE', 'sessionToken': SESSION,
                                              'expiration': 'Mar 5, 2024 11:00:00 AM'},
                              'assumedRoleUser': {'arn': 'arn:aws:sts::1:assumed-role/r/s'}}}
  rec.update(over)
  return {k: v for k, v in rec.items() if v is not None}


def _gcp_key(**over):
  payload = {'@type': 'type.googleapis.com/google.cloud.audit.AuditLog', 'serviceName': 'iam.googleapis.com',
             'methodName': 'google.iam.admin.v1.CreateServiceAccountKey',
             'authenticationInfo': {'principalEmail': 'ci@p.iam.gserviceaccount.com'},
             'resourceName': 'projects/-/serviceAccounts/123',
             'response': {'@type': 'type.googleapis.com/google.iam.admin.v1.ServiceAccountKey',
                          'name': 'projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys/k1',
                          'privateKeyData': PRIVATE_KEY, 'keyAlgorithm': 'KEY_ALG_RSA_2048'}}
  payload.update(over)
  return {'insertId': 'g-1', 'timestamp': '2024-03-05T10:00:00Z', 'protoPayload': payload}


def _dead(record, reason='test') -> dict:
  line = dead_letter(reason, 'logs.jsonl#3', record if isinstance(record, bytes) else orjson.dumps(record))
  for marker in MARKERS:
    assert marker not in line, (marker, line[:2000])
  return json.loads(line)


# --- Kubernetes: the final stage is the call; the others are skipped and counted -------------

@pytest.mark.parametrize('stage', ['RequestReceived', 'ResponseStarted'])
def test_non_final_kubernetes_stages_are_skipped_not_dead_lettered(stage):
  record = _k8s(stage=stage, requestObject=_secret_object())
  [(fmt, item)] = list(PARSER.parse_items(RawRecord(orjson.dumps(record), record, '', 'k#1')))
  assert fmt == 'k8s_audit' and item.event is None and item.skipped
  assert item.reason == f'k8s_audit: stage {stage} is not the final stage (ResponseComplete or Panic)'


def test_a_panic_is_the_final_stage_of_a_call_and_counts_as_a_failed_one():
  record = _k8s(stage='Panic', responseStatus={'code': 500})
  e = PARSER.parse(RawRecord(orjson.dumps(record), record, '', 'k#2'))
  assert isinstance(e, Event) and not e.success and e.error_code == '500'


def test_panther_eks_fixtures_every_usable_record_is_parsed_or_skipped():
  """Panther's EKS rule tests (Kubernetes and GKE records): every record that carries what an
  event needs (a principal, a verb or method, a time) is an event or skipped, none dead-lettered."""
  outcomes = collections.Counter()
  for i, (_, log) in enumerate(panther_logs('amazon-eks-audit.jsonl')):
    user = log.get('user')
    usable = _complete_gcp(log) or (
        log.get('kind') == 'Event' and isinstance(user, dict) and user.get('username') and log.get('verb')
        and any(log.get(k) for k in ('stageTimestamp', 'requestReceivedTimestamp', 'timestamp')))
    if not usable:
      continue
    for _, item in PARSER.parse_items(RawRecord(orjson.dumps(log), log, '', f'eks#{i}')):
      outcomes['parsed' if item.event else 'skipped' if item.skipped else 'dead_lettered'] += 1
  assert outcomes == {'parsed': 13, 'skipped': 3}, outcomes


def test_the_parse_job_counts_non_final_stages_as_skipped(tmp_path, capsys):
  src, out = tmp_path / 'in', str(tmp_path / 'out')
  src.mkdir()
  records = [_k8s(), _k8s(stage='RequestReceived', requestObject=_secret_object()),
             _k8s(stage='ResponseStarted', requestObject=_secret_object())]
  (src / 'audit.jsonl').write_bytes(b'\n'.join(orjson.dumps(r) for r in records))
  code, s = parse_cli(capsys, f'--events={src}/*', f'--out={out}')
  assert code == 0 and (s['read'], s['parsed'], s['dead_lettered'], s['skipped']) == (3, 1, 0, 2)
  assert s['skipped_by_reason'] == {
      'k8s_audit: stage RequestReceived is not the final stage (ResponseComplete or Panic)': 1,
      'k8s_audit: stage ResponseStarted is not the final stage (ResponseComplete or Panic)': 1}
  assert read_dead(out) == []


# --- redaction of every dead letter's payload ------------------------------------------------

def test_kubernetes_secret_bodies_are_redacted_keeping_their_shape():
  d = _dead(_k8s(stageTimestamp='yesterday', requestObject=_secret_object(), responseObject=_secret_object()))
  raw = json.loads(d['raw'])
  for body in (raw['requestObject'], raw['responseObject']):
    assert body['data'] == {'password': '[redacted]'} and body['stringData'] == {'plain': '[redacted]'}
    assert body['metadata']['annotations']['kubectl.kubernetes.io/last-applied-configuration'] == '[redacted]'
    assert body['metadata']['name'] == 'db' and body['metadata']['labels'] == {'app': 'web'}
  assert raw['objectRef'] == K8S['objectRef'] and raw['user'] == K8S['user']  # the rest is kept


def test_secret_patches_lists_and_token_requests_are_redacted():
  patch = _dead(_k8s(verb='patch', user=None, requestObject=[{'op': 'replace', 'path': '/data/password',
                                                              'value': SECRET}]))
  assert json.loads(patch['raw'])['requestObject'] == '[redacted]'
  merge = _dead(_k8s(verb='patch', user=None, requestObject={'data': {'password': SECRET}}))
  assert json.loads(merge['raw'])['requestObject'] == '[redacted]'
  listed = _dead(_k8s(verb='list', user=None, responseObject={
      'kind': 'SecretList', 'apiVersion': 'v1', 'items': [_secret_object(), _secret_object()]}))
  items = json.loads(listed['raw'])['responseObject']['items']
  assert [i['data'] for i in items] == [{'password': '[redacted]'}] * 2
  token = _dead(_k8s(user=None, objectRef={'resource': 'serviceaccounts', 'subresource': 'token',
                                           'namespace': 'ci', 'name': 'deployer'},
                     requestObject={'kind': 'TokenRequest', 'spec': {'audiences': ['api']}},
                     responseObject={'kind': 'TokenRequest', 'spec': {'audiences': ['api']},
                                     'status': {'token': TOKEN, 'expirationTimestamp': '2024-03-05T11:00:00Z'}}))
  status = json.loads(token['raw'])['responseObject']['status']
  assert status == {'token': '[redacted]', 'expirationTimestamp': '2024-03-05T11:00:00Z'}


def test_cloudtrail_credentials_are_redacted_keeping_the_key_id():
  d = _dead(_ct(eventTime=None))
  creds = json.loads(d['raw'])['responseElements']['credentials']
  assert creds == {'accessKeyId': 'ASIAEXAMPLE', 'sessionToken': '[redacted]',
                   'expiration': 'Mar 5, 2024 11:00:00 AM'}
  key = _dead(_ct(eventTime=None, eventSource='iam.amazonaws.com', eventName='CreateAccessKey',
                  responseElements={'accessKey': {'accessKeyId': 'AKIANEW', 'secretAccessKey': SECRET_KEY,
                                                  'status': 'Active'}}))
  assert json.loads(key['raw'])['responseElements']['accessKey']['secretAccessKey'] == '[redacted]'
  # Athena / CloudTrail Lake exports: lower-case keys, the elements as JSON text
  lake = {k.lower(): v for k, v in _ct(eventTime=None).items()}
  lake['responseelements'] = json.dumps(lake['responseelements'])
  elements = json.loads(json.loads(_dead(lake)['raw'])['responseelements'])
  assert elements['credentials']['sessionToken'] == '[redacted]'


def test_gcp_service_account_key_material_is_redacted():
  d = _dead(_gcp_key(authenticationInfo={}))
  response = json.loads(d['raw'])['protoPayload']['response']
  assert response['privateKeyData'] == '[redacted]' and response['name'].endswith('/keys/k1')
  gke = _dead({'insertId': 'g-2', 'protoPayload': {
      'serviceName': 'k8s.io', 'methodName': 'io.k8s.core.v1.secrets.create',
      'resourceName': 'core/v1/namespaces/prod/secrets/db',
      'request': dict(_secret_object(), **{'@type': 'core.k8s.io/v1.Secret'})}})
  assert json.loads(gke['raw'])['protoPayload']['request']['data'] == {'password': '[redacted]'}


def test_payloads_that_are_not_json_are_redacted_as_text():
  whole = orjson.dumps(_k8s(requestObject=_secret_object(), responseObject={
      'kind': 'TokenRequest', 'status': {'token': TOKEN}}, sourceIPs=None))
  cut = _dead(whole[:-40])  # a damaged line: invalid JSON, secrets before the cut
  # bodies cannot be read as a whole here: blanked whole; the rest stays
  assert '"requestObject":"[redacted]","responseObject":"[redacted]"' in cut['raw']
  assert '"auditID":"a-1"' in cut['raw'] and '"objectRef":{"resource":"secrets"' in cut['raw']
  gke = orjson.dumps({'protoPayload': {'request': _secret_object(), 'response': {'token': TOKEN}}})
  assert json.loads(_dead(gke[:-5])['raw'] + '}}}')['protoPayload']['request']['data'] == '[redacted]'
  assert _dead(whole[:whole.index(SECRET.encode()) + 5])['raw'].endswith('"[redacted]"')


def test_an_oversized_records_prefix_is_redacted_too():
  record = _k8s(requestObject=_secret_object(), responseObject={'padding': 'p' * (3 << 20)})
  d = _dead(orjson.dumps(record), reason='record of many bytes exceeds 1048576')
  assert d['raw_truncated'] and '"requestObject":"[redacted]"' in d['raw']


def test_payloads_without_secrets_are_kept_byte_for_byte():
  for raw in (b'not json at all', b'[1, 2, 3]', orjson.dumps(_k8s(user=None)) + b'  '):
    assert _dead(raw)['raw'].encode() == raw


def test_late_and_sink_dead_letters_are_redacted():
  """The late-event gate and the sinks write their payloads through the same function."""
  late = json.loads(dead_letter('late', 'pubsub:s#9', orjson.dumps(_ct()), stage='window'))
  assert SESSION not in late['raw'] and late['stage'] == 'window'
  sink = json.loads(dead_letter('publish refused', 'pubsub:t#f', json.dumps(
      {'finding_id': 'f', 'evidence': [{'resource': 'x', 'token': TOKEN}]}), stage='sink'))
  assert TOKEN not in sink['raw']


def test_no_secret_reaches_the_evidence_of_a_finding():
  """Evidence keeps fields of the canonical event (resource, user agent, ids...), never a body:
  events parsed from records full of secrets leave none in their evidence samples."""
  records = [_k8s(verb='get', requestObject=_secret_object(), responseObject=_secret_object()),
             _k8s(objectRef={'resource': 'serviceaccounts', 'subresource': 'token', 'namespace': 'ci',
                             'name': 'deployer'},
                  responseObject={'kind': 'TokenRequest', 'status': {'token': TOKEN}}),
             _ct(), _gcp_key()]
  store = {}
  for i, r in enumerate(records):
    e = PARSER.parse(RawRecord(orjson.dumps(r), r, '', f'f#{i}'))
    assert isinstance(e, Event), e
    evidence.add(store, e, e.action, e.source_ip)
  text = json.dumps(evidence.encode(store))
  assert len(evidence.samples(store)) == len(records)
  for marker in MARKERS:
    assert marker not in text


def test_redaction_never_raises_on_deep_nesting():
  deep = b'{"token":"' + TOKEN.encode() + b'","a":' + b'[' * 1000 + b']' * 1000 + b'}'
  assert _dead(deep)['raw'].startswith('{"token":"[redacted]"')
