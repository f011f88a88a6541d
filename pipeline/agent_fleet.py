"""A labelled AI-agent fleet as OpenTelemetry traces (OTLP/JSON, as the collector's file exporter
writes them): support, coding, data and ops agents calling their tools, day after day.

Each tool call is an ``execute_tool`` span (GenAI semantic conventions) inside an
``invoke_agent`` trace with a ``chat`` span (those two are skipped by the parser, as real
traces hold them). On the live (last) day four attacks and two benign changes are injected,
labelled like the CloudTrail generator's (``labels.json`` with ``scenario``, ``benign.json``
with ``kind``); the benign changes also happen on history days, at a daily rate, so the model
has seen change of that kind.

Attacks: ``agent_mass_mail_new_domains``, ``agent_reads_new_path_posts_external``,
``agent_queries_other_teams_and_exports``, ``agent_tries_privileged_tools``.
Benign: ``tool_release`` (a new harmless tool adopted by most agents of one team the same day),
``busier_day`` (2-4x an agent's usual volume with its usual tools and targets).

``joint``: each agent's runtime also runs as a cloud role, and its tool calls leave CloudTrail
records dated inside their spans (``cloudtrail-agents-<date>.jsonl``, the inventory's
``runs_as``), with three more attacks and two more benign kinds (``pipeline/agent_cloud.py``).

    python -m postauth.pipeline.agent_fleet --out DIR [--agents 40] [--days 7] [--seed 7] [--joint]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import orjson

from postauth.pipeline.agent_cloud import CloudSide, day_note
from postauth.pipeline.sample_layout import (DAY, DEFAULT_END, HOUR, iso, make_day_dirs, sample_days, write_cases,
                                             write_inventory)

TEAMS = {'support': ['support'], 'coding': ['platform', 'growth'], 'data': ['finance', 'growth', 'marketing'],
         'ops': ['sre']}
CUSTOMER_DOMAINS = ['gmail.com', 'outlook.com', 'yahoo.com', 'icloud.com', 'proton.me'] + [
    f'{w}.example' for w in ('acme', 'globex', 'initech', 'umbrella', 'hooli', 'vandelay', 'stark',
                             'wayne', 'tyrell', 'wonka', 'cyberdyne', 'soylent', 'oscorp', 'aperture')]
REPOS = ['billing-api', 'web-frontend', 'search-svc', 'mobile-app', 'infra-tools', 'auth-svc']
K8S_NAMESPACES = ['checkout', 'search', 'payments', 'web', 'batch']


# kind -> [(tool, weight, target maker name)]; targets are attributes or argument keys, as
# agent frameworks record them.
TOOLS: Dict[str, List[Tuple[str, float]]] = {
    'support': [('search_kb', 4), ('lookup_order', 4), ('send_email', 3), ('create_ticket', 1)],
    'coding': [('read_file', 6), ('write_file', 2), ('run_tests', 2), ('http_request', 1),
               ('create_pull_request', 0.5)],
    'data': [('run_sql', 6), ('read_file', 1), ('export_table', 0.5)],
    'ops': [('get_metrics', 4), ('run_kubectl', 3), ('restart_service', 0.3), ('page_oncall', 0.2)],
}
NEW_TOOLS = ['summarize_thread', 'search_code', 'lookup_runbook', 'list_dashboards', 'read_changelog']


class Agent:
  def __init__(self, kind: str, team: str, i: int, rate: float, rng: np.random.Generator):
    self.kind, self.team, self.i = kind, team, i
    self.id = f'agent-{kind}-{team}-{i:02d}'
    self.service = f'{kind}-agent-{team}'
    self.version = f'{1 + i % 3}.{int(rng.integers(0, 9))}.{int(rng.integers(0, 20))}'
    self.rate = rate  # tool calls per active hour
    self.tools = list(TOOLS[kind])
    self.declared = sorted({t for t, _ in self.tools})  # what its inventory row lists
    # its own working set: a few customers' domains, repos, tables, namespaces
    self.domains = list(rng.choice(CUSTOMER_DOMAINS, size=8, replace=False))
    self.repos = list(rng.choice(REPOS, size=2, replace=False))
    self.tables = [f'{team}.{t}' for t in ('orders', 'revenue', 'campaigns', 'events', 'daily_kpis')[:4]]
    self.namespaces = list(rng.choice(K8S_NAMESPACES, size=3, replace=False))


def _attr(key: str, value) -> dict:
  if isinstance(value, bool):
    return {'key': key, 'value': {'boolValue': value}}
  if isinstance(value, int):
    return {'key': key, 'value': {'intValue': str(value)}}
  return {'key': key, 'value': {'stringValue': str(value)}}


class Tracer:
  """Builds the spans of one agent's tool calls; ids from the generator's own stream."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng
    self.cloud: Optional[CloudSide] = None  # a joint fleet: longer tool calls, with their cloud records

  def _hex(self, n: int) -> str:
    return self.rng.bytes(n).hex()

  def target(self, agent: Agent, tool: str, override: Optional[dict] = None) -> Tuple[List[dict], dict]:
    """(standard attributes, arguments) of a call: what the agent's framework records."""
    rng, o = self.rng, override or {}
    if tool == 'send_email':
      domain = o.get('domain') or str(rng.choice(agent.domains))
      return [], {'to': f'customer{int(rng.integers(0, 5000))}@{domain}', 'subject': 'Your order',
                  'body': 'Hello, your refund was processed. Reference 1234.'}
    if tool in ('read_file', 'write_file'):
      path = o.get('path') or f'/workspace/{rng.choice(agent.repos)}/src/mod{int(rng.integers(0, 40))}.py'
      if agent.kind == 'data' and 'path' not in o:
        path = f'/data/{agent.team}/extracts/part-{int(rng.integers(0, 30))}.csv'
      return [_attr('file.path', path)], {'path': path}
    if tool == 'http_request':
      host = o.get('host') or str(rng.choice(['api.github.com', 'pypi.org', 'registry.npmjs.org']))
      method = o.get('method', 'GET')
      return ([_attr('url.full', f'https://{host}/v1/items?page={int(rng.integers(1, 9))}'),
               _attr('http.request.method', method)], {'url': f'https://{host}/'})
    if tool == 'create_pull_request':
      return [_attr('server.address', 'api.github.com')], {'repo': str(rng.choice(agent.repos))}
    if tool == 'run_tests':
      return [_attr('process.command_line', f'pytest -q tests/{rng.choice(agent.repos)}')], {}
    if tool == 'run_sql':
      table = o.get('table') or str(rng.choice(agent.tables))
      return ([_attr('db.namespace', 'warehouse'), _attr('db.collection.name', table),
               _attr('db.system.name', 'bigquery')], {'query': f'SELECT * FROM {table} LIMIT 100'})
    if tool == 'export_table':
      return [], {'bucket': o.get('bucket') or f'exports-{agent.team}', 'table': str(rng.choice(agent.tables))}
    if tool in ('run_kubectl', 'restart_service'):
      return [_attr('k8s.namespace.name', str(rng.choice(agent.namespaces)))], {'command': 'get pods'}
    if tool == 'get_metrics':
      return [_attr('url.full', 'https://prometheus.internal.example/api/v1/query'),
              _attr('http.request.method', 'GET')], {}
    if tool == 'page_oncall':
      return [], {'channel': f'oncall-{agent.team}'}
    if tool == 'create_ticket':
      return [_attr('url.full', 'https://helpdesk.example/api/tickets'), _attr('http.request.method', 'POST')], {}
    if tool in ('search_kb', 'lookup_order'):
      return [], {'query': 'refund status for order'}
    if 'table' in o or 'service' in o or 'secret' in o or 'role' in o or 'user' in o:
      return [], dict(o)
    return [], {}

  def call(self, agent: Agent, t: float, tool: str, override: Optional[dict] = None,
           failed: bool = False, cloud: bool = True) -> List[dict]:
    """The spans of one tool call: invoke_agent (root), chat, execute_tool (``cloud``: whether the
    agent's runtime made it, so a joint fleet records its cloud side)."""
    trace, root = self._hex(16), self._hex(8)
    start = int(t * 1e9)
    attrs, args = self.target(agent, tool, override)
    end = start + 1_400_000_000
    if self.cloud is not None:
      end = self.cloud.tool_call(agent, tool, start + 900_000_000, args, attrs, emit=cloud)
    common = [_attr('gen_ai.agent.id', agent.id), _attr('gen_ai.agent.name', agent.service)]
    conversation = _attr('gen_ai.conversation.id', f'conv-{self._hex(6)}')
    tool_span = {
        'traceId': trace, 'spanId': self._hex(8), 'parentSpanId': root,
        'name': f'execute_tool {tool}', 'kind': 1, 'startTimeUnixNano': str(start + 900_000_000),
        'endTimeUnixNano': str(end),
        'attributes': common + [conversation, _attr('gen_ai.operation.name', 'execute_tool'),
                                _attr('gen_ai.tool.name', tool), _attr('gen_ai.tool.type', 'function'),
                                _attr('gen_ai.tool.call.id', f'call_{self._hex(8)}'),
                                _attr('gen_ai.tool.call.arguments', json.dumps(args))] + attrs,
        'status': {'code': 2, 'message': 'permission denied'} if failed else {}}
    if failed:
      tool_span['attributes'].append(_attr('error.type', 'PermissionDenied'))
    return [
        {'traceId': trace, 'spanId': root, 'name': f'invoke_agent {agent.service}', 'kind': 1,
         'startTimeUnixNano': str(start), 'endTimeUnixNano': str(max(start + 2_000_000_000, end + 600_000_000)),
         'attributes': common + [conversation, _attr('gen_ai.operation.name', 'invoke_agent')], 'status': {}},
        {'traceId': trace, 'spanId': self._hex(8), 'parentSpanId': root, 'name': 'chat gpt-4o', 'kind': 3,
         'startTimeUnixNano': str(start + 100_000_000), 'endTimeUnixNano': str(start + 800_000_000),
         'attributes': [_attr('gen_ai.operation.name', 'chat'), _attr('gen_ai.request.model', 'gpt-4o'),
                        _attr('gen_ai.usage.input_tokens', 812)], 'status': {}},
        tool_span]


def fleet(n: int, rng: np.random.Generator) -> List[Agent]:
  kinds = ['support', 'coding', 'data', 'ops']
  agents = []
  for i in range(n):
    kind = kinds[i % 4]
    teams = TEAMS[kind]
    team = teams[(i // 4) % len(teams)]
    agents.append(Agent(kind, team, i // 4, float(rng.uniform(2.0, 6.0)), rng))
  return agents


def _hour_factor(agent: Agent, t: float) -> float:
  hour = (t % DAY) / HOUR
  if agent.kind in ('ops', 'support'):
    return 1.0 if 6 <= hour < 22 else 0.3
  return 1.0 if 8 <= hour < 19 else 0.05


def routine(tracer: Tracer, agent: Agent, day0: float, scale: float = 1.0,
            extra_tools: Sequence[str] = ()) -> List[Tuple[str, List[dict]]]:
  """One day of an agent's usual tool calls (``scale``: a busier day; ``extra_tools``: new ones)."""
  rng = tracer.rng
  tools = agent.tools + [(t, 1.5) for t in extra_tools]
  weights = np.array([w for _, w in tools], dtype=float)
  weights /= weights.sum()
  out = []
  for h in range(24):
    t0 = day0 + h * HOUR
    n = rng.poisson(agent.rate * scale * _hour_factor(agent, t0 + 1))
    for t in np.sort(rng.uniform(t0, t0 + HOUR, size=n)):
      tool = tools[int(rng.choice(len(tools), p=weights))][0]
      out.append((agent.service, tracer.call(agent, float(t), tool)))
  return out


def _attacks(tracer: Tracer, agents: List[Agent], day0: float) -> Tuple[List, List[dict]]:
  rng = tracer.rng
  by_kind = {k: [a for a in agents if a.kind == k] for k in TOOLS}
  calls, labels = [], []

  def add(agent: Agent, scenario: str, items: List[Tuple[float, str, dict, bool]]):
    for t, tool, override, failed in items:
      calls.append((agent.service, tracer.call(agent, t, tool, override, failed)))
    times = [t for t, *_ in items]
    labels.append({'identity': agent.id, 'scenario': scenario, 'format': 'otel',
                   'start': iso(min(times)), 'end': iso(max(times) + 2)})

  start = day0 + 13 * HOUR + float(rng.uniform(0, HOUR))
  new_domains = [f'mail{int(rng.integers(100, 999))}-{i}.example.net' for i in range(120)]
  add(by_kind['support'][0], 'agent_mass_mail_new_domains',
      [(start + i * 36.0, 'send_email', {'domain': new_domains[i % len(new_domains)]}, False)
       for i in range(150)])
  start = day0 + 10 * HOUR + float(rng.uniform(0, HOUR))
  coder = by_kind['coding'][1]
  items = [(start + i * 40.0, 'read_file', {'path': f'/srv/payroll/exports/2026-{1 + i % 12:02d}.csv'}, False)
           for i in range(24)]
  items += [(start + 30 + i * 90.0, 'http_request', {'host': 'upload.filedrop.example', 'method': 'POST'}, False)
            for i in range(10)]
  add(coder, 'agent_reads_new_path_posts_external', items)
  start = day0 + 15 * HOUR + float(rng.uniform(0, HOUR))
  analyst = by_kind['data'][0]
  others = [t for t in ('finance', 'growth', 'marketing', 'hr') if t != analyst.team]
  items = [(start + i * 50.0, 'run_sql', {'table': f'{others[i % 3]}.{("payroll", "customers", "revenue")[i % 3]}_{i % 5}'},
            False) for i in range(30)]
  items += [(start + 20 + i * 150.0, 'export_table', {'bucket': 'partner-drop-ext'}, False) for i in range(10)]
  add(analyst, 'agent_queries_other_teams_and_exports', items)
  start = day0 + 11 * HOUR + float(rng.uniform(0, HOUR))
  ops = by_kind['ops'][1 % len(by_kind['ops'])]
  tries = [('grant_role', {'role': 'cluster-admin'}), ('create_user', {'user': 'svc-backup'}),
           ('read_secret', {'secret': 'prod/db/root'}), ('create_api_key', {'service': 'billing'}),
           ('run_shell', {'service': 'bastion'}), ('read_secret', {'secret': 'prod/stripe/key'})]
  add(ops, 'agent_tries_privileged_tools',
      [(start + i * 45.0, tries[i % len(tries)][0], tries[i % len(tries)][1], i % 6 != 5) for i in range(14)])
  # Another workload holding a stolen agent token speaks as the agent: the spans name the
  # victim's agent id, but come from the thief's service, doing the victim's own usual work.
  start = day0 + 16 * HOUR + float(rng.uniform(0, HOUR))
  victim, thief = by_kind['data'][1 % len(by_kind['data'])], by_kind['support'][1 % len(by_kind['support'])]
  usual = [t for t, _ in TOOLS[victim.kind]]
  items = [(start + i * 120.0, usual[i % len(usual)], None, False) for i in range(6)]
  for t, tool, override, failed in items:
    calls.append((thief.service, tracer.call(victim, t, tool, override, failed, cloud=False)))
  labels.append({'identity': victim.id, 'scenario': 'agent_identity_forged_by_other_service', 'format': 'otel',
                 'start': iso(items[0][0]), 'end': iso(items[-1][0] + 2)})
  return calls, labels


def _changes(tracer: Tracer, agents: List[Agent], day0: float, live: bool, taken: set
             ) -> Tuple[List, List[dict], set]:
  """The day's benign change: a tool release in one team, busier days for a few agents."""
  rng = tracer.rng
  calls, notes, changed = [], [], set()
  if live or rng.random() < 0.5:
    sizes: Dict[Tuple[str, str], int] = {}
    for a in agents:
      sizes[(a.kind, a.team)] = sizes.get((a.kind, a.team), 0) + 1
    # a release to a team: one with several agents (the largest when none has 3)
    teams = sorted(t for t, n in sizes.items() if n >= 3) or [max(sizes, key=lambda t: (sizes[t], t))]
    kind, team = teams[int(rng.integers(0, len(teams)))]
    members = [a for a in agents if (a.kind, a.team) == (kind, team) and a.id not in taken]
    tool = NEW_TOOLS[int(rng.integers(0, len(NEW_TOOLS)))]
    adopters = [a for a in members if rng.random() < 0.8] or members[:1]
    for a in adopters:
      day = routine(tracer, a, day0, extra_tools=[tool])
      calls += day
      a.tools.append((tool, 1.5))  # the tool stays in use afterwards
      changed.add(a.id)
      notes.append(day_note(a, 'tool_release', day, day0,
                            f'{tool} released to the {team} {kind} agents ({len(adopters)} of {len(members)})'))
  free = [a for a in agents if a.id not in taken and a.id not in changed]
  if live:  # the live day: several at once, as a release day brings them
    busy = [free[int(i)] for i in sorted(rng.choice(len(free), size=min(len(free), max(2, len(agents) // 10)),
                                                     replace=False))]
  else:
    busy = [a for a in free if rng.random() < 0.05]
  for a in busy:
    scale = float(rng.uniform(2.0, 4.0))
    day = routine(tracer, a, day0, scale=scale)
    calls += day
    changed.add(a.id)
    notes.append(day_note(a, 'busier_day', day, day0, f'{scale:.1f}x its usual volume, usual tools and targets'))
  return calls, notes, changed


def _requests(calls: List[Tuple[str, List[dict]]], agents: Dict[str, Agent]) -> List[bytes]:
  """OTLP/JSON lines: one ExportTraceServiceRequest per 10 minutes, one resourceSpans per service."""
  batches: Dict[int, Dict[str, List[dict]]] = {}
  for service, spans in calls:
    t = int(spans[0]['startTimeUnixNano']) // 1_000_000_000
    batches.setdefault(t // 600, {}).setdefault(service, []).extend(spans)
  lines = []
  for key in sorted(batches):
    blocks = []
    for service, spans in sorted(batches[key].items()):
      spans.sort(key=lambda s: int(s['startTimeUnixNano']))
      agent = agents[service]
      blocks.append({
          'resource': {'attributes': [_attr('service.name', service), _attr('service.version', agent.version),
                                      _attr('cloud.region', 'us-east-1'),
                                      _attr('telemetry.sdk.language', 'python')]},
          'scopeSpans': [{'scope': {'name': 'opentelemetry.instrumentation.genai', 'version': '0.4b0'},
                          'spans': spans}]})
    lines.append(orjson.dumps({'resourceSpans': blocks}))
  return lines


def _inventory_rows(crew: List[Agent], first_day0: float, cloud: Optional[CloudSide]) -> List[List[str]]:
  """A row per agent (declared tools, registered 90 days before; joint: ``runs_as``) and role."""
  rows = [[a.id, 'ai_agent', f'{a.team}-team@example.com', a.team, 'prod', 'medium',
           'genai', ';'.join(f'genai:execute_tool:{t}' for t in a.declared),
           iso(first_day0 - 90 * DAY), '', 'active', a.service, a.service] + ([cloud.runs_as(a.id)] if cloud else [])
          for a in crew]
  roles = {cloud.runs_as(a.id): a for a in crew} if cloud else {}
  return rows + [[arn, 'workload_identity', f'{a.team}-team@example.com', a.team, 'prod', 'medium', '', '',
                  iso(first_day0 - 90 * DAY), '', 'active', arn.rsplit('/', 1)[-1], '', '']
                 for arn, a in sorted(roles.items())]


def generate_agents(out_dir: str, agents: int = 40, days: int = 7, seed: int = 7,
                    end: str = DEFAULT_END, append: bool = False, joint: bool = False) -> Dict[str, int]:
  """Writes the agent fleet's traces (``history/``, ``live/``), inventory, labels and benign cases.

  ``append``: add to a sample already written by ``pipeline.generate`` (its inventory, labels and
  benign files get the agents' rows) instead of writing a sample of agents alone. ``joint``: the
  fleet's CloudTrail records too (``pipeline/agent_cloud.py``, from a stream of their own).
  """
  if days < 2:
    raise ValueError('need at least 2 days: history and a live day')
  rng = np.random.default_rng([seed, 17])
  tracer = Tracer(rng)
  crew = fleet(agents, rng)
  tracer.cloud = cloud = CloudSide(np.random.default_rng([seed, 17, 1]), crew, tracer) if joint else None
  by_service = {a.service: a for a in crew}
  make_day_dirs(out_dir)
  labels, benign = [], []
  counts = {'agents': len(crew), 'history_tool_calls': 0, 'live_tool_calls': 0}
  counts.update({'history_cloud_events': 0, 'live_cloud_events': 0, 'history_changes': cloud.history_changes}
                if cloud else {})
  for d, day0 in enumerate(sample_days(end, days)):
    live = d == days - 1
    calls: List = []
    taken: set = set()
    if live:
      attack_calls, labels = _attacks(tracer, crew, day0)
      attack_calls += cloud.attacks(day0, {l['identity'] for l in labels}) if cloud else []
      taken |= {l['identity'] for l in labels} | (cloud.attacked if cloud else set())
    changes, notes, changed = _changes(tracer, crew, day0, live, taken)
    if cloud:
      more, more_notes, more_changed = cloud.changes(routine, day0, live, taken | changed)
      changes, notes, changed = changes + more, notes + more_notes, changed | more_changed
    calls += changes
    if live:
      benign += notes
      calls += attack_calls
    for a in crew:
      if a.id not in changed:
        calls += routine(tracer, a, day0)
    date = iso(day0)[:10]
    path = os.path.join(out_dir, 'live' if live else 'history', f'otel-traces-{date}.jsonl')
    with open(path, 'wb') as f:
      for line in _requests(calls, by_service):
        f.write(line + b'\n')
    counts['live_tool_calls' if live else 'history_tool_calls'] += len(calls)
    if cloud:
      if live:
        cloud.outside_use(day0)
      counts['live_cloud_events' if live else 'history_cloud_events'] += cloud.write_day(out_dir, day0, live)
  if cloud:
    labels = [l if l['scenario'] == 'agent_identity_forged_by_other_service'  # spans only: no cloud call made
              else dict(l, principal=cloud.runs_as(l['identity'])) for l in labels] + cloud.labels
    benign = [dict(n, principal=cloud.runs_as(n['identity'])) for n in benign]
  write_inventory(out_dir, _inventory_rows(crew, sample_days(end, days)[0], cloud), append)
  write_cases(out_dir, 'labels.json', labels, append)
  write_cases(out_dir, 'benign.json', benign, append)
  counts['labels'] = len(labels)
  counts['benign_changes'] = len(benign)
  return counts


def main(argv: Optional[List[str]] = None) -> int:
  ap = argparse.ArgumentParser(description='Write a labelled AI-agent fleet as OTLP/JSON traces.')
  ap.add_argument('--out', required=True)
  ap.add_argument('--agents', type=int, default=40)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--seed', type=int, default=7)
  ap.add_argument('--append', action='store_true', help='Add to a sample pipeline.generate wrote.')
  ap.add_argument('--joint', action='store_true', help='Also the CloudTrail records of the agents\' tool calls.')
  a = ap.parse_args(argv)
  print(json.dumps(generate_agents(a.out, a.agents, a.days, a.seed, append=a.append, joint=a.joint)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
