"""A postauth finding as an OCSF Detection Finding (class_uid 2004), the form SIEMs ingest.

OCSF 1.8.0 with the ``cloud`` profile. The identity is the actor of every evidence
(``evidences[].actor.user``: uid, name, type, team as its group) and the first affected
resource (``resources[0]``, with its owner and team); each evidence event keeps the
provider's own id (``evidences[].uid``), the API call, the source address and where it
was read (``evidences[].data``). What OCSF has no attribute for (score components,
severity basis, calls per action per window) goes to ``unmapped``. Tests validate every
line against the OCSF JSON schema (``ocsf-json-schema``, strict: no unknown keys).
"""
from __future__ import annotations

import calendar
import datetime
import ipaddress
import json
from typing import Dict, Optional

OCSF_VERSION = '1.8.0'
PROFILES = ['cloud']
CLASS_UID, CATEGORY_UID = 2004, 2
SEVERITY_ID = {'low': 2, 'medium': 3, 'high': 4, 'critical': 5}
RISK_LEVEL_ID = {'low': 1, 'medium': 2, 'high': 3, 'critical': 4}
PROVIDERS = {'aws': 'AWS', 'gcp': 'GCP', 'k8s': 'Kubernetes', 'azure': 'Azure'}
# OCSF user type_id 4 is a service account: what every non-human identity is; people are 1.
HUMAN_TYPES = ('human', 'user', 'person')


def _ms(text: str) -> int:
  """RFC 3339 (seconds or milliseconds, Z) -> epoch milliseconds."""
  fmt = '%Y-%m-%dT%H:%M:%S.%fZ' if '.' in text else '%Y-%m-%dT%H:%M:%SZ'
  t = datetime.datetime.strptime(text, fmt)
  return calendar.timegm(t.timetuple()) * 1000 + t.microsecond // 1000


def _user(f: Dict) -> Dict:
  user = {'uid': f['identity'], 'name': f['identity'].rsplit('/', 1)[-1] or f['identity'],
          'type': f.get('identity_type') or 'unknown',
          'type_id': 1 if (f.get('identity_type') or '').lower() in HUMAN_TYPES else 4}
  if f.get('team'):
    user['groups'] = [{'name': f['team'], 'type': 'team'}]
  return user


def _endpoint(ip: str) -> Optional[Dict]:
  if not ip:
    return None
  try:
    ipaddress.ip_address(ip)
  except ValueError:
    return {'name': ip}  # e.g. an AWS service calling on the identity's behalf
  return {'ip': ip}


def _evidence(e: Dict, user: Dict) -> Dict:
  service, _, operation = e['action'].partition(':')
  api = {'operation': operation or e['action'], 'service': {'name': service or e['provider']}}
  if e.get('error_code'):
    api['response'] = {'error': e['error_code']}
  out = {'uid': e['event_id'], 'name': e['action'], 'actor': {'user': user}, 'api': api,
         'data': {k: e[k] for k in ('time', 'provider', 'id_from_log', 'read_from', 'category',
                                    'region', 'network', 'user_agent', 'reason', 'new', 'tool_call',
                                    'joined_by')
                  if e.get(k) not in (None, '', [])}}

  src = _endpoint(e.get('source_ip', ''))
  if src:
    out['src_endpoint'] = src
  if e.get('resource'):
    out['resources'] = [{'uid': e['resource'], 'name': e['resource']}]
  return out


def _cloud(f: Dict) -> Dict:
  evidence = f.get('evidence') or []
  providers = sorted({e['provider'] for e in evidence if e.get('provider')})
  cloud = {'provider': ', '.join(PROVIDERS.get(p, p) for p in providers) or 'unknown'}
  regions = sorted({e['region'] for e in evidence if e.get('region')})
  if len(regions) == 1:
    cloud['region'] = regions[0]
  return cloud


def _related(evidence) -> list:
  """The agent join's chain (transforms/agent_join.py): each tool call in the evidence and the
  cloud records it made, by their own log ids, the records citing their call."""
  out = []
  for e in evidence:
    call = e.get('tool_call')
    if not call:
      continue
    joined = e.get('joined_by')
    desc = (f'cloud record made by tool call {call} (joined by {joined})' if joined and e.get('provider') != 'otel'
            else f'tool call {call}')
    out.append({'uid': e['event_id'], 'type': e['action'], 'title': desc, 'desc': e.get('read_from', ''),
                'first_seen_time': _ms(e['time'])})
  return out


def to_ocsf(f: Dict, product_version: str = '') -> Dict:
  """One finding dict (as the JSON-lines sink writes it) -> one OCSF Detection Finding."""
  severity = f.get('severity', 'low')
  user = _user(f)
  update = int(f.get('updates', 0) or 0) > 0 or int(f.get('occurrences', 1)) > 1
  reasons = [str(r.get('detail', '')) for r in f.get('reasons') or []]
  title = (f'{severity} {f.get("kind", "anomaly")} of {f.get("identity_type") or "identity"} '
           f'{f["identity"]}' + (f' (team {f["team"]})' if f.get('team') else ''))
  start, end = _ms(f['window_start']), _ms(f['window_end'])
  identity = {'uid': f['identity'], 'name': f['identity'], 'type': f.get('identity_type') or 'identity'}
  if f.get('owner'):
    identity['owner'] = {'name': f['owner']}
    if '@' in f['owner']:
      identity['owner']['email_addr'] = f['owner']
  if f.get('team'):
    identity['group'] = {'name': f['team'], 'type': 'team'}
  labels = [f'{k}:{f[k]}' for k in ('environment', 'criticality') if f.get(k)]
  if labels:
    identity['labels'] = labels
  resources = [identity] + [{'uid': r, 'name': r} for r in (f.get('resources') or {})]
  event = {
      'activity_id': 2 if update else 1,
      'activity_name': 'Update' if update else 'Create',
      'category_uid': CATEGORY_UID, 'category_name': 'Findings',
      'class_uid': CLASS_UID, 'class_name': 'Detection Finding',
      'type_uid': CLASS_UID * 100 + (2 if update else 1),
      'type_name': 'Detection Finding: ' + ('Update' if update else 'Create'),
      'time': end, 'start_time': start, 'end_time': end,
      'severity_id': SEVERITY_ID.get(severity, 0), 'severity': severity.capitalize(),
      'risk_level_id': RISK_LEVEL_ID.get(severity, 0), 'risk_level': severity.capitalize(),
      # OCSF wants an integer: the calibrated score (-log10 of the share of the cohort's
      # training windows as rare) times ten, so 30 = 1 in 1,000 normal windows.
      'risk_score': int(round(10 * float(f.get('score', 0.0)))),
      'risk_details': f'calibrated score {float(f.get("score", 0.0)):.2f}: as rare as '
                      f'1 in {10 ** float(f.get("score", 0.0)):,.0f} training windows of cohort '
                      f'{f.get("cohort") or "-"}',
      'status_id': 1, 'status': 'New',
      'count': int(f.get('occurrences', 1)),
      'message': title,
      'finding_info': {
          'uid': f['finding_id'], 'title': title, 'desc': '; '.join(reasons),
          'first_seen_time': start, 'last_seen_time': end,
          'types': [f.get('kind', 'anomaly')] + list(f.get('rules') or []),
          'data_sources': sorted({e['provider'] for e in f.get('evidence') or [] if e.get('provider')}),
      },
      'cloud': _cloud(f),
      'resources': resources,
      'metadata': {'version': OCSF_VERSION, 'profiles': PROFILES, 'uid': f['finding_id'],
                   'product': {'name': 'postauth', 'vendor_name': 'postauth',
                               **({'version': product_version} if product_version else {})},
                   'log_name': 'findings'},
      'unmapped': {k: f[k] for k in ('score', 'score_components', 'severity_basis', 'model_version',
                                     'cohort', 'event_count', 'windows', 'peak_window', 'actions',
                                     'window_actions', 'owner', 'environment', 'criticality',
                                     'registered', 'updates', 'occurrences', 'window_end',
                                     'first_detected_at', 'page', 'severity_raised')
                   if k in f},
  }
  evidence = [_evidence(e, user) for e in f.get('evidence') or []]
  if evidence:
    event['evidences'] = evidence
  related = _related(f.get('evidence') or [])
  if related:
    event['finding_info']['related_events'] = related
  if not event['finding_info']['data_sources']:
    del event['finding_info']['data_sources']
  return event


def to_ocsf_json(f: Dict) -> str:
  return json.dumps(to_ocsf(f), sort_keys=True)


def ocsf_message(f: Dict):
  """A finding as a Pub/Sub message in OCSF; the same filterable attributes as the native form."""
  from postauth.transforms.pubsub_sink import finding_message
  _, attrs = finding_message(f)
  attrs['format'] = 'ocsf'
  return to_ocsf_json(f).encode('utf-8'), attrs
