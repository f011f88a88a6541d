"""OCSF 1.x API Activity (6003) and Account Change (3001) events (Security Lake, SIEM exports)."""
from __future__ import annotations

from typing import Any

from postauth.domain.event import Event
from postauth.transforms.formats.base import MAX_TIME, MIN_TIME, ParseError, text

API_ACTIVITY = 6003
ACCOUNT_CHANGE = 3001
CLASSES = (API_ACTIVITY, ACCOUNT_CHANGE)
READ_CATEGORIES = ('data_read', 'enumerate', 'secret_access')
READ_ACTIVITY_ID = 2  # API Activity: 1 Create, 2 Read, 3 Update, 4 Delete

# Vendors whose events should line up with the native parsers' provider names
# (and so use their taxonomy tables).
_PROVIDER_ALIASES = {
    'amazon web services': 'aws', 'amazon': 'aws',
    'google': 'gcp', 'google cloud': 'gcp', 'google cloud platform': 'gcp'}


def _obj(record: dict, *path: str) -> dict:
  """A nested object, {} when any step is missing or not an object."""
  value: Any = record
  for key in path:
    value = value.get(key) if isinstance(value, dict) else None
  return value if isinstance(value, dict) else {}


def _class_uid(record: dict) -> int:
  try:
    return int(record.get('class_uid'))
  except (TypeError, ValueError):
    return 0


def _time(record: dict) -> float:
  """OCSF time is epoch milliseconds; seconds read as milliseconds land in 1970 and are rejected."""
  value = record.get('time')
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ParseError(f'time: expected epoch milliseconds, got {value!r}'[:200])
  seconds = value / 1000.0
  if not MIN_TIME <= seconds < MAX_TIME:
    raise ParseError(f'absurd time {value!r}')
  return seconds


def _identity(user: dict, session: dict) -> str:
  """actor.user.uid; an AWS assumed-role session becomes its role, as in CloudTrail."""
  issuer = text(session.get('issuer'))
  if text(user.get('type')) == 'AssumedRole' and issuer:
    return issuer
  return text(user.get('uid')) or text(user.get('name'))


def _outcome(record: dict):
  """(success, error_code): status_id 2 or status 'Failure' is a failure; unknown counts as success."""
  status_id = record.get('status_id')
  status = text(record.get('status')).lower()
  failed = status_id == 2 or str(status_id) == '2' or status == 'failure'
  if not failed:
    return True, ''
  error = (text(record.get('status_code')) or text(record.get('status_detail')) or
           text(_obj(record, 'api', 'response').get('error')) or 'failure')
  return False, error


def _resource(record: dict) -> str:
  resources = record.get('resources')
  if isinstance(resources, list) and resources and isinstance(resources[0], dict):
    return text(resources[0].get('uid') or resources[0].get('name'))
  return ''


class Ocsf:
  name = 'ocsf'

  def sniff(self, record: dict) -> bool:
    return 'class_uid' in record and _class_uid(record) in CLASSES

  def parse(self, record: dict, raw_ref: str, taxonomy) -> Event:
    class_uid = _class_uid(record)
    user = _obj(record, 'actor', 'user')
    session = _obj(record, 'actor', 'session')
    identity = _identity(user, session)
    if not identity:
      raise ParseError('missing actor.user.uid and actor.user.name')
    event_time = _time(record)
    vendor = text(_obj(record, 'metadata', 'product').get('vendor_name')).strip().lower()
    provider = _PROVIDER_ALIASES.get(vendor, vendor) or 'ocsf'
    api = _obj(record, 'api')
    service = text(_obj(api, 'service').get('name'))
    service = service.replace('.amazonaws.com', '').replace('.googleapis.com', '')
    action = text(api.get('operation'))
    if not action and class_uid == ACCOUNT_CHANGE:
      action = text(record.get('activity_name')).replace(' ', '')  # 'Attach Policy' -> AttachPolicy
    if not action:
      raise ParseError('missing api.operation')
    # Providers without a table (okta, ocsf...) fall through to the verb prefixes.
    category = taxonomy.categorize(provider, service, action)
    success, error_code = _outcome(record)
    read_only = category in READ_CATEGORIES or (
        class_uid == API_ACTIVITY and record.get('activity_id') == READ_ACTIVITY_ID)
    return Event(
        event_id=text(_obj(record, 'metadata').get('uid')) or raw_ref,
        event_time=event_time,
        identity=identity,
        identity_type=text(user.get('type')),
        principal_raw=text(user.get('uid_alt') or user.get('uid') or user.get('name')),
        session_id=text(user.get('credential_uid') or session.get('uid')),
        provider=provider,
        service=service,
        action=action,
        category=category,
        resource=_resource(record),
        region=text(_obj(record, 'cloud').get('region')),
        source_ip=text(_obj(record, 'src_endpoint').get('ip')),
        user_agent=text(_obj(record, 'http_request').get('user_agent')),
        success=success,
        error_code=error_code,
        read_only=read_only,
        raw_ref=raw_ref)
