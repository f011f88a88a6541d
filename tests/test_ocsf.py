"""Issue 14: findings as OCSF Detection Findings (class 2004), validated against the OCSF schema.

The schema is OCSF 1.8.0's own export, packaged by ``ocsf-json-schema`` and turned into a
strict JSON Schema (draft 2020-12, no unknown keys anywhere); ``jsonschema`` validates
every line written by ``--sink PATH.ocsf.jsonl`` and every message of
``pubsub://...?format=ocsf``.
"""
from __future__ import annotations

import copy
import functools
import json
import time

import pytest

jsonschema = pytest.importorskip('jsonschema')
ocsf_json_schema = pytest.importorskip('ocsf_json_schema')

from postauth.transforms.ocsf_finding import OCSF_VERSION, PROFILES, SEVERITY_ID, to_ocsf
from postauth.transforms.sink_uris import parse_sink
from test_evidence import evidence_run, _input_records  # noqa: F401  (a shared session fixture)


@functools.lru_cache(maxsize=1)
def _validator():
  schema = ocsf_json_schema.OcsfJsonSchemaEmbedded(ocsf_json_schema.get_ocsf_schema(version=OCSF_VERSION))
  js = schema.get_class_schema(class_name=schema.lookup_class_name_from_uid(class_uid=2004),
                               profiles=PROFILES)
  cls = jsonschema.validators.validator_for(js)
  cls.check_schema(js)
  return cls(js)


def _errors(doc):
  return sorted(f'{"/".join(map(str, e.absolute_path))}: {e.message}'[:300]
                for e in _validator().iter_errors(doc))


def test_validator_is_strict():
  """The check can fail: a wrong class, an unknown key, a missing required object."""
  good = {'finding_id': 'f1', 'identity': 'role/x', 'identity_type': 'service_account',
          'window_start': '2026-11-05T12:00:00Z', 'window_end': '2026-11-05T13:00:00Z',
          'score': 4.2, 'severity': 'high', 'reasons': [{'rule': 'r', 'detail': 'd'}], 'team': 't',
          'owner': 'o@example.com', 'evidence': [
              {'event_id': 'e1', 'time': '2026-11-05T12:01:00.000Z', 'provider': 'aws',
               'action': 's3:GetObject', 'resource': 'b/k', 'source_ip': '10.0.0.1',
               'read_from': 'f#1', 'id_from_log': True, 'reason': 'r', 'new': ['networks']}]}
  doc = to_ocsf(good)
  assert _errors(doc) == []
  bad = copy.deepcopy(doc)
  bad['finding_info']['confidence'] = 'x'
  assert _errors(bad)
  bad = copy.deepcopy(doc)
  del bad['cloud']
  assert _errors(bad)
  bad = copy.deepcopy(doc)
  bad['severity_id'] = 7
  assert _errors(bad)
  bad = copy.deepcopy(doc)
  bad['evidences'][0]['src_endpoint'] = {'ip': 'not an ip'}
  assert _errors(bad)


def test_every_ocsf_line_validates_and_matches_its_finding(evidence_run, sample):
  findings = {f['finding_id']: f for f in evidence_run['findings']}
  rows = evidence_run['ocsf']
  assert len(rows) == len(findings) > 0
  ids = {r.get('eventID') for r in _input_records(sample).values() if r}
  for doc in rows:
    assert _errors(doc) == [], doc['finding_info']['uid']
    f = findings[doc['finding_info']['uid']]
    assert doc['class_uid'] == 2004 and doc['type_uid'] == 200400 + doc['activity_id']
    assert doc['severity_id'] == SEVERITY_ID[f['severity']]
    assert doc['risk_score'] == round(10 * f['score'])
    assert doc['metadata']['product']['name'] == 'postauth'
    assert doc['finding_info']['desc'] == '; '.join(r['detail'] for r in f['reasons'])
    if f.get('kind') == 'fleet_change':
      continue
    user = doc['evidences'][0]['actor']['user']
    assert (user['uid'], user['type']) == (f['identity'], f['identity_type'])
    assert doc['resources'][0]['uid'] == f['identity']
    assert doc['resources'][0].get('owner', {}).get('name', '') == f['owner']
    assert doc['resources'][0].get('group', {}).get('name', '') == f['team']
    assert [e['uid'] for e in doc['evidences']] == [e['event_id'] for e in f['evidence']]
    assert {e['uid'] for e in doc['evidences']} <= ids
    assert doc['cloud']['provider'] == 'AWS'


@pytest.mark.parametrize('uri,fmt', [
    ('out/f.ocsf.jsonl', 'ocsf'), ('out/f.jsonl', 'postauth'),
    ('pubsub://projects/acme-prod/topics/findings?format=ocsf', 'ocsf'),
    ('projects/acme-prod/topics/findings?format=ocsf', 'ocsf'),
    ('pubsub://projects/acme-prod/topics/findings', 'postauth'),
])
def test_ocsf_sink_uris(uri, fmt):
  spec = parse_sink(uri)
  assert spec.format == fmt
  assert '?' not in spec.target


def test_unknown_sink_query_is_refused():
  with pytest.raises(ValueError, match='format=ocsf'):
    parse_sink('pubsub://projects/acme-prod/topics/findings?format=cef')


def test_pubsub_sink_publishes_valid_ocsf(evidence_run):
  """``?format=ocsf`` on a real Pub/Sub server (pstest): each message is a valid OCSF finding."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  from postauth.pipeline import local_pubsub
  from test_pubsub import _pull, _start_server, _topic_with_subscription
  from postauth.transforms.outputs import apply_sinks
  from postauth.transforms.sink_uris import FINDING

  findings = evidence_run['findings'][:3]
  server = _start_server()
  with server, local_pubsub.emulator_host(server.host):
    topic, sub = _topic_with_subscription('ocsf')
    options = PipelineOptions([])
    with beam.Pipeline(runner='FnApiRunner', options=options) as p:
      apply_sinks(p | beam.Create(findings), [parse_sink(f'pubsub://{topic}?format=ocsf')], FINDING,
                  False, options, 'Ocsf')
    got = _pull(sub, lambda m: len(m) >= len(findings), time.time() + 30)
  assert sorted(m.attributes['finding_id'] for m in got) == sorted(f['finding_id'] for f in findings)
  for m in got:
    doc = json.loads(m.data)
    assert m.attributes['format'] == 'ocsf'
    assert _errors(doc) == []
    assert doc['finding_info']['uid'] == m.attributes['finding_id']


def test_an_agent_finding_names_its_tool_call_and_the_cloud_records_it_made():
  """The agent join's chain (docs/agent-join.md): the span and the CloudTrail record it caused,
  by their own log ids, as related events and in each evidence's data; valid OCSF."""
  span = {'event_id': '83c65956d1ff55b2', 'time': '2026-11-05T12:19:43.678Z', 'provider': 'otel',
          'action': 'genai:execute_tool:summarize_thread', 'read_from': 'otel.jsonl#73/5.0.20',
          'tool_call': '412f99b96f2872b5b2526f4a463a6f2a/83c65956d1ff55b2', 'joined_by': '',
          'id_from_log': True, 'reason': 'r', 'new': []}
  record = {'event_id': '26cae9c6-cd87-46ae-bb17-9c1838cc92d8', 'time': '2026-11-05T12:19:45.000Z',
            'provider': 'aws', 'action': 'secretsmanager:GetSecretValue@summarize_thread',
            'resource': 'prod/db/admin', 'source_ip': '10.40.0.16', 'read_from': 'trail.jsonl#1057',
            'tool_call': span['tool_call'], 'joined_by': 'user_agent', 'id_from_log': True,
            'reason': 'agent_tool_caused_unusual_call', 'new': ['actions']}
  plain = {'event_id': 'e9', 'time': '2026-11-05T12:30:00.000Z', 'provider': 'aws', 'action': 's3:GetObject',
           'read_from': 'f#9', 'id_from_log': True, 'reason': 'r', 'new': []}
  f = {'finding_id': 'f2', 'identity': 'agent-support-06', 'identity_type': 'ai_agent',
       'window_start': '2026-11-05T12:00:00Z', 'window_end': '2026-11-05T13:00:00Z', 'score': 4.1,
       'severity': 'high', 'reasons': [{'rule': 'agent_tool_caused_unusual_call', 'detail': 'd'}],
       'evidence': [span, record, plain]}
  doc = to_ocsf(f)
  assert _errors(doc) == []
  related = doc['finding_info']['related_events']
  assert [(r['uid'], r['type']) for r in related] == [
      (span['event_id'], span['action']), (record['event_id'], record['action'])]
  assert span['tool_call'] in related[1]['title'] and 'user_agent' in related[1]['title']
  assert related[1]['first_seen_time'] == 1793881185000  # 2026-11-05T12:19:45Z
  assert doc['evidences'][1]['data']['tool_call'] == span['tool_call']
  assert 'tool_call' not in doc['evidences'][2]['data']
