"""Findings and dead letters as the sinks' records: Avro rows, BigQuery rows, and back.

The schemas ship in ``transforms/schemas`` (``finding.avsc``, ``finding.bigquery.json``,
``dead_letter.*``): one definition that other tools read. ``validate_bigquery_row``
checks a row against the table schema the way the service would, so tests can prove
a row is accepted without BigQuery.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from typing import Any, Dict, List, Optional

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'schemas')


def load_schema(name: str) -> Dict:
  with open(os.path.join(SCHEMA_DIR, name)) as f:
    return json.load(f)


def avro_schema(record_kind: str) -> Dict:
  return load_schema(f'{record_kind}.avsc')


def bigquery_schema(record_kind: str) -> Dict:
  """The table schema as Beam's WriteToBigQuery takes it: {'fields': [...]}."""
  return load_schema(f'{record_kind}.bigquery.json')


def _ts(text: str) -> datetime.datetime:
  return datetime.datetime.strptime(text, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)


def _avro_reason(r: Dict) -> Dict:
  return {'feature': r.get('feature'), 'rule': r.get('rule'), 'value': r.get('value'),
          'baseline': r.get('baseline'), 'detail': str(r.get('detail', '')),
          'severity': r.get('severity'), 'actions': [str(a) for a in r.get('actions') or []]}


def finding_to_avro(f: Dict) -> Dict:
  """A finding dict -> a record of transforms/schemas/finding.avsc (typed timestamps)."""
  row = dict(f)
  row['kind'] = f.get('kind', 'anomaly')
  row['window_start'], row['window_end'] = _ts(f['window_start']), _ts(f['window_end'])
  row['peak_window'] = [_ts(t) for t in f.get('peak_window', [])]
  row['score_components'] = {k: float((f.get('score_components') or {}).get(k, 0.0))
                             for k in ('isolation_forest', 'feature_rarity')}
  row['severity_basis'] = {str(k): str(v) for k, v in (f.get('severity_basis') or {}).items()}
  row['reasons'] = [_avro_reason(r) for r in f['reasons']]
  row['suppressed_reasons'] = [_avro_reason(r) for r in f.get('suppressed_reasons') or []]
  row['rules'] = list(f.get('rules') or [])
  row['actions'] = {str(k): int(v) for k, v in (f.get('actions') or {}).items()}
  row['resources'] = {str(k): int(v) for k, v in (f.get('resources') or {}).items()}
  row['occurrences'] = int(f.get('occurrences', 1))
  row['last_occurrence'] = _ts(f['last_occurrence']) if f.get('last_occurrence') else None
  row['occurrence_ids'] = list(f.get('occurrence_ids') or [])
  row['identities'] = list(f.get('identities') or [])  # a fleet-change notice's identities
  row['fleet_change_id'] = f.get('fleet_change_id') or None
  row['continues'] = f.get('continues') or None
  row['page_basis'] = _page_basis(f)
  row['first_detected_at'] = _ts(f.get('first_detected_at') or f['window_end'])
  for key in ('updates', 'pages'):
    row[key] = int(f.get(key) or 0)
  for key in ('page', 'severity_raised'):
    row[key] = bool(f.get(key))
  row['evidence'] = [dict(e, new=list(e.get('new') or []), identity=e.get('identity', ''))
                     for e in f.get('evidence') or []]
  row['window_actions'] = [dict(w, actions={str(k): int(v) for k, v in w['actions'].items()})
                           for w in f.get('window_actions') or []]
  return row


def _page_basis(f: Dict) -> Dict[str, List[str]]:
  basis = f.get('page_basis') or {}
  return {k: [str(x) for x in basis.get(k) or []] for k in ('evidence', 'shareable', 'change')}


def _number_or_text(value: Any):
  if isinstance(value, bool):
    return float(value), None
  if isinstance(value, (int, float)):
    return float(value), None
  return None, None if value is None else str(value)


def _rfc3339(t: datetime.datetime) -> str:
  return t.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def finding_from_avro(row: Dict) -> Dict:
  """A record read from a findings Avro file -> the finding dict the JSON-lines sink writes."""
  f = dict(row)
  f['window_start'], f['window_end'] = _rfc3339(row['window_start']), _rfc3339(row['window_end'])
  f['peak_window'] = [_rfc3339(t) for t in row.get('peak_window', [])]
  for key in ('reasons', 'suppressed_reasons'):
    f[key] = [{k: v for k, v in r.items() if v is not None and not (k == 'actions' and not v)}
              for r in row.get(key) or []]
  if not f['suppressed_reasons']:
    del f['suppressed_reasons']
  if row.get('last_occurrence'):
    f['last_occurrence'] = _rfc3339(row['last_occurrence'])
  else:
    f.pop('last_occurrence', None)
  if not f.get('occurrence_ids'):
    f.pop('occurrence_ids', None)
  if not f.get('identities'):
    f.pop('identities', None)
  for key in ('fleet_change_id', 'continues'):
    if not f.get(key):
      f.pop(key, None)
  f['evidence'] = [{k: v for k, v in e.items() if not (k == 'identity' and not v)} for e in f.get('evidence') or []]
  if row.get('first_detected_at'):
    f['first_detected_at'] = _rfc3339(row['first_detected_at'])
  for key in ('evidence', 'window_actions'):  # a fleet-change notice has neither
    if not f.get(key):
      f.pop(key, None)
  if row.get('kind') == 'fleet_change' or (row.get('kind') == 'rule' and not row.get('model_version')):
    f['score_components'] = {}  # a fleet notice or an unregistered-identity finding has no model score
  return f


def _bigquery_reason(r: Dict) -> Dict:
  value, value_text = _number_or_text(r.get('value'))
  baseline, baseline_text = _number_or_text(r.get('baseline'))
  return {'feature': r.get('feature'), 'rule': r.get('rule'), 'detail': str(r.get('detail', '')),
          'value': value, 'value_text': value_text, 'baseline': baseline,
          'baseline_text': baseline_text, 'severity': r.get('severity'),
          'actions': [str(a) for a in r.get('actions') or []]}


def _counted(d: Optional[Dict]) -> List[Dict]:
  return [{'name': str(k), 'count': int(v)} for k, v in (d or {}).items()]


def finding_to_bigquery(f: Dict) -> Dict:
  """A finding dict -> a row of transforms/schemas/finding.bigquery.json."""
  return {
      'finding_id': f['finding_id'], 'kind': f.get('kind', 'anomaly'), 'identity': f['identity'],
      'identity_type': f['identity_type'],
      'window_start': f['window_start'], 'window_end': f['window_end'], 'score': float(f['score']),
      'score_components': {k: float((f.get('score_components') or {}).get(k, 0.0))
                           for k in ('isolation_forest', 'feature_rarity')},
      'severity': f['severity'],
      'severity_basis': [{'key': str(k), 'value': str(v)} for k, v in (f.get('severity_basis') or {}).items()],
      'model_version': f['model_version'], 'cohort': f['cohort'],
      'reasons': [_bigquery_reason(r) for r in f['reasons']],
      'suppressed_reasons': [_bigquery_reason(r) for r in f.get('suppressed_reasons') or []],
      'rules': list(f.get('rules') or []),
      'actions': _counted(f.get('actions')), 'resources': _counted(f.get('resources')),
      'event_count': int(f['event_count']), 'windows': int(f['windows']),
      'peak_window': list(f.get('peak_window', [])), 'owner': f.get('owner') or None,
      'team': f.get('team') or None, 'environment': f.get('environment') or None,
      'criticality': f.get('criticality') or None, 'registered': bool(f.get('registered')),
      'occurrences': int(f.get('occurrences', 1)), 'last_occurrence': f.get('last_occurrence') or None,
      'occurrence_ids': list(f.get('occurrence_ids') or []),
      'identities': list(f.get('identities') or []),
      'fleet_change_id': f.get('fleet_change_id') or None, 'continues': f.get('continues') or None,
      'page_basis': _page_basis(f),
      'first_detected_at': f.get('first_detected_at') or f['window_end'],
      'updates': int(f.get('updates') or 0), 'pages': int(f.get('pages') or 0),
      'page': bool(f.get('page')), 'severity_raised': bool(f.get('severity_raised')),
      'evidence': [dict(e, new=list(e.get('new') or [])) for e in f.get('evidence') or []],
      'window_actions': [dict(w, actions=_counted(w.get('actions'))) for w in f.get('window_actions') or []],
  }


def dead_letter_record(line: str) -> Dict:
  """A dead-letter JSON line -> a record of the dead_letter schemas (every field a string)."""
  try:
    doc = json.loads(line)
  except ValueError:
    doc = {'stage': 'sink', 'reason': 'dead letter is not JSON', 'raw': line}
  return {'stage': str(doc.get('stage') or 'unknown'), 'reason': str(doc.get('reason') or ''),
          'source': str(doc.get('source', '')), 'index': str(doc.get('index', '')),
          'raw': doc['raw'] if isinstance(doc.get('raw'), str) else json.dumps(doc.get('raw'))}


_BQ_TIMESTAMP = re.compile(r'^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d{1,6})?)?(Z| UTC|[+-]\d\d:\d\d)?$')


def validate_bigquery_row(fields: List[Dict], row: Dict, path: str = '') -> List[str]:
  """Every way ``row`` breaks the BigQuery schema ``fields`` (types, modes, nesting, unknown fields)."""
  errors = []
  known = {f['name'] for f in fields}
  for name in row:
    if name not in known:
      errors.append(f'{path}{name}: not in the schema')
  for f in fields:
    name, mode, kind = f['name'], f.get('mode', 'NULLABLE'), f['type']
    value = row.get(name)
    where = f'{path}{name}'
    if mode == 'REPEATED':
      if not isinstance(value, list):
        errors.append(f'{where}: REPEATED needs a list, got {type(value).__name__}')
        continue
      values = value
    elif value is None:
      if mode == 'REQUIRED':
        errors.append(f'{where}: REQUIRED but missing')
      continue
    else:
      values = [value]
    for i, v in enumerate(values):
      at = f'{where}[{i}]' if mode == 'REPEATED' else where
      if v is None:
        errors.append(f'{at}: null inside a REPEATED field')
      elif kind in ('RECORD', 'STRUCT'):
        if not isinstance(v, dict):
          errors.append(f'{at}: RECORD needs an object, got {type(v).__name__}')
        else:
          errors += validate_bigquery_row(f['fields'], v, at + '.')
      elif kind == 'STRING' and not isinstance(v, str):
        errors.append(f'{at}: STRING got {type(v).__name__}')
      elif kind in ('FLOAT', 'FLOAT64') and (isinstance(v, bool) or not isinstance(v, (int, float))):
        errors.append(f'{at}: FLOAT got {type(v).__name__}')
      elif kind in ('INTEGER', 'INT64') and (isinstance(v, bool) or not isinstance(v, int)):
        errors.append(f'{at}: INTEGER got {type(v).__name__}')
      elif kind in ('BOOLEAN', 'BOOL') and not isinstance(v, bool):
        errors.append(f'{at}: BOOLEAN got {type(v).__name__}')
      elif kind == 'TIMESTAMP' and not (isinstance(v, str) and _BQ_TIMESTAMP.match(v)):
        errors.append(f'{at}: TIMESTAMP got {v!r}')
  return errors
