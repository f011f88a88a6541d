"""The agent join on what real clients write: tool-call spans emitted by the OpenTelemetry Python
SDK (OTLP/HTTP exporter) through the project's collector (`make otelcol`, config/otelcol-file.yaml
with its ports and path moved into the test's folder), beside CloudTrail records of the same time
range, read by the project's parser and joined by ``JoinAgentCalls`` on the FnApiRunner.

The ids and times asserted are the ones the SDK generated and recorded, read back from the SDK's
own span objects, not values the test wrote into the file. Without the collector binary the test
skips, except under ``CI=true`` (where ``make test`` builds it first), where it fails.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time

import apache_beam as beam
import pytest
import yaml
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from conftest import terminate
from postauth.pipeline.sample_layout import iso, write_inventory
from postauth.transforms.agent_join import AgentPrincipals, JoinAgentCalls
from postauth.transforms.parse import DEAD_LETTER, ParseFiles
from conftest import missing_tool

PROJECT_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
OTELCOL = os.path.join(PROJECT_ROOT, '.otelcol', 'otelcol-postauth')
CONFIG = os.path.join(PROJECT_ROOT, 'config', 'otelcol-file.yaml')
ACCOUNT = '111122223333'
AGENT = 'agent-data-7'
ROLE = f'arn:aws:iam::{ACCOUNT}:role/agent-data-runtime'
ROLE_2 = f'arn:aws:iam::{ACCOUNT}:role/agent-data-summaries'  # a second runs_as principal
STRANGER = f'arn:aws:iam::{ACCOUNT}:role/nightly-etl'  # no agent runs as it: never joined
SKEW = 2.0  # the --join-clock-skew default


@pytest.fixture(scope='module')
def otelcol_binary():
  if not os.access(OTELCOL, os.X_OK):
    message = (f'no OpenTelemetry Collector binary at {OTELCOL}: run `make otelcol` '
               '(go build of tools/otelcol)')
    missing_tool(message)
  return OTELCOL


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_collector(binary: str, folder, out_path: str):
  """The project's collector configuration with free ports and the file exporter's path in
  ``folder``; returns (process, its log file, OTLP/HTTP traces URL) once the HTTP receiver accepts."""
  with open(CONFIG) as f:
    config = yaml.safe_load(f)
  http_port = _free_port()
  protocols = config['receivers']['otlp']['protocols']
  protocols['grpc']['endpoint'] = f'127.0.0.1:{_free_port()}'
  protocols['http']['endpoint'] = f'127.0.0.1:{http_port}'
  config['exporters']['file/postauth']['path'] = out_path
  config_path = folder / 'otelcol.yaml'
  config_path.write_text(yaml.safe_dump(config))
  log = open(folder / 'otelcol.log', 'wb')
  proc = subprocess.Popen([binary, f'--config={config_path}'], stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 15
  while True:
    if proc.poll() is not None:
      raise AssertionError(f'collector exited {proc.returncode}: {(folder / "otelcol.log").read_text()[-2000:]}')
    try:
      socket.create_connection(('127.0.0.1', http_port), timeout=0.2).close()
      return proc, log, f'http://127.0.0.1:{http_port}/v1/traces'
    except OSError:
      if time.monotonic() > deadline:
        terminate(proc, 5)
        raise AssertionError(f'collector not listening after 15 s: {(folder / "otelcol.log").read_text()[-2000:]}')
      time.sleep(0.1)


def _ns(t: float) -> int:
  return int(round(t * 1e9))


def _emit_spans(endpoint: str, t0: float):
  """One agent's tool calls through the SDK: three with explicit start/end times under one
  ``invoke_agent`` span, one timed by the SDK's own clock (sleep) under another. Returns
  {tool: (trace_id/span_id, start s, end s, duration s)} as the SDK recorded them."""
  provider = TracerProvider(resource=Resource.create({'service.name': 'data-agent', 'service.version': '1.4.0'}))
  provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5)))
  tracer = provider.get_tracer('data-agent.runtime')
  ended = {}

  def tool_attributes(tool):
    return {'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': tool, 'gen_ai.agent.id': AGENT,
            'gen_ai.agent.name': 'data-agent', 'gen_ai.conversation.id': 'conv-42'}

  def keep(span, tool):
    ctx = span.get_span_context()
    ended[tool] = (f'{ctx.trace_id:032x}/{ctx.span_id:016x}', span.start_time / 1e9, span.end_time / 1e9,
                   (span.end_time - span.start_time) / 1e9)

  root = tracer.start_span('invoke_agent data-agent', start_time=_ns(t0),
                           attributes={'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.id': AGENT})
  parent = trace.set_span_in_context(root)
  for tool, start, end in (('export_table', 0.3, 2.8), ('run_sql', 10.5, 11.7), ('send_mail', 20.2, 21.4)):
    span = tracer.start_span(f'execute_tool {tool}', context=parent, start_time=_ns(t0 + start),
                             attributes=tool_attributes(tool))
    span.end(end_time=_ns(t0 + end))
    keep(span, tool)
  root.end(end_time=_ns(t0 + 22))
  with tracer.start_as_current_span('invoke_agent data-agent',
                                    attributes={'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.id': AGENT}):
    with tracer.start_as_current_span('execute_tool summarize', attributes=tool_attributes('summarize')) as span:
      time.sleep(1.2)
  keep(span, 'summarize')
  provider.shutdown()
  return ended


def _record(event_id: str, t: int, principal: str, source: str, action: str, params: dict,
            source_identity: str = '') -> dict:
  """A CloudTrail record of an assumed-role session of ``principal`` (the generators' shape)."""
  role = principal.rsplit('/', 1)[-1]
  context = {'sessionIssuer': {'type': 'Role', 'principalId': 'AROA' + role.upper()[:12], 'arn': principal,
                               'accountId': ACCOUNT, 'userName': role},
             'attributes': {'creationDate': iso(t - t % 3600), 'mfaAuthenticated': 'false'}}
  if source_identity:
    context['sourceIdentity'] = source_identity
  return {'eventVersion': '1.09',
          'userIdentity': {'type': 'AssumedRole', 'principalId': f'AROA{role.upper()[:12]}:botocore-session-1',
                           'arn': f'arn:aws:sts::{ACCOUNT}:assumed-role/{role}/botocore-session-1',
                           'accountId': ACCOUNT, 'accessKeyId': 'ASIAEXAMPLE0042', 'sessionContext': context},
          'eventTime': iso(t), 'eventSource': f'{source}.amazonaws.com', 'eventName': action,
          'awsRegion': 'us-east-1', 'sourceIPAddress': '10.20.30.40',
          'userAgent': 'Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux lang/python#3.11',
          'requestParameters': params, 'responseElements': None, 'eventID': event_id,
          'readOnly': action.startswith(('Get', 'List')), 'eventType': 'AwsApiCall', 'recipientAccountId': ACCOUNT}


def test_sdk_spans_through_the_collector_join_cloudtrail_records(otelcol_binary, tmp_path):
  events_dir = tmp_path / 'events'
  events_dir.mkdir()
  t0 = float(int(time.time()) - 120)  # whole seconds: CloudTrail's eventTime resolution
  proc, log, endpoint = _start_collector(otelcol_binary, tmp_path, str(events_dir / 'traces.jsonl'))
  try:
    spans = _emit_spans(endpoint, t0)
  finally:
    terminate(proc, 10)  # a clean shutdown flushes the file exporter
    log.close()
  assert proc.returncode == 0, (tmp_path / 'otelcol.log').read_text()[-2000:]
  with open(events_dir / 'traces.jsonl') as f:
    lines = [json.loads(line) for line in f if line.strip()]
  assert lines and all('resourceSpans' in line for line in lines)  # what the file exporter wrote

  live_start, live_end = spans['summarize'][1:3]
  assert live_end - live_start >= 1.2
  records = [
      _record('ct-get', int(t0) + 1, ROLE, 's3', 'GetObject', {'bucketName': 'finance-exports', 'key': 'q3.csv'}),
      _record('ct-put', int(t0) + 2, ROLE, 's3', 'PutObject', {'bucketName': 'finance-exports', 'key': 'q3.csv.gz'},
              source_identity=AGENT),
      _record('ct-sql', int(t0) + 11, ROLE, 'athena', 'StartQueryExecution', {'workGroup': 'finance'}),
      _record('ct-skew', int(t0) + 13, ROLE, 's3', 'GetObject', {'bucketName': 'finance-exports', 'key': 'r.csv'}),
      _record('ct-live', math.ceil(live_start), ROLE_2, 's3', 'GetObject', {'bucketName': 'summaries', 'key': 'a'}),
      _record('ct-outside', int(t0) + 40, ROLE, 'secretsmanager', 'GetSecretValue', {'secretId': 'prod/warehouse'}),
      _record('ct-stranger', int(t0) + 1, STRANGER, 's3', 'GetObject', {'bucketName': 'etl', 'key': 'x'}),
  ]
  (events_dir / 'cloudtrail.json').write_text(json.dumps({'Records': records}))
  write_inventory(str(tmp_path), [
      (AGENT, 'ai_agent', 'data-platform', 'finance', 'prod', 'high', 'genai', 'execute_tool:*', '', '',
       'active', 'Finance data agent', 'data-agent', f'{ROLE};{ROLE_2}'),
      (STRANGER, 'workload_identity', 'data-platform', 'finance', 'prod', 'medium')])

  # the records inside a span, and the one only within the clock skew of one, are that span's
  for event_id, t, tool in (('ct-get', t0 + 1, 'export_table'), ('ct-skew', t0 + 13, 'run_sql'),
                            ('ct-live', math.ceil(live_start), 'summarize')):
    start, end = spans[tool][1:3]
    assert start - SKEW <= t <= end + SKEW, (event_id, t, start, end)
  assert not spans['run_sql'][1] <= t0 + 13 <= spans['run_sql'][2]  # only the skew explains ct-skew
  assert all(not s - SKEW <= t0 + 40 <= e + SKEW for _, s, e, _ in spans.values())

  call = {tool: tc for tool, (tc, _, _, _) in spans.items()}
  span_id = {tool: tc.rpartition('/')[2] for tool, tc in call.items()}
  expected = [
      (AGENT, 'GetObject@export_table', 'ct-get', call['export_table'], 'time'),
      (AGENT, 'PutObject@export_table', 'ct-put', call['export_table'], 'source_identity'),
      (AGENT, 'StartQueryExecution@run_sql', 'ct-sql', call['run_sql'], 'time'),
      (AGENT, 'GetObject@run_sql', 'ct-skew', call['run_sql'], 'time'),
      (AGENT, 'GetObject@summarize', 'ct-live', call['summarize'], 'time'),
      (AGENT, 'GetSecretValue@no_tool_call', 'ct-outside', '', 'time'),
      (AGENT, 'execute_tool:export_table@cloud_call', span_id['export_table'] + '@cloud_call', call['export_table'], 'time'),
      (AGENT, 'execute_tool:run_sql@cloud_call', span_id['run_sql'] + '@cloud_call', call['run_sql'], 'time'),
      (AGENT, 'execute_tool:summarize@cloud_call', span_id['summarize'] + '@cloud_call', call['summarize'], 'time'),
  ]  # send_mail made no record: no cloud_call; ct-stranger's role runs no agent: nothing derived
  parsed_spans = sorted((tc, tc.rpartition('/')[2], d) for tc, _, _, d in spans.values())

  principals = AgentPrincipals.from_inventory(str(tmp_path / 'inventory.csv'))
  assert principals.agents_of == {ROLE: (AGENT,), ROLE_2: (AGENT,)}
  p = beam.Pipeline(runner='FnApiRunner')
  parsed = p | ParseFiles(str(events_dir / '*'))
  joined = parsed.events | JoinAgentCalls(principals, SKEW, 300)
  assert_that(joined | 'Derived' >> beam.Filter(lambda e: '@' in e.action)
              | 'ViewDerived' >> beam.Map(lambda e: (e.identity, e.action, e.event_id, e.tool_call, e.acting_for)),
              equal_to(expected), label='derived')
  assert_that(parsed.events | 'Spans' >> beam.Filter(lambda e: e.provider == 'otel')
              | 'ViewSpans' >> beam.Map(lambda e: (e.tool_call, e.event_id, e.duration)),
              equal_to(parsed_spans), label='spans')
  assert_that(parsed[DEAD_LETTER], equal_to([]), label='no_dead_letters')
  result = p.run()
  result.wait_until_finish()
  c = {x.key.metric.name: x.committed for x in result.metrics().query(MetricsFilter())['counters']
       if x.key.metric.namespace == 'postauth'}
  # 4 tool spans + 7 records parsed; the 2 invoke_agent spans skipped
  assert (c['events_parsed'], c['skipped'], c.get('dead_lettered', 0)) == (11, 2, 0)
  assert (c['join_attributed'], c['join_outside'], c['join_backed'], c.get('join_ambiguous', 0)) == (5, 1, 3, 0)
