"""High-impact actions page at first use (issue 22 item 4): the table is data, the conditions are
checked on what the parsers keep of real records.

Records are written as the providers write them (a CloudTrail delivery file, Cloud Audit Logs
LogEntries, audit.k8s.io Events), parsed by the project's parser into events, summed into a
``WindowAggregate`` and given to ``first_uses``, as the rules do at scoring.
"""
from __future__ import annotations

import json

import pytest

from postauth.domain import high_impact
from postauth.domain.event import Event
from postauth.domain.high_impact import SHARED_WITH, Table, first_uses, what_of
from postauth.domain.window import WindowAggregate
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import split_records

PARSER = RecordParser()
ACCOUNT = '111122223333'
OTHER = '999988887777'
NEVER = lambda action: False  # noqa: E731  (an identity whose history shows nothing)


# -- records as the providers write them -----------------------------------------------------

def _role(name, account=ACCOUNT, session='i-0abc'):
  return {'type': 'AssumedRole', 'principalId': f'AROAEXAMPLE:{session}',
          'arn': f'arn:aws:sts::{account}:assumed-role/{name}/{session}', 'accountId': account,
          'accessKeyId': 'ASIAEXAMPLE0001',
          'sessionContext': {'sessionIssuer': {'type': 'Role', 'principalId': 'AROAEXAMPLE',
                                               'arn': f'arn:aws:iam::{account}:role/{name}',
                                               'accountId': account, 'userName': name},
                             'attributes': {'creationDate': '2026-03-02T09:00:00Z',
                                            'mfaAuthenticated': 'false'}}}


def _user(name, account=ACCOUNT):
  return {'type': 'IAMUser', 'principalId': 'AIDAEXAMPLE', 'arn': f'arn:aws:iam::{account}:user/{name}',
          'accountId': account, 'accessKeyId': 'AKIAEXAMPLEKEY01', 'userName': name}


def ct(identity, source, name, params, n=0, error=None, resources=None):
  record = {'eventVersion': '1.09', 'userIdentity': identity, 'eventTime': f'2026-03-02T10:{n:02d}:00Z',
            'eventSource': f'{source}.amazonaws.com', 'eventName': name, 'awsRegion': 'eu-west-1',
            'sourceIPAddress': '10.1.2.3', 'userAgent': 'Boto3/1.34.0 md/Botocore#1.34.0',
            'requestParameters': params, 'responseElements': None, 'requestID': f'req-{n}',
            'eventID': f'ct-{name}-{n}', 'readOnly': False, 'eventType': 'AwsApiCall',
            'managementEvent': True, 'recipientAccountId': identity.get('accountId', ACCOUNT),
            'eventCategory': 'Management'}
  if error:
    record['errorCode'], record['errorMessage'] = error, 'denied'
  if resources:
    record['resources'] = resources
  return record


def parse(*records, name='delivery.json'):
  """Records through the project's parser, as one CloudTrail delivery file (or JSON lines)."""
  if records and 'eventSource' in records[0]:
    data = json.dumps({'Records': list(records)}).encode()
  else:
    data = '\n'.join(json.dumps(r) for r in records).encode()
    name = 'records.jsonl'
  out = [PARSER.parse(r) for r in split_records(data, name)]
  assert all(isinstance(e, Event) for e in out), out
  return out


def window(*records):
  agg = WindowAggregate()
  for e in parse(*records):
    agg.add(e, 900)
  return agg


def uses(agg, identity, known=NEVER):
  return {u['action']: u for u in first_uses(agg, identity, known)}


MONITORING = _role('monitoring')
AUTOMATION = _role('ebs-automation')
TASK = _role('ecs-task-reporting')
ROLE = 'arn:aws:iam::{}:role/{}'.format


# -- the three held-out attacks ----------------------------------------------------------------

def test_audit_trail_stopped_and_deleted_page():
  agg = window(ct(MONITORING, 'cloudtrail', 'StopLogging', {'name': 'org-trail'}, 1),
               ct(MONITORING, 'cloudtrail', 'DeleteTrail', {'name': 'org-trail'}, 2),
               ct(MONITORING, 'cloudwatch', 'GetMetricData', {'startTime': 'x'}, 3))
  got = uses(agg, ROLE(ACCOUNT, 'monitoring'))
  assert sorted(got) == ['cloudtrail:DeleteTrail', 'cloudtrail:StopLogging']
  stop = got['cloudtrail:StopLogging']
  assert stop['what'] == 'audit trail stopped (CloudTrail logging turned off)'
  assert (stop['condition'], stop['calls'], stop['verified'], stop['succeeded']) == ('always', 1, True, True)
  assert stop['provider'] == 'aws' and stop['targets'] == ['org-trail']
  assert got['cloudtrail:DeleteTrail']['what'] == 'audit trail deleted'


def test_a_denied_attempt_is_reported_as_not_succeeded():
  agg = window(ct(MONITORING, 'cloudtrail', 'StopLogging', {'name': 'org-trail'}, 1, error='AccessDenied'))
  stop = uses(agg, ROLE(ACCOUNT, 'monitoring'))['cloudtrail:StopLogging']
  assert stop['succeeded'] is False


def _snapshot_share(add, n=0, identity=AUTOMATION, remove=None):
  permission = {}
  if add is not None:
    permission['add'] = {'items': add}
  if remove is not None:
    permission['remove'] = {'items': remove}
  return ct(identity, 'ec2', 'ModifySnapshotAttribute',
            {'snapshotId': 'snap-0123456789abcdef0', 'attributeType': 'CREATE_VOLUME_PERMISSION',
             'createVolumePermission': permission}, n)


def test_snapshot_shared_with_another_account_pages():
  record = _snapshot_share([{'userId': OTHER}])
  (event,) = parse(record)
  assert event.action == 'ModifySnapshotAttribute' and event.category == 'resource_sharing'
  assert event.resource == f'snap-0123456789abcdef0{SHARED_WITH}{OTHER}'
  got = uses(window(record), ROLE(ACCOUNT, 'ebs-automation'))
  use = got['ec2:ModifySnapshotAttribute']
  assert use['condition'] == 'cross_account' and use['verified']
  assert use['what'] == 'EBS snapshot shared with another account'
  assert use['targets'] == [event.resource]


def test_snapshot_made_public_is_the_public_row():
  use = uses(window(_snapshot_share([{'group': 'all'}])), ROLE(ACCOUNT, 'ebs-automation'))['ec2:ModifySnapshotAttribute']
  assert (use['condition'], use['what']) == ('public', 'EBS snapshot made public')


def test_snapshot_permissions_removed_or_kept_in_the_account_do_not_page():
  removed = _snapshot_share(None, remove=[{'userId': OTHER}])
  own = _snapshot_share([{'userId': ACCOUNT}], n=1)
  for record in (removed, own):
    (event,) = parse(record)
    assert event.resource == 'snap-0123456789abcdef0'  # nothing outside: the resource as before
    assert uses(window(record), ROLE(ACCOUNT, 'ebs-automation')) == {}


def _assume(role_arn, n=0):
  account = role_arn.split(':')[4]
  return ct(TASK, 'sts', 'AssumeRole',
            {'roleArn': role_arn, 'roleSessionName': 'reporting', 'durationSeconds': 3600}, n,
            resources=[{'accountId': account, 'type': 'AWS::IAM::Role', 'ARN': role_arn}])


def test_assume_role_pages_only_into_another_account():
  task = ROLE(ACCOUNT, 'ecs-task-reporting')
  same = window(_assume(ROLE(ACCOUNT, 'report-reader')))
  assert uses(same, task) == {}
  other = window(_assume(ROLE(ACCOUNT, 'report-reader')), _assume(ROLE(OTHER, 'OrganizationAccountAccessRole'), 5))
  use = uses(other, task)['sts:AssumeRole']
  assert (use['condition'], use['calls'], use['verified']) == ('cross_account', 2, True)
  assert use['what'] == 'role assumed in another account'
  assert use['targets'] == [ROLE(OTHER, 'OrganizationAccountAccessRole')]


def test_an_aws_service_assuming_a_role_for_an_instance_is_not_cross_account():
  service = {'type': 'AWSService', 'invokedBy': 'ec2.amazonaws.com'}
  record = ct(service, 'sts', 'AssumeRole', {'roleArn': ROLE(ACCOUNT, 'web'), 'roleSessionName': 'i-0abc'})
  (event,) = parse(record)
  assert event.identity == 'aws-service:ec2.amazonaws.com'
  assert uses(window(record), event.identity) == {}


def test_assume_role_resource_is_the_role_even_without_a_resources_list():
  record = _assume(ROLE(OTHER, 'x'))
  del record['resources']
  (event,) = parse(record)
  assert (event.action, event.resource) == ('AssumeRole', ROLE(OTHER, 'x'))


# -- keys for other principals; history --------------------------------------------------------

def test_access_key_for_another_user_is_other_principal_for_itself_not():
  deployer = _user('svc-deployer')
  identity = f'arn:aws:iam::{ACCOUNT}:user/svc-deployer'
  for params in ({'userName': 'svc-deployer'}, {}):  # its own key (named, or implied)
    assert uses(window(ct(deployer, 'iam', 'CreateAccessKey', params)), identity) == {}
  use = uses(window(ct(deployer, 'iam', 'CreateAccessKey', {'userName': 'break-glass-admin'})),
             identity)['iam:CreateAccessKey']
  assert (use['condition'], use['what']) == ('other_principal', 'access key created for another IAM user')
  assert use['targets'] == ['break-glass-admin']
  # a role has no keys of its own: any user it makes a key for is another principal
  role_use = uses(window(ct(AUTOMATION, 'iam', 'CreateAccessKey', {'userName': 'svc-deployer'})),
                  ROLE(ACCOUNT, 'ebs-automation'))
  assert role_use['iam:CreateAccessKey']['condition'] == 'other_principal'


def test_an_action_the_history_knows_is_not_returned():
  agg = window(ct(MONITORING, 'cloudtrail', 'StopLogging', {'name': 'org-trail'}, 1),
               ct(MONITORING, 'cloudtrail', 'DeleteTrail', {'name': 'org-trail'}, 2))
  seen = []

  def known(action):
    seen.append(action)
    return action == 'cloudtrail:StopLogging'

  assert sorted(uses(agg, ROLE(ACCOUNT, 'monitoring'), known)) == ['cloudtrail:DeleteTrail']
  assert sorted(seen) == ['cloudtrail:DeleteTrail', 'cloudtrail:StopLogging']  # the window's action keys


def test_the_list_is_data_a_table_without_the_row_finds_nothing():
  agg = window(ct(MONITORING, 'cloudtrail', 'StopLogging', {'name': 'org-trail'}, 1))
  identity = ROLE(ACCOUNT, 'monitoring')
  assert uses(agg, identity)
  header = 'provider,service,action,condition,what\n'
  other = Table.from_text(header + '# a comment\naws,cloudtrail,DeleteTrail,always,gone\n')
  assert first_uses(agg, identity, NEVER, other) == []
  globbed = Table.from_text(header + 'aws,cloud*,stop*,always,stopped\n')  # globs, case-blind
  assert [u['what'] for u in first_uses(agg, identity, NEVER, globbed)] == ['stopped']
  with pytest.raises(ValueError, match='unknown condition'):
    Table.from_text(header + 'aws,cloudtrail,StopLogging,sometimes,x\n')


def test_without_evidence_a_condition_cannot_be_checked_and_the_use_is_kept_unverified():
  agg = WindowAggregate()
  for e in parse(_assume(ROLE(ACCOUNT, 'report-reader'))):
    agg.add(e, 900, sample=False)  # as training builds windows: counts only
  use = uses(agg, ROLE(ACCOUNT, 'ecs-task-reporting'))['sts:AssumeRole']
  assert use['verified'] is False and use['succeeded'] is None


def test_panes_merged_into_a_window_keep_what_the_conditions_need():
  first, second = window(_assume(ROLE(ACCOUNT, 'a'), 1)), window(_assume(ROLE(OTHER, 'b'), 40))
  merged = WindowAggregate().merge(first).merge(second)
  assert uses(merged, ROLE(ACCOUNT, 'ecs-task-reporting'))['sts:AssumeRole']['targets'] == [ROLE(OTHER, 'b')]


# -- what the CloudTrail parser keeps of sharing and trust changes -----------------------------

@pytest.mark.parametrize('source,name,params,expected', [
    ('ec2', 'ModifyImageAttribute', {'imageId': 'ami-1', 'attributeType': 'launchPermission',
                                     'launchPermission': {'add': {'items': [{'group': 'all'}]}}}, 'ami-1 shared-with:all'),
    ('rds', 'ModifyDBSnapshotAttribute', {'dBSnapshotIdentifier': 'prod-db-final', 'attributeName': 'restore',
                                          'valuesToAdd': [OTHER]}, f'prod-db-final shared-with:{OTHER}'),
    ('s3', 'PutBucketPolicy', {'bucketName': 'exports', 'bucketPolicy': {'Version': '2012-10-17', 'Statement': [
        {'Effect': 'Allow', 'Principal': {'AWS': f'arn:aws:iam::{OTHER}:root'}, 'Action': 's3:GetObject',
         'Resource': 'arn:aws:s3:::exports/*'}]}}, f'exports shared-with:{OTHER}'),
    ('s3', 'PutBucketPolicy', {'bucketName': 'exports', 'bucketPolicy': {'Statement': [
        {'Effect': 'Allow', 'Principal': '*', 'Action': 's3:GetObject', 'Resource': '*',
         'Condition': {'StringEquals': {'aws:PrincipalOrgID': 'o-abc'}}}]}}, 'exports'),  # narrowed: not the world
    ('kms', 'PutKeyPolicy', {'keyId': 'k-1', 'policyName': 'default', 'policy': json.dumps({'Statement': [
        {'Effect': 'Allow', 'Principal': {'AWS': [f'arn:aws:iam::{ACCOUNT}:root', f'arn:aws:iam::{OTHER}:role/x']},
         'Action': 'kms:Decrypt', 'Resource': '*'}]})}, f'k-1 shared-with:{OTHER}'),
    ('s3', 'PutBucketAcl', {'bucketName': 'exports', 'x-amz-acl': ['public-read']}, 'exports shared-with:all'),
    ('s3', 'PutBucketAcl', {'bucketName': 'exports', 'x-amz-acl': ['private']}, 'exports'),
    ('lambda', 'AddPermission20150331v2', {'functionName': 'fn', 'principal': '*', 'action': 'lambda:InvokeFunction',
                                           'statementId': 's'}, 'fn shared-with:all'),
    ('iam', 'UpdateAssumeRolePolicy', {'roleName': 'deploy', 'policyDocument': json.dumps({'Statement': [
        {'Effect': 'Allow', 'Principal': {'AWS': f'arn:aws:iam::{OTHER}:root'}, 'Action': 'sts:AssumeRole'}]})},
     f'deploy shared-with:{OTHER}'),
])
def test_cloudtrail_parser_appends_targets_outside_the_account(source, name, params, expected):
  (event,) = parse(ct(AUTOMATION, source, name, params))
  assert (event.service, event.action, event.resource) == (source, name, expected)


def test_many_targets_fit_in_what_the_evidence_keeps():
  accounts = [f'{k:012d}' for k in range(1, 30)]
  record = ct(AUTOMATION, 'rds', 'ModifyDBSnapshotAttribute',
              {'dBSnapshotIdentifier': 'x' * 400, 'attributeName': 'restore', 'valuesToAdd': accounts + ['all']})
  (event,) = parse(record)
  assert len(event.resource) <= 256 and event.resource.endswith(f'{SHARED_WITH}all,{accounts[0]},'
                                                                 f'{accounts[1]},{accounts[2]},+26')
  use = uses(window(record), ROLE(ACCOUNT, 'ebs-automation'))['rds:ModifyDBSnapshotAttribute']
  assert use['condition'] == 'public'


# -- GCP and Kubernetes --------------------------------------------------------------------------

SA = 'reporting@acme-prod.iam.gserviceaccount.com'


def gcp(method, service, resource, n=0, **payload):
  return {'insertId': f'gcp-{n}', 'logName': 'projects/acme-prod/logs/cloudaudit.googleapis.com%2Factivity',
          'timestamp': f'2026-03-02T10:{n:02d}:00.123456Z', 'receiveTimestamp': f'2026-03-02T10:{n:02d}:01Z',
          'severity': 'NOTICE', 'resource': {'type': 'project', 'labels': {'project_id': 'acme-prod'}},
          'protoPayload': {'@type': 'type.googleapis.com/google.cloud.audit.AuditLog', 'status': {},
                           'authenticationInfo': {'principalEmail': SA},
                           'requestMetadata': {'callerIp': '10.2.3.4',
                                               'callerSuppliedUserAgent': 'google-api-go-client/0.5'},
                           'serviceName': f'{service}.googleapis.com', 'methodName': method,
                           'resourceName': resource, **payload}}


def _delta(*members):
  return {'serviceData': {'@type': 'type.googleapis.com/google.iam.v1.logging.AuditData',
                          'policyDelta': {'bindingDeltas': [
                              {'action': 'ADD', 'role': 'roles/storage.objectViewer', 'member': m} for m in members]}}}


def test_gcp_project_iam_policy_change_and_a_bucket_opened_to_the_world():
  agg = window(gcp('SetIamPolicy', 'cloudresourcemanager', 'projects/acme-prod', 1,
                   **_delta(f'serviceAccount:{SA}')),
               gcp('storage.setIamPermissions', 'storage', 'projects/_/buckets/acme-exports', 2,
                   **_delta('allUsers')),
               gcp('storage.objects.get', 'storage', 'projects/_/buckets/acme-exports/objects/a.csv', 3))
  got = uses(agg, SA)
  assert sorted(got) == ['cloudresourcemanager:SetIamPolicy', 'storage:storage.setIamPermissions']
  project = got['cloudresourcemanager:SetIamPolicy']
  assert (project['condition'], project['provider']) == ('always', 'gcp')
  assert project['what'] == 'IAM policy of a project, folder or organization changed'
  assert project['targets'] == ['projects/acme-prod']  # a member of its own project: resource as before
  bucket = got['storage:storage.setIamPermissions']
  assert (bucket['condition'], bucket['targets']) == ('public', [f'projects/_/buckets/acme-exports{SHARED_WITH}all'])


def test_gcp_bucket_shared_with_another_projects_service_account_and_not_with_its_own():
  other = gcp('storage.setIamPermissions', 'storage', 'projects/_/buckets/acme-exports', 1,
              **_delta('serviceAccount:collector@partner-42.iam.gserviceaccount.com'))
  use = uses(window(other), SA)['storage:storage.setIamPermissions']
  assert (use['condition'], use['what']) == ('cross_account', 'bucket shared outside the project')
  own = gcp('storage.setIamPermissions', 'storage', 'projects/_/buckets/acme-exports', 2,
            **_delta('serviceAccount:etl@acme-prod.iam.gserviceaccount.com',
                     'serviceAccount:service-123@gs-project-accounts.iam.gserviceaccount.com'))
  assert uses(window(own), SA) == {}


def test_gcp_key_for_another_service_account_unless_the_log_names_it_by_id():
  key = 'google.iam.admin.v1.CreateServiceAccountKey'
  mine = gcp(key, 'iam', f'projects/-/serviceAccounts/{SA}', 1)
  assert uses(window(mine), SA) == {}
  theirs = gcp(key, 'iam', 'projects/-/serviceAccounts/admin@acme-prod.iam.gserviceaccount.com', 2)
  assert uses(window(theirs), SA)[f'iam:{key}']['condition'] == 'other_principal'
  by_id = gcp(key, 'iam', 'projects/-/serviceAccounts/104857600000000000001', 3)
  assert uses(window(by_id), SA)[f'iam:{key}']['verified'] is False


def k8s(verb, resource, name, namespace='ci', subresource=None, user='system:serviceaccount:ci:builder',
        n=0, group='rbac.authorization.k8s.io'):
  ref = {'resource': resource, 'namespace': namespace, 'name': name, 'apiGroup': group, 'apiVersion': 'v1'}
  if subresource:
    ref['subresource'] = subresource
  return {'kind': 'Event', 'apiVersion': 'audit.k8s.io/v1', 'level': 'Metadata', 'auditID': f'aud-{n}',
          'stage': 'ResponseComplete', 'requestURI': f'/apis/{group}/v1/namespaces/{namespace}/{resource}',
          'verb': verb, 'user': {'username': user, 'uid': 'u-1', 'groups': ['system:serviceaccounts']},
          'sourceIPs': ['10.3.4.5'], 'userAgent': 'kubectl/v1.29.0 (linux/amd64)', 'objectRef': ref,
          'responseStatus': {'metadata': {}, 'code': 201},
          'requestReceivedTimestamp': f'2026-03-02T10:{n:02d}:00.000000Z',
          'stageTimestamp': f'2026-03-02T10:{n:02d}:00.050000Z',
          'annotations': {'authorization.k8s.io/decision': 'allow'}}


def test_k8s_rolebinding_created_and_tokens_for_other_service_accounts():
  builder = 'system:serviceaccount:ci:builder'
  agg = window(k8s('create', 'rolebindings', 'builder-admin', n=1),
               k8s('create', 'serviceaccounts', 'deployer', subresource='token', group='', n=2),
               k8s('create', 'serviceaccounts', 'builder', subresource='token', group='', n=3),
               k8s('get', 'configmaps', 'settings', group='', n=4))
  got = uses(agg, builder)
  assert sorted(got) == ['core:create:serviceaccounts/token', 'rbac.authorization.k8s.io:create:rolebindings']
  binding = got['rbac.authorization.k8s.io:create:rolebindings']
  assert (binding['condition'], binding['what']) == ('always', 'role bound to a subject in a namespace')
  token = got['core:create:serviceaccounts/token']
  assert token['condition'] == 'other_principal' and token['targets'] == ['ci/serviceaccounts/deployer/token']
  # its own token only: not another principal
  own = window(k8s('create', 'serviceaccounts', 'builder', subresource='token', group='', n=3))
  assert uses(own, builder) == {}


# -- for reports ---------------------------------------------------------------------------------

def test_what_of_and_the_listing():
  assert what_of('cloudtrail:StopLogging') == 'audit trail stopped (CloudTrail logging turned off)'
  assert what_of('aws:sts:AssumeRole') == 'role assumed in another account'
  assert what_of('rbac.authorization.k8s.io:create:clusterrolebindings') == 'cluster role bound to a subject'
  assert what_of('logging:google.logging.v2.ConfigServiceV2.DeleteSink', provider='gcp').startswith('log sink deleted')
  assert what_of('s3:GetObject') is None
  rows = high_impact.high_impact_actions()
  assert {r.provider for r in rows} == {'aws', 'gcp', 'k8s'}
  assert all(r.condition in high_impact.CONDITIONS and r.what for r in rows)
  assert len(high_impact.high_impact_actions('k8s')) < len(rows)
