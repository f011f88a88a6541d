"""AWS CloudTrail records (S3 delivery files, JSON lines, EventBridge/Lake envelopes).

Also CloudTrail as Athena, CloudTrail Lake and Security Lake exports write it: lower-case
keys (``eventtime``, ``useridentity``, ``requestparameters`` as a JSON string) and
timestamps with a space and nanoseconds (``2024-06-03 15:23:22.000000000``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import orjson

from postauth.domain.event import Event
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
    arn = text(ui.get('arn'))
    # arn:aws:sts::ACCT:assumed-role/ROLE/SESSION -> arn:aws:iam::ACCT:role/ROLE
    if ':assumed-role/' in arn:
      head, _, rest = arn.partition(':assumed-role/')
      role = rest.split('/')[0]
      return head.replace(':sts:', ':iam:') + ':role/' + role
    return arn
  if kind == 'AWSService':
    return 'aws-service:' + text(ui.get('invokedBy') or ui.get('principalId'))
  arn = text(ui.get('arn'))
  if arn:
    return arn
  return text(ui.get('principalId')) or _built_arn(ui, account)


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


def _resource(record: dict) -> str:
  params = record.get('requestParameters')
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
        resource=_resource(record),
        region=text(record.get('awsRegion')),
        source_ip=text(record.get('sourceIPAddress')),
        user_agent=text(record.get('userAgent')),
        success=not error_code,
        error_code=error_code,
        read_only=_read_only(record, category),
        raw_ref=raw_ref)
