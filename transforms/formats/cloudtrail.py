"""AWS CloudTrail records (S3 delivery files, JSON lines, EventBridge/Lake envelopes).

Also CloudTrail as Athena, CloudTrail Lake and Security Lake exports write it: lower-case
keys (``eventtime``, ``useridentity``, ``requestparameters`` as a JSON string) and
timestamps with a space and nanoseconds (``2024-06-03 15:23:22.000000000``).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional
from urllib.parse import unquote

import orjson

from postauth.domain.event import Event
from postauth.domain.high_impact import WORLD, aws_account_of, mark_shared
from postauth.transforms.formats.base import ParseError, Skip, parse_time, text

# CloudTrail's camelCase keys, looked up by their lower-case form (Athena and Lake exports).
_KEYS = (
    'eventVersion', 'eventTime', 'eventSource', 'eventName', 'eventType', 'eventID',
    'eventCategory', 'awsRegion', 'sourceIPAddress', 'userAgent', 'errorCode', 'errorMessage',
    'requestParameters', 'responseElements', 'additionalEventData', 'requestID', 'readOnly',
    'resources', 'recipientAccountId', 'managementEvent', 'userIdentity', 'sessionContext',
    'sessionIssuer', 'principalId', 'accountId', 'accessKeyId', 'userName', 'invokedBy',
    'attributes', 'creationDate', 'mfaAuthenticated', 'webIdFederationData', 'apiVersion',
    'sharedEventID', 'vpcEndpointId', 'tlsDetails', 'ARN', 'arn', 'type')
_CAMEL: Dict[str, str] = {k.lower(): k for k in _KEYS}
_NESTED = ('userIdentity', 'sessionContext', 'sessionIssuer', 'attributes')


def _camel(record: dict) -> dict:
  """A record with lower-case CloudTrail keys given their camelCase names (nested identity too).

  ``requestParameters``/``responseElements`` that an export wrote as JSON text are parsed.
  """
  out = {}
  for k, v in record.items():
    key = _CAMEL.get(k, k) if isinstance(k, str) and k.islower() else k
    if key in _NESTED and isinstance(v, dict):
      v = _camel(v)
    elif key in ('requestParameters', 'responseElements') and isinstance(v, str) and v[:1] == '{':
      try:
        v = orjson.loads(v)
      except orjson.JSONDecodeError:
        pass
    elif key == 'resources' and isinstance(v, list):
      v = [_camel(r) if isinstance(r, dict) else r for r in v]
    out.setdefault(key, v)
  return out

# requestParameters keys that name the resource an action touched, in order of
# preference. CloudTrail has no uniform resource field.
_RESOURCE_KEYS = (
    'secretId', 'name', 'bucketName', 'key', 'tableName', 'functionName',
    'roleName', 'userName', 'policyArn', 'topicArn', 'queueUrl', 'keyId',
    'service', 'cluster', 'taskDefinition', 'repositoryName', 'stackName',
    'instanceId', 'snapshotId', 'imageId', 'trailName', 'logGroupName',
    'destination', 'streamName', 'modelId', 'parameterName')


def session_role(arn: str) -> str:
  """arn:aws:sts::ACCT:assumed-role/ROLE/SESSION -> arn:aws:iam::ACCT:role/ROLE; others as they are."""
  if ':assumed-role/' not in arn:
    return arn
  head, _, rest = arn.partition(':assumed-role/')
  return head.replace(':sts:', ':iam:') + ':role/' + rest.split('/')[0]


def canonical_identity(ui: dict, account: str = '') -> str:
  """The stable identity behind a CloudTrail principal.

  An assumed-role session becomes its role ARN (sessions are ephemeral, the
  role is what the inventory knows); an access key stays with its IAM user.
  """
  kind = ui.get('type')
  for field in ('arn', 'principalId', 'type'):
    if ui.get(field) is not None and not isinstance(ui.get(field), str):
      raise ParseError(f'userIdentity.{field}: expected a string, got {type(ui.get(field)).__name__}')
  if kind == 'AssumedRole':
    issuer = (ui.get('sessionContext') or {}).get('sessionIssuer') or {}
    if isinstance(issuer, dict) and issuer.get('arn'):
      return text(issuer['arn'])
    return session_role(text(ui.get('arn')))
  if kind == 'AWSService':
    return 'aws-service:' + text(ui.get('invokedBy') or ui.get('principalId'))
  arn = text(ui.get('arn'))
  if arn:
    return arn
  return text(ui.get('principalId')) or _built_arn(ui, account)


def _source_identity(ui: dict) -> str:
  """The session's ``sourceIdentity`` (set when the role was assumed, kept through role chains):
  whom the caller says it acts for, e.g. an agent's id."""
  context = ui.get('sessionContext')
  value = context.get('sourceIdentity') if isinstance(context, dict) else None
  return text(value)[:200] if isinstance(value, str) else ''


def _built_arn(ui: dict, account: str) -> str:
  """An IAM user's (or the root's) ARN from ``userName`` and the account, when no arn is logged."""
  account = text(ui.get('accountId')) or account
  name = text(ui.get('userName'))
  if not account or not name:
    return ''
  if ui.get('type') == 'IAMUser':
    return f'arn:aws:iam::{account}:user/{name}'
  if ui.get('type') == 'Root':
    return f'arn:aws:iam::{account}:root'
  return ''


def _resource(record: dict, service: str = '', action: str = '', own_account: str = '') -> str:
  params = record.get('requestParameters')
  if isinstance(params, dict):
    if service == 'sts' and action == 'AssumeRole' and isinstance(params.get('roleArn'), str):
      return params['roleArn'][:512]  # the role assumed: in which account (domain/high_impact.py)
    share = _SHARING.get((service, _LAMBDA_VERSION.sub('', action) if service == 'lambda' else action))
    if share is not None:
      try:
        targets = [t for t in share(params) if t and t != own_account]
      except (AttributeError, TypeError, ValueError):  # an odd request: the event still counts
        targets = []
      if targets:
        base = _base_resource(record, params) or next(
            (params[k] for k in _SHARED_KEYS if isinstance(params.get(k), str) and params[k]), '')
        return mark_shared(base, targets)
  return _base_resource(record, params)


def _base_resource(record: dict, params: Any) -> str:
  if isinstance(params, dict):
    bucket = params.get('bucketName')
    key = params.get('key')
    if isinstance(bucket, str) and isinstance(key, str):
      return f'arn:aws:s3:::{bucket}/{key}'[:512]
    for k in _RESOURCE_KEYS:
      v = params.get(k)
      if isinstance(v, str) and v:
        return v[:512]
  resources = record.get('resources')
  if isinstance(resources, list) and resources and isinstance(resources[0], dict):
    return text(resources[0].get('ARN') or resources[0].get('arn'))
  return ''


# -- whom a sharing or trust change opens a resource to (issue 22 item 4) ---------------------
# The request's targets outside the caller's account are appended to the resource as
# "<resource> shared-with:T,T" (domain/high_impact.py: account ids, "all" for the world,
# "org:"/"ou:" for an organization or unit), so the window's evidence keeps who a snapshot, an
# image, a key or a bucket was shared with. The action name stays as logged; a change that opens
# nothing outside the account leaves the resource as it was.

# What a shared resource is called when _RESOURCE_KEYS name nothing (RDS, Redshift snapshots...).
_SHARED_KEYS = ('dBSnapshotIdentifier', 'dBClusterSnapshotIdentifier', 'snapshotIdentifier',
                'fpgaImageId', 'layerName', 'resourceShareArn')
_LAMBDA_VERSION = re.compile(r'20\d{6}(v\d+)?$')  # AddPermission20150331v2 -> AddPermission
_PUBLIC_ACLS = ('public-read', 'public-read-write', 'authenticated-read')
_PUBLIC_GROUPS = ('groups/global/AllUsers', 'groups/global/AuthenticatedUsers')
# Condition keys that narrow a Principal "*" to known callers (not the world).
_NARROWING = frozenset((
    'aws:principalorgid', 'aws:principalorgpaths', 'aws:principalaccount', 'aws:sourceaccount',
    'aws:sourcearn', 'aws:sourceowner', 'aws:sourcevpc', 'aws:sourcevpce', 'aws:sourceip',
    'aws:vpcsourceip', 'aws:principalarn', 'aws:userid', 'aws:username', 'aws:sourceorgid',
    'aws:sourceorgpaths', 'aws:principalservicename', 'kms:calleraccount', 'kms:viaservice'))
_ACCOUNT_CONDITIONS = ('aws:principalaccount', 'aws:sourceaccount', 'aws:sourceowner', 'kms:calleraccount')


def _strings(value: Any) -> List[str]:
  if isinstance(value, str):
    return [value]
  if isinstance(value, list):
    return [v for v in value if isinstance(v, str)]
  return []


def _principal_target(value: str) -> str:
  """An account id, "org:o-..." / "ou:ou-..." or "" for a principal as a request names it."""
  value = value.strip()
  if value.startswith('arn:aws:organizations:'):
    last = value.rpartition('/')[2]
    return ('ou:' if last.startswith('ou-') else 'org:') + last
  return aws_account_of(value)


def _permission_items(params: dict, key: str) -> List[str]:
  """ec2 launch/createVolume/load permissions: {"add": {"items": [{"userId"|"group"|...}]}}."""
  perm = params.get(key)
  add = perm.get('add') if isinstance(perm, dict) else None
  items = add.get('items') if isinstance(add, dict) else add
  out = []
  for item in items if isinstance(items, list) else ():
    if not isinstance(item, dict):
      continue
    if str(item.get('group', '')).lower() == 'all':
      out.append(WORLD)
    for k in ('userId', 'organizationArn', 'organizationalUnitArn'):
      if isinstance(item.get(k), str):
        out.append(_principal_target(item[k]))
  return out


def _accounts(values: Any) -> List[str]:
  """Account ids as a request lists them, "all" for the world."""
  return [WORLD if v.strip().lower() == 'all' else _principal_target(v) for v in _strings(values)]


def _policy_document(policy: Any) -> Optional[dict]:
  if isinstance(policy, str):
    for candidate in (policy, unquote(policy)):
      try:
        policy = orjson.loads(candidate)
        break
      except orjson.JSONDecodeError:
        continue
  return policy if isinstance(policy, dict) else None


def _policy_targets(policy: Any) -> List[str]:
  """Whom a resource or trust policy allows: accounts of its principals, "all" for a Principal
  "*" that no condition narrows (to an organization, account, network or caller)."""
  doc = _policy_document(policy)
  statements = doc.get('Statement') if doc else None
  if isinstance(statements, dict):
    statements = [statements]
  out: List[str] = []
  for st in statements if isinstance(statements, list) else ():
    if not isinstance(st, dict) or str(st.get('Effect', '')).lower() != 'allow':
      continue
    principal = st.get('Principal')
    names = _strings(principal) if isinstance(principal, str) else (
        _strings(principal.get('AWS')) if isinstance(principal, dict) else [])
    condition = st.get('Condition') if isinstance(st.get('Condition'), dict) else {}
    keys: Dict[str, Any] = {}
    for op in condition.values():
      if isinstance(op, dict):
        keys.update((k.lower(), v) for k, v in op.items() if isinstance(k, str))
    for name in names:
      if name.strip() in ('*', 'arn:aws:iam::*:root'):
        if not _NARROWING.intersection(keys):
          out.append(WORLD)
        else:
          out.extend(aws_account_of(v) for k in _ACCOUNT_CONDITIONS for v in _strings(keys.get(k)))
      else:
        out.append(_principal_target(name))
  return out


def _acl_targets(params: dict) -> List[str]:
  """A canned public ACL, or a grant to the AllUsers / AuthenticatedUsers groups."""
  if any(v.lower() in _PUBLIC_ACLS for v in _strings(params.get('x-amz-acl'))):
    return [WORLD]
  stack: List[Any] = [v for k, v in params.items() if k not in ('bucketName', 'key', 'host')]
  while stack:
    v = stack.pop()
    if isinstance(v, str) and any(g in v for g in _PUBLIC_GROUPS):
      return [WORLD]
    if isinstance(v, dict):
      stack.extend(v.values())
    elif isinstance(v, list):
      stack.extend(v)
  return []


def _public_access_block_loosened(params: dict) -> List[str]:
  config = next((v for k, v in params.items()
                 if isinstance(k, str) and k.lower() == 'publicaccessblockconfiguration'), None)
  if not isinstance(config, dict):
    return []
  flags = [v for k, v in config.items() if isinstance(k, str) and k[:5] in ('Block', 'Ignor', 'Restr')]
  return [WORLD] if any(v is False or str(v).lower() == 'false' for v in flags) else []


def _lambda_permission(params: dict) -> List[str]:
  principal = params.get('principal')
  if not isinstance(principal, str):
    return []
  source = _accounts(params.get('sourceAccount'))
  if principal.strip() == '*':
    if source:
      return source
    narrowed = any(params.get(k) for k in ('sourceArn', 'principalOrgID', 'organizationId'))
    return [] if narrowed else [WORLD]
  return _accounts(principal) or source


def _function_url(params: dict) -> List[str]:
  return [WORLD] if str(params.get('authType', '')).upper() == 'NONE' else []


def _rds_restore(params: dict) -> List[str]:
  if str(params.get('attributeName', '')).lower() != 'restore':
    return []
  return _accounts(params.get('valuesToAdd'))


def _ram_principals(params: dict) -> List[str]:
  return [_principal_target(p) for p in _strings(params.get('principals'))]


_SHARING: Dict[tuple, Any] = {
    ('ec2', 'ModifySnapshotAttribute'): lambda p: _permission_items(p, 'createVolumePermission'),
    ('ec2', 'ModifyImageAttribute'): lambda p: _permission_items(p, 'launchPermission'),
    ('ec2', 'ModifyFpgaImageAttribute'): lambda p: _permission_items(p, 'loadPermission'),
    ('rds', 'ModifyDBSnapshotAttribute'): _rds_restore,
    ('rds', 'ModifyDBClusterSnapshotAttribute'): _rds_restore,
    ('redshift', 'AuthorizeSnapshotAccess'): lambda p: _accounts(p.get('accountWithRestoreAccess')),
    ('ssm', 'ModifyDocumentPermission'): lambda p: _accounts(p.get('accountIdsToAdd')),
    ('s3', 'PutBucketPolicy'): lambda p: _policy_targets(p.get('bucketPolicy')),
    ('s3', 'PutBucketAcl'): _acl_targets,
    ('s3', 'PutObjectAcl'): _acl_targets,
    ('s3', 'PutBucketPublicAccessBlock'): _public_access_block_loosened,
    ('s3', 'PutAccountPublicAccessBlock'): _public_access_block_loosened,
    ('kms', 'PutKeyPolicy'): lambda p: _policy_targets(p.get('policy')),
    ('kms', 'CreateGrant'): lambda p: _accounts(p.get('granteePrincipal')),
    ('ecr', 'SetRepositoryPolicy'): lambda p: _policy_targets(p.get('policyText')),
    ('secretsmanager', 'PutResourcePolicy'): lambda p: _policy_targets(p.get('resourcePolicy')),
    ('iam', 'UpdateAssumeRolePolicy'): lambda p: _policy_targets(p.get('policyDocument')),
    ('iam', 'CreateRole'): lambda p: _policy_targets(p.get('assumeRolePolicyDocument')),
    ('lambda', 'AddPermission'): _lambda_permission,
    ('lambda', 'AddLayerVersionPermission'): _lambda_permission,
    ('lambda', 'CreateFunctionUrlConfig'): _function_url,
    ('lambda', 'UpdateFunctionUrlConfig'): _function_url,
    ('ram', 'CreateResourceShare'): _ram_principals,
    ('ram', 'AssociateResourceShare'): _ram_principals,
}


def _read_only(record: dict, category: str) -> bool:
  value: Optional[Any] = record.get('readOnly')
  if isinstance(value, bool):
    return value
  if isinstance(value, str):
    return value.lower() == 'true'
  return category in ('data_read', 'enumerate')


class CloudTrail:
  name = 'cloudtrail'

  def sniff(self, record: dict) -> bool:
    if ('eventSource' in record and 'eventName' in record or
        'eventsource' in record and 'eventname' in record):
      return True
    detail = record.get('detail')
    return isinstance(detail, dict) and 'eventSource' in detail

  def parse(self, record: dict, raw_ref: str, taxonomy) -> Event:
    if 'eventSource' not in record and isinstance(record.get('detail'), dict):
      record = record['detail']  # EventBridge / CloudTrail Lake envelope
    if 'eventSource' not in record:
      record = _camel(record)  # Athena / Lake / Security Lake exports
    ui = record.get('userIdentity')
    if ui is None and record.get('eventType') == 'AwsServiceEvent':
      raise Skip('AWS service event without an actor')
    if not isinstance(ui, dict):
      raise ParseError('missing userIdentity')
    identity = canonical_identity(ui, text(record.get('recipientAccountId')))
    if not identity:
      raise ParseError('missing identity (no arn or principalId)')
    event_time = parse_time(record.get('eventTime') or record.get('@timestamp'))
    service = text(record.get('eventSource')).replace('.amazonaws.com', '')
    action = text(record.get('eventName'))
    if not service or not action:
      raise ParseError('missing eventSource or eventName')
    category = taxonomy.categorize('aws', service, action)
    error_code = text(record.get('errorCode'))
    return Event(
        event_id=text(record.get('eventID')) or raw_ref,
        event_time=event_time,
        identity=identity,
        identity_type=text(ui.get('type')),
        principal_raw=text(ui.get('arn') or ui.get('principalId') or ui.get('invokedBy')),
        session_id=text(ui.get('accessKeyId')),
        provider='aws',
        service=service,
        action=action,
        category=category,
        resource=_resource(record, service, action,
                           text(ui.get('accountId')) or text(record.get('recipientAccountId'))),
        region=text(record.get('awsRegion')),
        source_ip=text(record.get('sourceIPAddress')),
        user_agent=text(record.get('userAgent')),
        success=not error_code,
        error_code=error_code,
        read_only=_read_only(record, category),
        raw_ref=raw_ref,
        acting_for=_source_identity(ui))
