"""GCP Cloud Audit Logs (LogEntry JSON with an AuditLog protoPayload)."""
from __future__ import annotations

import re
from typing import Any, List

from postauth.domain.event import Event
from postauth.domain.high_impact import WORLD, gcp_project_of, mark_shared
from postauth.transforms.formats.base import ParseError, parse_time, text
from postauth.transforms.formats.k8s_audit import identity_type as k8s_identity_type

READ_CATEGORIES = ('data_read', 'enumerate', 'secret_access')
_VERSION = re.compile(r'^(v\d+\w*|beta\d*|alpha\d*)$')


def _service_from_method(method: str) -> str:
  """'v1.compute.instances.insert' -> compute, 'google.iam.admin.v1.X' -> iam.

  Only for entries whose serviceName was dropped by an exporter: audit logs
  written by GCP always carry it.
  """
  parts = method.split('.')
  if len(parts) < 2:
    return ''
  if parts[:2] == ['io', 'k8s']:
    return 'k8s.io'  # GKE: io.k8s.core.v1.pods.create
  for part in parts[:-1]:
    if part not in ('google', 'cloud') and not _VERSION.match(part):
      return part
  return ''


def _identity(auth: dict):
  """(identity, identity_type): the email as logged; a federated subject when there is none."""
  email = text(auth.get('principalEmail'))
  if email:
    if email.endswith('.gserviceaccount.com'):
      return email, 'service_account'
    if email.startswith('system:'):  # GKE: Kubernetes usernames
      return email, k8s_identity_type(email)
    return email, 'user'
  subject = text(auth.get('principalSubject'))  # workload/workforce identity federation
  if subject:
    return subject, 'federated'
  raise ParseError('missing protoPayload.authenticationInfo.principalEmail')


def _region(record: dict, payload: dict) -> str:
  resource = record.get('resource')
  labels = resource.get('labels') if isinstance(resource, dict) else None
  if isinstance(labels, dict):
    for key in ('location', 'zone', 'region'):
      if isinstance(labels.get(key), str) and labels[key]:
        return labels[key]
  location = payload.get('resourceLocation')
  if isinstance(location, dict) and isinstance(location.get('currentLocations'), list):
    return text(location['currentLocations'][0]) if location['currentLocations'] else ''
  return ''


def _outcome(payload: dict):
  """(success, error_code): google.rpc.Status code 0 or absent is success."""
  status = payload.get('status')
  code = status.get('code') if isinstance(status, dict) else None
  if code in (None, 0, '0', ''):
    return True, ''
  return False, text(code)


# -- whom an IAM policy change opens a resource to (issue 22 item 4) --------------------------
# The members a setIamPolicy / setIamPermissions call adds that are outside the caller's and the
# resource's project are appended to the resource as "<resource> shared-with:T,T"
# (domain/high_impact.py: "all" for allUsers / allAuthenticatedUsers, "project:P" for another
# project's service account, user:/group:/domain: members as logged). Members of those projects,
# and Google's own service agents, leave the resource as it was.
_POLICY_METHODS = ('setiampolicy', 'setiampermissions')
_PUBLIC_MEMBERS = ('allusers', 'allauthenticatedusers')


def _strings(value: Any) -> List[str]:
  return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _added_members(payload: dict) -> List[str]:
  """Members the call added: the policy delta when logged, else the request's whole policy."""
  deltas, logged = [], False
  for holder in (payload.get('serviceData'), payload.get('metadata')):
    for key in ('policyDelta', 'datasetChange'):
      change = holder.get(key) if isinstance(holder, dict) else None
      if isinstance(change, dict) and isinstance(change.get('bindingDeltas'), list):
        logged = True
        deltas.extend(d for d in change['bindingDeltas'] if isinstance(d, dict))
  if logged:
    return [d['member'] for d in deltas
            if isinstance(d.get('member'), str) and str(d.get('action', '')).upper() == 'ADD']
  request = payload.get('request')
  policy = request.get('policy') if isinstance(request, dict) else None
  bindings = policy.get('bindings') if isinstance(policy, dict) else None
  return [m for b in bindings if isinstance(b, dict) for m in _strings(b.get('members'))] \
      if isinstance(bindings, list) else []


def _outside_members(members: List[str], own: set) -> List[str]:
  out = []
  for member in members:
    kind, sep, rest = member.partition(':')
    if member.lower() in _PUBLIC_MEMBERS:
      out.append(WORLD)
    elif kind == 'serviceAccount':
      project = gcp_project_of(rest)
      if project and project not in own:
        out.append('project:' + project)
    elif kind in ('projectOwner', 'projectEditor', 'projectViewer'):
      if rest and rest not in own:
        out.append('project:' + rest)
    elif kind in ('user', 'group', 'domain', 'principal', 'principalSet'):
      out.append(member)
    elif not sep and '@' in member:
      out.append(member)  # a member without its kind, as some exports write them
  return out


def _resource(record: dict, payload: dict, action: str, identity: str) -> str:
  resource = text(payload.get('resourceName'))
  if action.rpartition('.')[2].lower() not in _POLICY_METHODS:
    return resource
  own = {gcp_project_of(identity)}
  if resource.startswith('projects/'):
    own.add(resource.split('/')[1])
  labels = record.get('resource', {}).get('labels') if isinstance(record.get('resource'), dict) else None
  if isinstance(labels, dict) and isinstance(labels.get('project_id'), str):
    own.add(labels['project_id'])
  return mark_shared(resource, _outside_members(_added_members(payload), own))


class GcpAudit:
  name = 'gcp_audit'

  def sniff(self, record: dict) -> bool:
    payload = record.get('protoPayload')
    if not isinstance(payload, dict):
      return False
    kind = payload.get('@type') or payload.get('at_sign_type')  # the latter: Panther's export
    return (isinstance(kind, str) and 'AuditLog' in kind) or 'methodName' in payload

  def parse(self, record: dict, raw_ref: str, taxonomy) -> Event:
    payload = record.get('protoPayload')
    if not isinstance(payload, dict):
      raise ParseError('missing protoPayload')
    auth = payload.get('authenticationInfo')
    if not isinstance(auth, dict):
      raise ParseError('missing protoPayload.authenticationInfo')
    identity, kind = _identity(auth)
    event_time = parse_time(record.get('timestamp') or record.get('receiveTimestamp'))
    action = text(payload.get('methodName'))
    if not action:
      raise ParseError('missing protoPayload.methodName')
    service = text(payload.get('serviceName')).replace('.googleapis.com', '') or _service_from_method(action)
    if not service:
      raise ParseError('missing protoPayload.serviceName')
    category = taxonomy.categorize('gcp', service, action)
    meta = payload.get('requestMetadata')
    meta = meta if isinstance(meta, dict) else {}
    success, error_code = _outcome(payload)
    # Admin Activity logs record only writes; Data Access logs hold the reads.
    log_id = text(record.get('logName'), 1024).rpartition('/logs/')[2].replace('%2F', '/')
    read_only = not log_id.endswith('/activity') and category in READ_CATEGORIES
    return Event(
        event_id=text(record.get('insertId')) or raw_ref,
        event_time=event_time,
        identity=identity,
        identity_type=kind,
        principal_raw=identity,
        session_id=text(auth.get('serviceAccountKeyName')),
        provider='gcp',
        service=service,
        action=action,
        category=category,
        resource=_resource(record, payload, action, identity),
        region=_region(record, payload),
        source_ip=text(meta.get('callerIp') or meta.get('callerIP')),
        user_agent=text(meta.get('callerSuppliedUserAgent')),
        success=success,
        error_code=error_code,
        read_only=read_only,
        raw_ref=raw_ref)
