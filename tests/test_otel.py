"""OpenTelemetry GenAI tool-call spans (OTLP/JSON and protobuf) as post-auth events, and the
detection of the agent fleet's attacks."""
from __future__ import annotations

import gzip
import json

import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from postauth.transforms.formats.otel import span_from_json
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import RawRecord, split_records

PARSER = RecordParser()
T0 = 1762351200  # 2026-11-05T14:00:00Z
BODY = 'Dear customer, your password reset code is 918273'


def attr(key, value):
  if isinstance(value, int):
    return {'key': key, 'value': {'intValue': str(value)}}
  return {'key': key, 'value': {'stringValue': value}}


def span(span_id, tool=None, op='execute_tool', args=None, extra=(), status=None, start=T0, **ids):
  attrs = [attr('gen_ai.operation.name', op), attr('gen_ai.agent.id', 'agent-support-01'),
           attr('gen_ai.agent.name', 'support-bot'), attr('gen_ai.conversation.id', 'conv-1')]
  if tool:
    attrs.append(attr('gen_ai.tool.name', tool))
  if args is not None:
    attrs.append(attr('gen_ai.tool.call.arguments', args))
  s = {'traceId': ids.get('trace', '5b8efff798038103d269b633813fc60c'), 'spanId': span_id,
       'name': f'{op} {tool or ""}'.strip(), 'kind': 1,
       'startTimeUnixNano': str(start * 10**9), 'endTimeUnixNano': str(start * 10**9 + 5 * 10**8),
       'attributes': attrs + list(extra), 'status': status or {}}
  return s


def request(*spans, service='support-bot', version='1.4.2'):
  return {'resourceSpans': [{
      'resource': {'attributes': [attr('service.name', service), attr('service.version', version),
                                  attr('cloud.region', 'eu-west-1')]},
      'scopeSpans': [{'scope': {'name': 'genai'}, 'spans': list(spans)}]}]}


SPANS = [
    span('eee19b7ec3c1b174', 'send_email', args=json.dumps({'to': 'Bob <Bob@Customer.Example>', 'body': BODY})),
    span('eee19b7ec3c1b175', op='chat'),  # not a tool execution: skipped
    span('EEE19B7EC3C1B176', 'http_request', extra=[attr('url.full', 'https://user:tok@api.partner.example:8443/v1?key=s3cr3t'),
                                                     attr('http.request.method', 'POST')]),
    span('eee19b7ec3c1b177', 'run_sql', args='SELECT * FROM t -- not JSON',
         extra=[attr('db.namespace', 'warehouse'), attr('db.collection.name', 'finance.payroll')]),
    span('eee19b7ec3c1b178', 'read_file', args='{not json', status={'code': 2, 'message': 'denied'},
         extra=[attr('error.type', 'PermissionDenied')]),
    span('zz', 'send_email', args=json.dumps({'to': 'x@y.example', 'body': BODY})),  # bad hex id
    span('eee19b7ec3c1b17a', 'send_email', trace='abc'),  # trace id of the wrong length
    span('eee19b7ec3c1b17b', op='embeddings'),
]


def parse_all(raw: bytes, obj=None, ref='f.jsonl#0'):
  return [item for _, item in PARSER.parse_items(RawRecord(raw, obj, '', ref))]


def check_items(items):
  events = [i.event for i in items if i.event is not None]
  skipped = [i for i in items if i.skipped]
  dead = [i for i in items if i.event is None and not i.skipped]
  assert len(items) == len(SPANS) == len(events) + len(skipped) + len(dead)
  assert [e.event_id for e in events] == ['eee19b7ec3c1b174', 'eee19b7ec3c1b176', 'eee19b7ec3c1b177',
                                          'eee19b7ec3c1b178']
  mail, post, sql, read = events
  assert (mail.identity, mail.identity_type, mail.action, mail.category, mail.resource) == (
      'agent-support-01', 'ai_agent', 'execute_tool:send_email', 'notify', '@customer.example')
  assert mail.event_time == T0 and mail.session_id == 'conv-1' and mail.user_agent == 'support-bot/1.4.2'
  assert (post.category, post.resource) == ('data_write', 'https://api.partner.example')  # no path, token, port
  assert (sql.category, sql.resource) == ('data_read', 'warehouse/finance/payroll')  # arguments not JSON: attributes
  assert (read.success, read.error_code, read.resource, read.category) == (False, 'PermissionDenied', '', 'data_read')
  assert {i.reason for i in skipped} == {'otel: span not a tool execution (gen_ai.operation.name=chat)',
                                         'otel: span not a tool execution (gen_ai.operation.name=embeddings)'}
  assert len(dead) == 2 and all(i.reason.startswith('otel: ') for i in dead)
  # bodies and secrets are never kept: not in events, not in dead letters' payloads
  for item in items:
    assert BODY not in repr(item.event) and b'918273' not in item.raw and b's3cr3t' not in repr(item.event).encode()
  return events, skipped, dead


def test_otlp_json_line_one_item_per_span():
  line = orjson.dumps(request(*SPANS))
  (record,) = list(split_records(line + b'\n', 'f.jsonl'))
  events, _, dead = check_items(parse_all(record.raw, record.obj))
  assert {d.ref for d in dead} == {'f.jsonl#0/0.0.5', 'f.jsonl#0/0.0.6'}
  assert any(b'traceId' in d.raw and b'[redacted]' in d.raw for d in dead)
  from postauth.transforms.replay import record_time
  assert record_time(record) == T0  # a streaming file replay orders a batch by its earliest span


def test_otlp_protobuf_message_as_pubsub_delivers_it():
  good = [s for s in SPANS if s['spanId'] != 'zz' and s['traceId'] != 'abc']
  obj = request(*good)
  for block in obj['resourceSpans']:
    block['scopeSpans'][0]['spans'] = [json_format.MessageToDict(span_from_json(s)) for s in good]
  message = json_format.ParseDict(obj, ExportTraceServiceRequest()).SerializeToString()
  from_json = [i.event for i in parse_all(orjson.dumps(request(*good))) if i.event]
  for payload in (message, gzip.compress(message)):  # the Pub/Sub exporter may gzip
    items = parse_all(payload, None, 'pubsub:sub#42')
    events = [i.event for i in items if i.event]
    assert [e._replace(raw_ref='') for e in events] == [e._replace(raw_ref='') for e in from_json]
    assert len(items) == len(good) and sum(i.skipped for i in items) == 2
    assert events[0].raw_ref == 'pubsub:sub#42/0.0.0'
  # bytes that are neither JSON nor OTLP are one dead letter
  (item,) = parse_all(b'\x0a\xff\xff garbage', None, 'pubsub:sub#43')
  assert item.event is None and not item.skipped and 'invalid JSON' in item.reason


def test_parse_records_reads_protobuf_messages_in_beam():
  """The streaming path (ParseRecords, as Pub/Sub messages reach it): counters add up, raw kept redacted."""
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter
  from apache_beam.testing.util import assert_that, equal_to
  from postauth.transforms.parse import DEAD_LETTER, ParseRecords
  good = [s for s in SPANS if s['spanId'] != 'zz' and s['traceId'] != 'abc']
  obj = request(*good)
  obj['resourceSpans'][0]['scopeSpans'][0]['spans'] = [json_format.MessageToDict(span_from_json(s)) for s in good]
  message = json_format.ParseDict(obj, ExportTraceServiceRequest()).SerializeToString()
  records = [RawRecord(gzip.compress(message), None, '', 'pubsub:s#1'), RawRecord(b'junk', None, '', 'pubsub:s#2')]
  p = beam.Pipeline(runner='FnApiRunner')
  out = p | beam.Create(records) | ParseRecords(with_raw=True)
  assert_that(out.events | beam.Map(lambda er: (er[0].event_id, b'918273' in er[1])),
              equal_to([('eee19b7ec3c1b174', False), ('eee19b7ec3c1b176', False), ('eee19b7ec3c1b177', False),
                        ('eee19b7ec3c1b178', False)]), label='events')
  assert_that(out[DEAD_LETTER] | beam.Map(lambda d: json.loads(d)['reason'][:12]), equal_to(['invalid JSON']),
              label='dead')
  result = p.run()
  result.wait_until_finish()
  c = {x.key.metric.name: x.committed for x in result.metrics().query(MetricsFilter())['counters']
       if x.key.metric.namespace == 'postauth'}
  assert (c['records_read'], c['events_parsed'], c['skipped'], c['dead_lettered']) == (7, 4, 2, 1)


def test_malformed_otlp():
  cases = {
      'resourceSpans is not a list': {'resourceSpans': {'a': 1}},
      'resource': {'resourceSpans': [{'resource': {'attributes': 'x'}, 'scopeSpans': []}]},
      'scopeSpans is not a list': {'resourceSpans': [{'scopeSpans': 'x'}]},
      'span is a JSON str': {'resourceSpans': [{'scopeSpans': [{'spans': ['x']}]}]},
      'absurd time': request(span('eee19b7ec3c1b174', 'send_email', start=5)),
      'without gen_ai.tool.name': request(span('eee19b7ec3c1b174')),
      'spanId: 4 bytes': request(span('eee19b7e', 'send_email')),
  }
  for expected, obj in cases.items():
    items = parse_all(orjson.dumps(obj), obj)
    assert len(items) == 1 and items[0].event is None and not items[0].skipped, expected
    assert expected in items[0].reason, (expected, items[0].reason)
  (item,) = parse_all(orjson.dumps({'resourceSpans': []}))
  assert item.skipped  # an empty export is not bad input
  # forced format, agent named only by service: identity qualified by service.name
  s = span('eee19b7ec3c1b174', 'send_email')
  s['attributes'] = [a for a in s['attributes'] if a['key'] != 'gen_ai.agent.id']
  forced = RecordParser('otel')
  (item,) = [i for _, i in forced.parse_items(RawRecord(orjson.dumps(request(s)), None, '', 'x#0'))]
  assert item.event.identity == 'support-bot/support-bot'


def test_argument_keys_are_data(tmp_path):
  extra = tmp_path / 'args.csv'
  extra.write_text('argument,kind\nticket_queue,name\n')
  tools = tmp_path / 'tools.csv'
  tools.write_text('provider,service,action,category\notel,*,file_ticket,notify\n')
  parser = RecordParser(None, [str(extra), str(tools)])
  obj = request(span('eee19b7ec3c1b174', 'file_ticket', args=json.dumps({'ticket_queue': 'billing-escalations',
                                                                        'to': 'a@b.example'})))
  (item,) = [i for _, i in parser.parse_items(RawRecord(orjson.dumps(obj), obj, '', 'x#0'))]
  assert (item.event.resource, item.event.category) == ('billing-escalations', 'notify')
  # free text is never taken as a target name
  obj = request(span('eee19b7ec3c1b174', 'file_ticket', args=json.dumps({'ticket_queue': BODY})))
  (item,) = [i for _, i in parser.parse_items(RawRecord(orjson.dumps(obj), obj, '', 'x#0'))]
  assert item.event.resource == ''


def test_postauth_parse_on_otlp_counts_add_up(tmp_path, capsys):
  from test_parse_job import parse_cli, read_avro, read_dead
  src = tmp_path / 'in' / 'traces.jsonl'
  src.parent.mkdir()
  src.write_bytes(orjson.dumps(request(*SPANS)) + b'\n' + orjson.dumps(request(SPANS[0])) + b'\n{broken\n')
  code, s = parse_cli(capsys, f'--events={src}', f'--out={tmp_path / "out"}', '--format=otel')
  assert code == 0
  assert (s['read'], s['parsed'], s['dead_lettered'], s['skipped']) == (10, 5, 3, 2)
  assert s['read'] == s['parsed'] + s['dead_lettered'] + s['skipped']
  assert s['by_format'] == {'otel': 5} and s['by_category'] == {'data_read': 2, 'data_write': 1, 'notify': 2}
  assert sum(s['skipped_by_reason'].values()) == 2
  assert len(read_avro(str(tmp_path / 'out'))) == 5
  dead = read_dead(str(tmp_path / 'out'))
  assert len(dead) == 3 and all(d['raw'] and '918273' not in d['raw'] for d in dead)


def test_what_the_collector_file_exporter_wrote():
  """A file written by the OpenTelemetry Collector's file exporter (tests/otel_fixtures/README.md)."""
  import os
  path = os.path.join(os.path.dirname(__file__), 'otel_fixtures', 'collector-traces.jsonl')
  with open(path, 'rb') as f:
    records = list(split_records(f.read(), path))
  assert len(records) == 2
  items = [i for r in records for _, i in PARSER.parse_items(r)]
  events = [i.event for i in items if i.event]
  assert (len(items), len(events), sum(i.skipped for i in items)) == (12, 8, 4)
  by_line = {}
  for e in events:
    by_line.setdefault(e.raw_ref.rpartition('#')[2].split('/')[0], []).append(e._replace(raw_ref='', user_agent=''))
  first, second = by_line.values()
  assert first == second  # JSON and protobuf exports of the same spans: the same events
  assert {e.user_agent for e in events} == {'support-bot/1.4.2', 'support-bot-proto/1.4.2'}


@pytest.fixture(scope='module')
def agent_run(tmp_path_factory):
  from postauth.pipeline.evaluate_agents import agent_sample_run
  return agent_sample_run(str(tmp_path_factory.mktemp('agents')), agents=16, days=5, seed=11,
                          beam_args=['--runner=FnApiRunner'])


def test_agent_attacks_page_and_a_tool_release_does_not(agent_run):
  """A small agent fleet, in OTLP/JSON, through the same train and run as cloud logs."""
  from postauth.pipeline import evaluate as ev
  sample = agent_run['sample']
  labels = ev.read_cases(f'{sample}/labels.json')
  benign = ev.read_cases(f'{sample}/benign.json')
  findings = ev.rank_findings(ev.read_json_lines(agent_run['findings']))
  assert {l['scenario'] for l in labels} == {
      'agent_mass_mail_new_domains', 'agent_reads_new_path_posts_external',
      'agent_queries_other_teams_and_exports', 'agent_tries_privileged_tools',
      'agent_identity_forged_by_other_service'}
  for label in labels:
    paged = [f for f in findings if ev.matches(f, label) and ev.is_page(f)]
    assert paged, (label['scenario'], [f for f in findings if ev.matches(f, label)])
  releases = [c for c in benign if c['kind'] == 'tool_release']
  assert len(releases) >= 2  # most agents of one team adopt the new tool the same day
  assert not [f for f in findings for c in releases if ev.matches(f, c) and ev.is_page(f)]
  counters = agent_run['ran']['counters']
  assert counters['records_read'] == counters['events_parsed'] + counters['skipped'] + counters.get('dead_lettered', 0)
  assert counters['skipped'] == 2 * counters['events_parsed']  # invoke_agent and chat spans of each call
