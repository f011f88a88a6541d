"""The agent join: audit records of an agent's principal attributed to its tool calls, in batch
and in streaming on Prism with late records (transforms/agent_join.py)."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.util import assert_that, equal_to

from postauth.domain.event import Event
from postauth.pipeline.prism import without_timer_splits
from postauth.transforms.agent_join import AgentPrincipals, JoinAgentCalls, attribute
from scripted_stream import ScriptedStream

T0 = 1_762_300_800.0  # 2025-11-05T00:00:00Z, on a 300 s boundary
ROLE = 'arn:aws:iam::111122223333:role/agent-data'
SHARED = 'arn:aws:iam::111122223333:role/agent-ops'
PRINCIPALS = AgentPrincipals.from_rows([
    ('agent-a', {'runs_as': [ROLE]}), ('agent-b', {'runs_as': [SHARED]}), ('agent-c', {'runs_as': [SHARED]}),
    ('someone', {'runs_as': []})])


def span(agent, t, tool, duration=3.0, sid='01', ok=True):
  return Event(f'span-{sid}', t, agent, 'ai_agent', agent, 'conv-1', 'otel', 'genai', f'execute_tool:{tool}',
               'data_read', '', '', '', 'data-agent/1.0', ok, '' if ok else 'err', True, f'spans#{sid}',
               duration, f'{"ab" * 16}/{sid * 8}')


def call(t, action='GetObject', service='s3', principal=ROLE, eid='c1', acting_for='', ua='Boto3/1.34',
         session='i-0abc', ip='10.1.2.3'):
  category = {'GetObject': 'data_read', 'GetSecretValue': 'secret_access', 'ListBuckets': 'enumerate'}[action]
  name = principal.rsplit('/', 1)[-1]
  return Event(eid, t, principal, 'AssumedRole', f'arn:aws:sts::111122223333:assumed-role/{name}/{session}',
               'ASIA1', 'aws', service, action, category, 'arn:aws:s3:::data-finance/x', 'us-east-1', ip, ua,
               True, '', True, f'trail#{eid}', 0.0, '', acting_for)


def _view(derived):
  return sorted((e.identity, e.action, e.event_id, e.tool_call.rpartition('/')[2], e.acting_for) for e in derived)


def test_a_record_during_a_tool_call_is_that_call_s_and_a_record_outside_is_the_credential_s():
  derived, counts = attribute(ROLE, ('agent-a',), [span('agent-a', T0 + 10, 'export_table')],
                              [call(T0 + 11), call(T0 + 12, eid='c1b'), call(T0 + 100, eid='c2')], 2.0)
  assert _view(derived) == [
      ('agent-a', 'GetObject@export_table', 'c1', '01' * 8, 'time'),
      ('agent-a', 'GetObject@export_table', 'c1b', '01' * 8, 'time'),
      ('agent-a', 'GetObject@no_tool_call', 'c2', '', 'time'),
      ('agent-a', 'execute_tool:export_table@cloud_call', 'span-01@cloud_call', '01' * 8, 'time')]
  assert counts == {'attributed': 2, 'ambiguous': 0, 'outside': 1, 'backed': 1}
  assert derived[0].raw_ref == 'trail#c1' and derived[0].session_id == 'conv-1'  # the record's log id stays
  assert derived[0].source_ip == '10.1.2.3' and derived[0].category == 'data_read'


def test_clock_skew_widens_the_call_and_a_call_with_no_record_gets_no_backing():
  spans = [span('agent-a', T0 + 10, 'run_sql', duration=1.0), span('agent-a', T0 + 50, 'run_sql', sid='02')]
  derived, counts = attribute(ROLE, ('agent-a',), spans, [call(T0 + 12.5)], 2.0)
  assert _view(derived) == [
      ('agent-a', 'GetObject@run_sql', 'c1', '01' * 8, 'time'),
      ('agent-a', 'execute_tool:run_sql@cloud_call', 'span-01@cloud_call', '01' * 8, 'time')]
  derived, _ = attribute(ROLE, ('agent-a',), spans[:1], [call(T0 + 13.5)], 2.0)
  assert [e.action for e in derived] == ['GetObject@no_tool_call']


def test_shared_principal_strong_keys_and_ambiguity():
  b, c = span('agent-b', T0 + 10, 'restart', sid='0b'), span('agent-c', T0 + 11, 'get_metrics', sid='0c')
  agents = PRINCIPALS.agents_of[SHARED]
  assert agents == ('agent-b', 'agent-c')
  by_time, counts = attribute(SHARED, agents, [b, c], [call(T0 + 12, principal=SHARED)], 2.0)
  assert _view(by_time) == [
      ('agent-b', 'GetObject@restart', 'c1', '0b' * 8, 'time ambiguous:2'),
      ('agent-b', 'execute_tool:restart@cloud_call', 'span-0b@cloud_call', '0b' * 8, 'time'),
      ('agent-c', 'GetObject@get_metrics', 'c1', '0c' * 8, 'time ambiguous:2'),
      ('agent-c', 'execute_tool:get_metrics@cloud_call', 'span-0c@cloud_call', '0c' * 8, 'time')]
  assert counts['ambiguous'] == 1
  for kwargs, basis in (({'acting_for': 'agent-b'}, 'source_identity'),
                        ({'ua': 'Boto3/1.34 agent/agent-b'}, 'user_agent'), ({'session': 'agent-b'}, 'session_name')):
    derived, _ = attribute(SHARED, agents, [b, c], [call(T0 + 12, principal=SHARED, **kwargs)], 2.0)
    assert _view(derived)[0] == ('agent-b', 'GetObject@restart', 'c1', '0b' * 8, basis)
  # a record naming agent-b while only agent-c had a call in flight: agent-b's credential, outside
  derived, _ = attribute(SHARED, agents, [c], [call(T0 + 12, principal=SHARED, acting_for='agent-b')], 2.0)
  assert _view(derived)[0] == ('agent-b', 'GetObject@no_tool_call', 'c1', '', 'source_identity')
  # no key and nothing in flight: on every agent running as the principal
  derived, _ = attribute(SHARED, agents, [], [call(T0 + 12, principal=SHARED)], 2.0)
  assert [e.identity for e in derived] == ['agent-b', 'agent-c']


def test_calls_of_two_tools_in_flight_both_may_have_made_the_record():
  first, second = span('agent-a', T0 + 10, 'get_metrics', duration=7.0), span('agent-a', T0 + 14, 'run_kubectl', sid='02')
  derived, counts = attribute(ROLE, ('agent-a',), [first, second], [call(T0 + 16)], 2.0)
  assert _view(derived) == [
      ('agent-a', 'GetObject@get_metrics|run_kubectl', 'c1', '02' * 8, 'time ambiguous:2'),
      ('agent-a', 'execute_tool:get_metrics@cloud_call', 'span-01@cloud_call', '01' * 8, 'time'),
      ('agent-a', 'execute_tool:run_kubectl@cloud_call', 'span-02@cloud_call', '02' * 8, 'time')]


def test_a_call_across_a_join_window_boundary_is_joined_in_the_record_s_window():
  s = span('agent-a', T0 + 298, 'export_table', duration=4.0)
  events = [s, call(T0 + 301), call(T0 + 5, eid='c0'), call(T0 + 9, principal='arn:other', eid='x')]
  with beam.Pipeline('FnApiRunner') as p:
    out = (p | beam.Create(events) | beam.Map(lambda e: beam.window.TimestampedValue(e, e.event_time))
           | JoinAgentCalls(PRINCIPALS, 2.0, 300))
    derived = out | beam.Filter(lambda e: '@' in e.action)
    assert_that(derived | 'View' >> beam.Map(lambda e: (e.identity, e.action, e.event_id, e.acting_for)),
                equal_to([('agent-a', 'GetObject@export_table', 'c1', 'time'),
                          ('agent-a', 'execute_tool:export_table@cloud_call', 'span-01@cloud_call', 'time'),
                          ('agent-a', 'GetObject@no_tool_call', 'c0', 'time')]), label='derived')
    assert_that(out | beam.combiners.Count.Globally(), equal_to([len(events) + 3]), label='all')


def _crossing():
  """A call whose range crosses a join window boundary, with a record on each side: each window
  backs it, and the backing must come out once (it came out twice, a window each)."""
  s = span('agent-a', T0 + 298, 'export_table', duration=4.0)
  before, after = call(T0 + 299, eid='c0'), call(T0 + 301)
  expected = [('agent-a', 'GetObject@export_table', 'c0', 0.0), ('agent-a', 'GetObject@export_table', 'c1', 0.0),
              ('agent-a', 'execute_tool:export_table@cloud_call', 'span-01@cloud_call', 0.0)]
  return [s, before, after], expected


def _derived_view(joined):
  return (joined | 'Derived' >> beam.Filter(lambda e: '@' in e.action)
          | 'View' >> beam.Map(lambda e: (e.identity, e.action, e.event_id, e.duration)))


def test_a_call_backed_in_two_join_windows_is_backed_once_in_batch_and_streaming(prism_binary):
  events, expected = _crossing()
  with beam.Pipeline('FnApiRunner') as p:
    joined = (p | beam.Create(events) | beam.Map(lambda e: beam.window.TimestampedValue(e, e.event_time))
              | JoinAgentCalls(PRINCIPALS, 2.0, 300))
    assert_that(_derived_view(joined), equal_to(expected))
  options = PipelineOptions(['--runner=PrismRunner', f'--prism_location={prism_binary}'])
  options.view_as(StandardOptions).streaming = True
  without_timer_splits(options)
  # the first window fires (its backing goes out) before the second's record arrives
  steps = [([(events[0], events[0].event_time), (events[1], events[1].event_time)], T0 + 450),
           ([(events[2], events[2].event_time)], T0 + 900), ([], T0 + 5000)]
  with beam.Pipeline(options=options) as p:
    joined = p | ScriptedStream(steps, pace=0.2) | JoinAgentCalls(PRINCIPALS, 2.0, 300, allowed_lateness=3600)
    assert_that(_derived_view(joined), equal_to(expected))


def test_no_agent_runs_as_anything_adds_no_step():
  with beam.Pipeline('FnApiRunner') as p:
    events = p | beam.Create([call(T0)])
    assert (events | JoinAgentCalls(AgentPrincipals({}))) is events


def _stream_steps():
  """Spans on time; one record on time, one arriving after the watermark passed its window (late,
  within the lateness), whose span already fired; then a record on time in the next window."""
  s1, s2 = span('agent-a', T0 + 10, 'export_table'), span('agent-a', T0 + 100, 'summarize', sid='02')
  on_time, late = call(T0 + 11), call(T0 + 101, 'GetSecretValue', 'secretsmanager', eid='c2')
  nxt = call(T0 + 400, eid='c3')
  steps = [([(s1, s1.event_time), (s2, s2.event_time), (on_time, on_time.event_time)], T0 + 200),
           ([], T0 + 700),
           ([(late, late.event_time), (nxt, nxt.event_time)], T0 + 800),
           ([], T0 + 5000)]
  return steps, [s1, s2, on_time, late, nxt]


EXPECTED = [('agent-a', 'GetObject@export_table', 'c1', '01' * 8, 'time'),
            ('agent-a', 'execute_tool:export_table@cloud_call', 'span-01@cloud_call', '01' * 8, 'time'),
            ('agent-a', 'GetObject@no_tool_call', 'c3', '', 'time'),
            ('agent-a', 'GetSecretValue@summarize', 'c2', '02' * 8, 'time'),
            ('agent-a', 'execute_tool:summarize@cloud_call', 'span-02@cloud_call', '02' * 8, 'time')]


def test_streaming_on_prism_joins_a_late_record_once_as_batch_does(prism_binary):
  steps, events = _stream_steps()
  with beam.Pipeline('FnApiRunner') as p:
    batch = (p | beam.Create(events) | beam.Map(lambda e: beam.window.TimestampedValue(e, e.event_time))
             | JoinAgentCalls(PRINCIPALS, 2.0, 300))
    assert_that(batch | beam.Filter(lambda e: '@' in e.action)
                | beam.Map(lambda e: (e.identity, e.action, e.event_id, e.tool_call.rpartition('/')[2], e.acting_for)),
                equal_to(EXPECTED))
  options = PipelineOptions(['--runner=PrismRunner', f'--prism_location={prism_binary}'])
  options.view_as(StandardOptions).streaming = True
  without_timer_splits(options)
  with beam.Pipeline(options=options) as p:
    joined = p | ScriptedStream(steps, pace=0.2) | JoinAgentCalls(PRINCIPALS, 2.0, 300, allowed_lateness=3600)
    assert_that(joined | beam.Filter(lambda e: '@' in e.action)
                | beam.Map(lambda e: (e.identity, e.action, e.event_id, e.tool_call.rpartition('/')[2], e.acting_for)),
                equal_to(EXPECTED))


def test_bad_join_settings_are_refused():
  with pytest.raises(ValueError):
    JoinAgentCalls(PRINCIPALS, -1.0, 300)
  with pytest.raises(ValueError):
    JoinAgentCalls(PRINCIPALS, 2.0, 0)


def test_a_principal_listed_in_runs_as_is_registered_with_its_agent_s_owner(tmp_path):
  from postauth.transforms.inventory import read_inventory
  path = tmp_path / 'inventory.csv'
  path.write_text('identity,identity_type,owner,team,environment,criticality,runs_as\n'
                  f'agent-b,ai_agent,ops@example.com,sre,prod,high,{SHARED}\n'
                  f'agent-a,ai_agent,data@example.com,finance,prod,medium,{ROLE};{SHARED}\n'
                  f'{ROLE},workload_identity,platform@example.com,platform,prod,low,\n')
  rows = dict(read_inventory(str(path)))
  assert rows[ROLE]['owner'] == 'platform@example.com'  # its own row wins
  assert (rows[SHARED]['owner'], rows[SHARED]['team'], rows[SHARED]['identity_type']) == (
      'data@example.com', 'finance', 'workload_identity')  # agent-a sorts first
  assert rows[SHARED]['display_name'] == 'runs agent-a' and rows[SHARED]['runs_as'] == []
  assert AgentPrincipals.from_rows(rows.items()).agents_of == {ROLE: ('agent-a',), SHARED: ('agent-a', 'agent-b')}
  # a session ARN in runs_as stands for its role, as the CloudTrail parser names the records
  path.write_text('identity,identity_type,owner,team,environment,runs_as\n'
                  'agent-c,ai_agent,o@example.com,t,prod,arn:aws:sts::111122223333:assumed-role/agent-ops/i-0abc\n')
  assert dict(read_inventory(str(path)))['agent-c']['runs_as'] == [SHARED]


def test_gcp_and_kubernetes_records_join_by_time_and_by_the_agent_id_in_their_user_agent():
  """Nothing AWS-only: a GCP service account's audit record and a Kubernetes service account's
  request, as their parsers read them, join the agent running as them."""
  import json
  from postauth.transforms.parse import RecordParser
  from postauth.transforms.records import RawRecord
  sa, ksa = 'agent-runner@acme-prod.iam.gserviceaccount.com', 'system:serviceaccount:agents:runner'
  gcp = {'insertId': 'g1', 'logName': 'projects/acme-prod/logs/cloudaudit.googleapis.com%2Fdata_access',
         'timestamp': '2025-11-05T00:00:11Z', 'resource': {'type': 'audited_resource', 'labels': {'project_id': 'acme-prod'}},
         'protoPayload': {'@type': 'type.googleapis.com/google.cloud.audit.AuditLog',
                          'serviceName': 'secretmanager.googleapis.com',
                          'methodName': 'google.cloud.secretmanager.v1.SecretManagerService.AccessSecretVersion',
                          'resourceName': 'projects/acme-prod/secrets/db/versions/1',
                          'authenticationInfo': {'principalEmail': sa},
                          'requestMetadata': {'callerIp': '10.9.0.4',
                                              'callerSuppliedUserAgent': 'grpc-python/1.6 agent/agent-g'}}}
  k8s = {'kind': 'Event', 'apiVersion': 'audit.k8s.io/v1', 'level': 'Metadata', 'auditID': 'k1', 'stage': 'ResponseComplete',
         'requestURI': '/api/v1/namespaces/prod/secrets/db', 'verb': 'get', 'user': {'username': ksa},
         'sourceIPs': ['10.9.0.5'], 'userAgent': 'python-requests/2.31',
         'objectRef': {'resource': 'secrets', 'namespace': 'prod', 'name': 'db', 'apiVersion': 'v1'},
         'responseStatus': {'code': 200}, 'requestReceivedTimestamp': '2025-11-05T00:00:12.000000Z',
         'stageTimestamp': '2025-11-05T00:00:12.100000Z'}
  parser = RecordParser()
  records = [parser.parse(RawRecord(json.dumps(r).encode(), r, '', f'log#{i}')) for i, r in enumerate((gcp, k8s))]
  assert all(not isinstance(e, str) for e in records), records
  g, k = records
  assert (g.identity, k.identity) == (sa, ksa)
  principals = AgentPrincipals.from_rows([('agent-g', {'runs_as': [sa]}), ('agent-h', {'runs_as': [sa, ksa]})])
  spans = [span('agent-g', T0 + 10, 'read_secret', sid='0a'), span('agent-h', T0 + 10, 'fetch', sid='0b')]
  derived, _ = attribute(sa, principals.agents_of[sa], spans, [g], 2.0)
  assert [(e.identity, e.action, e.acting_for) for e in derived if '@cloud' not in e.action] == [
      ('agent-g', g.action + '@read_secret', 'user_agent')]
  derived, _ = attribute(ksa, principals.agents_of[ksa], spans, [k], 2.0)
  assert [(e.identity, e.action, e.acting_for) for e in derived if '@cloud' not in e.action] == [
      ('agent-h', k.action + '@fetch', 'time')]


def test_bad_join_flags_are_refused_before_launch():
  from postauth.pipeline import options as opts
  from postauth.pipeline.jobs import pipeline_options
  opts.validate_limits(pipeline_options(['--join-clock-skew=0', '--join-window=60']))
  with pytest.raises(opts.OptionsError, match='--join-clock-skew -1 is out of range'):
    opts.validate_limits(pipeline_options(['--join-clock-skew=-1']))
  with pytest.raises(opts.OptionsError, match='--join-window 0 is out of range'):
    opts.validate_limits(pipeline_options(['--join-window=0']))
