"""Kubernetes audit.k8s.io Events (API-server audit backend, EKS/GKE/AKS exports)."""
from __future__ import annotations

from typing import Any

from postauth.domain.event import Event
from postauth.transforms.formats.base import ParseError, Skip, parse_time, text

# The API server logs a request once per stage; only the final stage is counted so that one
# call is one event: ResponseComplete, or Panic when the server failed the call. The earlier
# stages (RequestReceived; ResponseStarted of a watch, exec or attach) are skipped and counted,
# not dead-lettered: at RequestResponse level they carry the request body (a Secret's data).
FINAL_STAGES = ('ResponseComplete', 'Panic')
EARLIER_STAGES = ('RequestReceived', 'ResponseStarted')
READ_VERBS = ('get', 'list', 'watch')

def identity_type(username: str) -> str:
  """What kind of principal a Kubernetes username is (also used for GKE in GCP logs)."""
  if username.startswith('system:serviceaccount:'):
    return 'service_account'
  if username.startswith('system:node:'):
    return 'node'
  if username == 'system:anonymous':
    return 'anonymous'
  if username.startswith(('system:', 'eks:')):
    return 'system'  # control plane: system:kube-controller-manager, eks:addon-manager...
  return 'user'


def _first(value: Any) -> str:
  """First element of a list-valued field (sourceIPs, user.extra values)."""
  if isinstance(value, list):
    return text(value[0]) if value else ''
  return text(value)


def _session_id(user: dict) -> str:
  extra = user.get('extra')
  if not isinstance(extra, dict):
    return ''
  for key in ('authentication.kubernetes.io/credential-id', 'accessKeyId'):
    if extra.get(key):
      return _first(extra[key])
  return ''


def _action_and_resource(record: dict, verb: str):
  """(service, action, resource): verb:resource[/sub] for API objects, verb:path otherwise."""
  ref = record.get('objectRef')
  if ref is not None and not isinstance(ref, dict):
    raise ParseError(f'objectRef: expected an object, got {type(ref).__name__}')
  ref = ref or {}
  kind = text(ref.get('resource'))
  if kind:
    sub = text(ref.get('subresource'))
    action = f'{verb}:{kind}/{sub}' if sub else f'{verb}:{kind}'
    path = '/'.join(p for p in (text(ref.get('namespace')), kind, text(ref.get('name')), sub) if p)
    return text(ref.get('apiGroup')) or 'core', action, path
  # Non-resource URLs (/healthz, /version, /metrics...) have no objectRef.
  uri = text(record.get('requestURI')).split('?')[0]
  if not uri:
    raise ParseError('missing objectRef.resource and requestURI')
  return 'nonresource', f'{verb}:{uri}', uri


def _outcome(record: dict):
  """(success, error_code): HTTP status below 400 is success; no status falls back to the authz
  decision; a Panic without a status failed with 'panic'."""
  status = record.get('responseStatus')
  code = status.get('code') if isinstance(status, dict) else None
  if code is not None:
    try:
      code = int(code)
    except (TypeError, ValueError) as e:
      raise ParseError(f'responseStatus.code: not a number: {code!r}'[:200]) from e
    return (True, '') if code < 400 else (False, str(code))
  if record.get('stage') == 'Panic':
    return False, 'panic'
  annotations = record.get('annotations')
  if isinstance(annotations, dict) and annotations.get('authorization.k8s.io/decision') == 'forbid':
    return False, 'forbid'
  return True, ''


class K8sAudit:
  name = 'k8s_audit'

  def sniff(self, record: dict) -> bool:
    if record.get('kind') != 'Event':
      return False
    version = record.get('apiVersion')
    if isinstance(version, str):
      return version.startswith('audit.k8s.io')
    # Some exporters (older Falco traces, SIEM copies) drop apiVersion; core
    # v1 Events carry involvedObject, never a verb.
    return version is None and 'verb' in record and 'involvedObject' not in record

  def parse(self, record: dict, raw_ref: str, taxonomy) -> Event:
    stage = record.get('stage')
    if stage in EARLIER_STAGES:
      raise Skip(f'stage {stage} is not the final stage ({" or ".join(FINAL_STAGES)})')
    if stage is not None and stage not in FINAL_STAGES:
      raise ParseError(f'stage {text(stage, 50)} is not an audit stage')
    user = record.get('user')
    if not isinstance(user, dict):
      raise ParseError('missing user')
    username = text(user.get('username'))
    if not username:
      raise ParseError('missing user.username')
    verb = text(record.get('verb'), 50)
    if not verb:
      raise ParseError('missing verb')
    event_time = parse_time(record.get('stageTimestamp') or
                            record.get('requestReceivedTimestamp') or
                            record.get('timestamp'))
    service, action, resource = _action_and_resource(record, verb)
    category = taxonomy.categorize('k8s', service, action)
    success, error_code = _outcome(record)
    return Event(
        event_id=text(record.get('auditID')) or raw_ref,
        event_time=event_time,
        identity=username,
        identity_type=identity_type(username),
        principal_raw=username,
        session_id=_session_id(user),
        provider='k8s',
        service=service,
        action=action,
        category=category,
        resource=resource,
        region='',
        source_ip=_first(record.get('sourceIPs')),
        user_agent=text(record.get('userAgent')),
        success=success,
        error_code=error_code,
        read_only=verb in READ_VERBS,
        raw_ref=raw_ref)
