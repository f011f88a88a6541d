"""A span only claims its agent (``gen_ai.agent.id``): spans naming an agent from a service the
inventory's ``emitted_by`` does not list are a finding, through the same batch job as any log."""
from __future__ import annotations

import csv
import json

import orjson
import pytest

from postauth.domain.emitter import emitter_of, service_user_agent
from postauth.domain.window import EMITTER_EVENTS, WindowAggregate
from postauth.transforms import rules
from postauth.transforms.aggregate import WindowAggregateCoder
from postauth.transforms.inventory import normalise, read_inventory
from postauth.transforms.judgment import judge
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import RawRecord
from postauth.transforms.windowing import IdentityWindow

RULE = 'agent_identity_claimed_by_other_service'
DAY = 86400
T_LIVE = 1762351200  # 2026-11-05T14:00:00Z
PARSER = RecordParser()


def attr(key, value):
  return {'key': key, 'value': {'stringValue': value}}


def tool_span(n: int, agent: str, tool: str, t: float) -> dict:
  return {'traceId': f'{n:032x}', 'spanId': f'{n:016x}', 'name': f'execute_tool {tool}', 'kind': 1,
          'startTimeUnixNano': str(int(t * 10**9)), 'endTimeUnixNano': str(int(t * 10**9) + 10**8),
          'attributes': [attr('gen_ai.operation.name', 'execute_tool'), attr('gen_ai.agent.id', agent),
                         attr('gen_ai.tool.name', tool), attr('db.collection.name', 'orders')],
          'status': {}}


def request(blocks) -> dict:
  """OTLP/JSON: one resourceSpans per (service, spans)."""
  return {'resourceSpans': [
      {'resource': {'attributes': [attr('service.name', service), attr('service.version', '2.1.0')]},
       'scopeSpans': [{'scope': {'name': 'genai'}, 'spans': spans}]} for service, spans in blocks]}


def events_of(obj: dict):
  items = [i for _, i in PARSER.parse_items(RawRecord(orjson.dumps(obj), obj, '', 't.jsonl#0'))]
  assert items and all(i.event is not None for i in items), [i.reason for i in items]
  return [i.event for i in items]


def forged_events(spans):
  return events_of(request([('billing-worker', spans)]))


def window_of(events, identity: str) -> IdentityWindow:
  agg = WindowAggregate()
  for e in events:
    agg.add(e, 900)
  return IdentityWindow(identity, T_LIVE - 1800.0, T_LIVE + 1800.0, agg)


def ctx(emitted_by=None):
  row = {'identity': 'agent-a', 'identity_type': 'ai_agent', 'owner': 'o', 'team': 'support',
         'environment': 'prod'}
  if emitted_by is not None:
    row['emitted_by'] = emitted_by
  return dict(normalise(row), registered='true')


def check(window, context):
  return rules.agent_identity_claimed_by_other_service(window, context, None, rules.RuleConfig())


# -- the parser keeps the emitting service; the aggregate carries it; the rule reads it -------

def test_the_emitting_service_reads_back_exactly_from_the_event():
  (e,) = events_of(request([('support-bot', [tool_span(1, 'agent-a', 'lookup_order', T_LIVE)])]))
  assert e.user_agent == 'support-bot/2.1.0' and emitter_of(e.provider, e.user_agent) == 'support-bot'
  # a name with '/', spaces or '%' is escaped in the user agent, so a version cannot pose as it
  for name in ('shop/support-bot', 'support bot 100%', ''):
    obj = request([(name, [tool_span(2, 'agent-a', 'lookup_order', T_LIVE)])])
    (e,) = events_of(obj)
    assert emitter_of(e.provider, e.user_agent) == name
  assert emitter_of('otel', service_user_agent('a/b', '')) == 'a/b'
  assert emitter_of('aws', 'support-bot/2.1.0') is None  # a provider's own log: no claim to check


def test_rule_fires_only_for_spans_from_a_service_emitted_by_does_not_list():
  spans = [tool_span(i, 'agent-a', 'lookup_order', T_LIVE + i) for i in range(1, 4)]
  own = window_of(events_of(request([('support-bot', spans)])), 'agent-a')
  forged = window_of(forged_events(spans), 'agent-a')
  both = window_of(events_of(request([('support-bot', spans[:1]), ('billing-worker', spans[1:])])), 'agent-a')
  allowed = ctx('support-bot;support-bot-canary')
  assert check(own, allowed) is None
  assert check(forged, ctx('')) is None and check(forged, ctx()) is None  # no constraint
  assert check(forged, ctx('billing-*')) is None  # globs, like the other inventory lists
  reason = check(forged, allowed)
  assert reason['rule'] == RULE and reason['severity'] == 'high'
  assert reason['actions'] == ['genai:execute_tool:lookup_order']
  detail = reason['detail']
  for named in ('agent-a', 'billing-worker x3', 'support-bot, support-bot-canary', f'{1:016x}', f'{3:016x}'):
    assert named in detail, (named, detail)
  mixed = check(both, allowed)['detail']
  assert 'billing-worker x2' in mixed and '1 from allowed ones' in mixed and f'{1:016x}' not in mixed
  assert RULE in [r['rule'] for r in rules.evaluate(forged, allowed, None, rules.RuleConfig())]
  assert RULE not in [r['rule'] for r in rules.evaluate(forged, allowed, None, rules.RuleConfig(disabled=[RULE]))]
  # other logs have no emitting service: never fires on them, whatever the inventory says
  cloud = window_of([e._replace(provider='aws') for e in forged_events(spans)], 'agent-a')
  assert cloud.agg.emitters == {} and check(cloud, allowed) is None


def test_it_pages_whatever_the_model_says():
  spans = [tool_span(i, 'agent-a', 'lookup_order', T_LIVE + i) for i in range(1, 3)]
  w = window_of(forged_events(spans), 'agent-a')
  context = ctx('support-bot')
  fired = rules.evaluate(w, context, None, rules.RuleConfig())
  verdict = judge(w, context, None, None, None, fired)  # the model did not flag it
  assert verdict.severity == 'high' and verdict.pages() and RULE in verdict.to_dict()['evidence']


def test_emitters_are_bounded_exact_under_merging_and_survive_the_coder():
  spans = [tool_span(i, 'agent-a', 'lookup_order', T_LIVE + (i * 37) % 11) for i in range(1, 12)]
  events = (events_of(request([('support-bot', spans[:6])])) + forged_events(spans[6:]))
  whole = window_of(events, 'agent-a').agg
  parts = [window_of(events[i::3], 'agent-a').agg for i in range(3)]
  merged = WindowAggregate().merge(parts[2]).merge(parts[0]).merge(parts[1])
  assert merged.emitters == whole.emitters
  assert {k: v[0] for k, v in whole.emitters.items()} == {'support-bot': 6, 'billing-worker': 5}
  firsts = sorted((e.event_time, e.event_id) for e in events if e.user_agent.startswith('billing'))
  assert [tuple(x[:2]) for x in whole.emitters['billing-worker'][1]] == firsts[:EMITTER_EVENTS]
  back = WindowAggregateCoder().decode(WindowAggregateCoder().encode(whole))
  assert back == whole and back.emitters == whole.emitters
  many = WindowAggregate()
  for i in range(40):
    many.add(events_of(request([(f'svc-{i}', spans[:1])]))[0], 900)
  assert len(many.emitters) == 16 and many.overflow == 40 - 16


def test_inventory_column_is_a_list_and_optional(tmp_path):
  path = tmp_path / 'inventory.csv'
  path.write_text('identity,identity_type,owner,team,environment,emitted_by\n'
                  'agent-a,ai_agent,o,t,prod,support-bot;support-bot-canary\n'
                  'agent-c,ai_agent,o,t,prod,\n')
  rows = dict(read_inventory(str(path)))
  assert rows['agent-a']['emitted_by'] == ['support-bot', 'support-bot-canary']
  assert rows['agent-c']['emitted_by'] == []
  old = tmp_path / 'old.csv'
  old.write_text('identity,identity_type,owner,team,environment\nagent-a,ai_agent,o,t,prod\n')
  assert dict(read_inventory(str(old)))['agent-a']['emitted_by'] == []


# -- the batch detection job ---------------------------------------------------------------

def _history_lines(day0: float):
  """Two days of three agents' routine tool calls, each from its own service."""
  lines, n = [], 10_000
  for hour in range(48):
    blocks = []
    for k in range(3):
      spans = []
      for m in range(3):
        n += 1
        spans.append(tool_span(n, f'agent-h{k}', ('lookup_order', 'search_kb')[m % 2],
                               day0 + hour * 3600 + m * 600 + k * 60))
      blocks.append((f'helper-{k}', spans))
    lines.append(orjson.dumps(request(blocks)))
  return lines


@pytest.fixture(scope='module')
def detected(tmp_path_factory):
  from postauth.pipeline.jobs import run, train
  root = tmp_path_factory.mktemp('forged')
  (root / 'history').mkdir()
  (root / 'live').mkdir()
  (root / 'history' / 'traces.jsonl').write_bytes(b'\n'.join(_history_lines(T_LIVE - 2 * DAY)) + b'\n')
  with open(root / 'inventory.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['identity', 'identity_type', 'owner', 'team', 'environment', 'criticality', 'emitted_by'])
    for k in range(3):
      w.writerow([f'agent-h{k}', 'ai_agent', 'o', 'support', 'prod', 'medium', f'helper-{k}'])
    w.writerow(['agent-a', 'ai_agent', 'o', 'support', 'prod', 'medium', 'support-bot;support-bot-canary'])
    w.writerow(['agent-b', 'ai_agent', 'o', 'support', 'prod', 'medium', 'support-bot'])
    w.writerow(['agent-c', 'ai_agent', 'o', 'support', 'prod', 'medium', ''])  # no constraint
  # The same calls for a and b, a's from its own service, b's from another one; c from both.
  calls = [('lookup_order', 0), ('search_kb', 120), ('lookup_order', 300)]  # in one 15-minute pane
  span_a = [tool_span(100 + i, 'agent-a', tool, T_LIVE + dt) for i, (tool, dt) in enumerate(calls)]
  span_b = [tool_span(200 + i, 'agent-b', tool, T_LIVE + dt) for i, (tool, dt) in enumerate(calls)]
  span_c = [tool_span(300 + i, 'agent-c', tool, T_LIVE + dt) for i, (tool, dt) in enumerate(calls)]
  live = request([('support-bot', span_a + span_c[:1]), ('billing-worker', span_b + span_c[1:])])
  (root / 'live' / 'traces.jsonl').write_bytes(orjson.dumps(live) + b'\n')
  beam = ['--runner=FnApiRunner']
  trained = train([f'--events={root}/history/*', f'--inventory={root}/inventory.csv',
                   f'--model-dir={root}/model'] + beam)
  assert trained['version']
  findings = root / 'findings.jsonl'
  run([f'--events={root}/live/*', f'--inventory={root}/inventory.csv', f'--model-dir={root}/model',
       f'--findings={findings}'] + beam)
  with open(findings) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_batch_job_pages_the_agent_claimed_by_another_service_only(detected):
  ruled = [f for f in detected if RULE in f['rules']]
  assert {f['identity'] for f in ruled} == {'agent-b'}, [(f['identity'], f['rules']) for f in detected]
  (f,) = ruled
  assert f['severity'] == 'high' and RULE in f['page_basis']['evidence']
  (reason,) = [r for r in f['reasons'] if r.get('rule') == RULE]
  for named in ('agent-b', 'billing-worker x3', 'emitted_by: support-bot', f'{200:016x}', f'{202:016x}'):
    assert named in reason['detail'], (named, reason['detail'])
  assert f['event_count'] == 3
