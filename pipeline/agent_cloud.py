"""The cloud side of the AI-agent fleet (``agent_fleet --joint``): the CloudTrail records its tool
calls cause, under the role each agent's runtime assumes, so that a cloud audit event can be
joined to the tool call in flight when it was made.

Invariants (a join relies on them):
- each agent runs as its own role ``arn:aws:iam::<account>:role/<agent id>``, except the first
  three ops agents of ``sre``, which share ``role/agent-ops-sre-shared``; the inventory's
  ``runs_as`` names it as the CloudTrail parser canonicalises an assumed-role session;
- every record a tool call causes is dated (whole seconds) inside that call's ``execute_tool``
  span, which lasts 1-8 s, and comes from the agent's own private address and ``Boto3`` client;
- one strong key per agent, by its place in the fleet (``STRONG_KEYS``): the session's
  ``sourceIdentity``, the role session name, ``agent/<id>`` in the user agent, or none (time alone);
- the live day's ``agent_credential_used_outside`` records fall in no span of any agent.

Attacks: ``agent_credential_used_outside``, ``agent_injected_tool_reads_secrets``,
``agent_tool_exports_other_team_data``. Benign changes (on history days at a daily rate, on the
live day in ``benign.json``): ``new_tool`` (its cloud calls touch the agent's own team's resources)
and ``tool_new_own_table``. In a joint fleet every label and benign case carries ``principal``, the
role ARN of its agent (but the forged agent's label: another service made those calls).
"""
from __future__ import annotations

import hashlib
import math
import os
import uuid
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
import orjson

from postauth.pipeline.sample_layout import HOUR, benign_note, iso
from postauth.pipeline.synthetic_fleet import ACCOUNT

REGION = 'us-east-1'
KINDS = ('support', 'coding', 'data', 'ops')
BOTO_UA = ('Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.8 '
           'md/pyimpl#CPython cfg/retry-mode#standard Botocore/1.34.0')
CLI_UA = ('aws-cli/2.15.0 md/Botocore#2.15.0 ua/2.0 os/linux#6.5.0 md/arch#x86_64 lang/python#3.11.6 '
          'md/pyimpl#CPython exe/x86_64.ubuntu.22 prompt/off command/s3.cp')
STRONG_KEYS = ('source_identity', 'session_name', 'user_agent', 'none')
SHARED_ROLE = ('ops', 'sre', 3)  # (kind, team, how many of its first agents) run as one role
HISTORY_TOOL = 'summarize_thread'  # in use from the first day, no cloud call: an injection's carrier
NEW_TOOLS = {'support': ['lookup_refund'], 'coding': ['fetch_artifact', 'read_build_logs'],
             'data': ['profile_table'], 'ops': ['tail_logs', 'describe_service']}
NEW_TABLES = {'data': ['churn', 'refunds', 'sessions', 'ltv'],
              'support': ['returns', 'order-history', 'subscriptions']}
OTHER_TEAMS = ('finance', 'growth', 'marketing', 'hr')
SECRETS = ([('secretsmanager', 'GetSecretValue', 'secretId', s) for s in
            ('prod/payments/stripe-api-key', 'prod/db/admin', 'prod/github/deploy-token', 'prod/okta/api-token')]
           + [('ssm', 'GetParameter', 'name', p) for p in
              ('/prod/shared/openai-api-key', '/prod/warehouse/service-password')])


class CloudCall(NamedTuple):
  """One API call: CloudTrail's service (eventSource less ``.amazonaws.com``), action, request,
  and the resource it touched (``resources``: what the parser reads when the request names none)."""
  service: str
  action: str
  params: Optional[dict]
  arn: str = ''
  rtype: str = ''
  response: Optional[dict] = None


def _s3(action: str, bucket: str, key: str) -> CloudCall:
  return CloudCall('s3', action, {'bucketName': bucket, 'key': key, 'Host': f'{bucket}.s3.{REGION}.amazonaws.com'},
                   f'arn:aws:s3:::{bucket}/{key}', 'AWS::S3::Object')


def _arn(service: str, rest: str) -> str:
  return f'arn:aws:{service}:{REGION}:{ACCOUNT}:{rest}'


def day_note(agent, kind: str, day: List[Tuple[str, List[dict]]], day0: float, detail: str) -> Dict:
  """The benign note of an agent's changed day: from its first to its last tool call."""
  times = [int(spans[2]['startTimeUnixNano']) / 1e9 for _, spans in day] or [day0]
  return benign_note(agent.id, kind, min(times), max(times), detail)


class Runtime:
  """How one agent's runtime reaches the cloud: its role, address, client and strong key."""

  def __init__(self, agent):
    kind, team, first = SHARED_ROLE
    self.agent = agent
    self.role = f'agent-{kind}-{team}-shared' if (agent.kind, agent.team) == (kind, team) and agent.i < first \
        else agent.id
    self.arn = f'arn:aws:iam::{ACCOUNT}:role/{self.role}'
    self.role_id = 'AROA' + hashlib.sha1(self.role.encode()).hexdigest()[:17].upper()
    self.key = STRONG_KEYS[(agent.i + KINDS.index(agent.kind)) % len(STRONG_KEYS)]  # every kind has each key
    self.ip = f'10.{40 + KINDS.index(agent.kind)}.{agent.i // 200}.{10 + agent.i % 200}'
    self.user_agent = BOTO_UA + (f' agent/{agent.id}' if self.key == 'user_agent' else '')
    self.order_tables = [f'{agent.team}-orders']


class CloudSide:
  """The fleet's CloudTrail records, drawn from their own random stream, one day at a time.

  Gives every support agent and every other data agent ``summarize_thread`` from the first day
  (its inventory row declares it). ``tool_call`` is the tracer's hook for each tool call.
  """

  def __init__(self, rng: np.random.Generator, crew: Sequence, tracer):
    self.rng, self.crew, self.tracer = rng, list(crew), tracer
    self.runtimes = {a.id: Runtime(a) for a in self.crew}
    for a in self.crew:
      if a.kind == 'support' or (a.kind == 'data' and a.i % 2):
        a.tools.append((HISTORY_TOOL, 1.0))
        a.declared = sorted(a.declared + [HISTORY_TOOL])
    self.records: List[dict] = []
    self.busy: List[Tuple[int, int]] = []  # the day's tool spans, [start, end] in ns
    self.compromised: Dict[str, Tuple[str, str, float, float]] = {}  # id -> (tool, effect, from, to)
    self.outside: Optional[object] = None  # the agent whose role's credentials are used outside
    self.dropbox = ''  # the bucket outside the organisation that the exporting tool writes to
    self.attacked: Set[str] = set()
    self.labels: List[dict] = []
    self.history_changes: Dict[str, int] = {}  # benign changes on history days, by kind

  def runs_as(self, agent_id: str) -> str:
    return self.runtimes[agent_id].arn

  def tool_call(self, agent, tool: str, start_ns: int, args: dict, attrs: List[dict], emit: bool = True) -> int:
    """The end (ns) of a tool call's span starting at ``start_ns``; its cloud records, dated inside
    the span, join the day's (none when ``emit`` is false: spans another service forged)."""
    end_ns = start_ns + int(self.rng.uniform(1.0, 8.0) * 1e9)
    self.busy.append((start_ns, end_ns))
    if not emit:
      return end_ns
    rt = self.runtimes[agent.id]
    hit = self.compromised.get(agent.id)
    if hit and hit[0] == tool and hit[2] <= start_ns / 1e9 <= hit[3]:
      calls = self._injected(rt, hit[1])
    else:
      calls = self._calls(rt, tool, args, {a['key']: next(iter(a['value'].values())) for a in attrs})
    lo, hi = math.ceil(start_ns / 1e9), math.floor(end_ns / 1e9)
    for t, call in zip(np.sort(self.rng.integers(lo, hi + 1, size=len(calls))).tolist(), calls):
      self.records.append(self._record(rt, t, call))
    return end_ns

  def _calls(self, rt: Runtime, tool: str, args: dict, attrs: Dict[str, object]) -> List[CloudCall]:
    """The cloud calls of one tool call on the agent's own resources (none: SaaS or local tools)."""
    a, rng = rt.agent, self.rng
    team, part = a.team, int(rng.integers(0, 400))
    ns = str(attrs.get('k8s.namespace.name') or rng.choice(a.namespaces))
    if tool in ('run_sql', 'profile_table'):
      owner, _, name = str(attrs.get('db.collection.name') or rng.choice(a.tables)).partition('.')
      query = str(uuid.UUID(bytes=rng.bytes(16), version=4))
      group = _arn('athena', f'workgroup/{team}-agents')
      return [CloudCall('athena', 'StartQueryExecution',
                        {'queryString': f'SELECT * FROM {owner}.{name} LIMIT 100', 'workGroup': f'{team}-agents',
                         'queryExecutionContext': {'database': owner}}, group, 'AWS::Athena::WorkGroup',
                        {'queryExecutionId': query}),
              CloudCall('athena', 'GetQueryResults', {'queryExecutionId': query, 'maxResults': 1000}, group,
                        'AWS::Athena::WorkGroup'),
              _s3('GetObject', f'warehouse-{owner}', f'{name}/part-{part:05d}.parquet')]
    if tool == 'read_file' and str(attrs.get('file.path', '')).startswith('/data/'):
      _, _, owner, rest = str(attrs['file.path']).split('/', 3)
      return [_s3('GetObject', f'data-{owner}', rest)]
    if tool == 'export_table':
      owner, _, name = str(args.get('table') or rng.choice(a.tables)).partition('.')
      return [_s3('GetObject', f'warehouse-{owner}', f'{name}/part-{part:05d}.parquet'),
              _s3('PutObject', str(args.get('bucket') or f'exports-{team}'), f'{name}/{rng.bytes(4).hex()}.csv.gz')]
    if tool == 'send_email':
      return [CloudCall('ses', 'SendEmail', {'source': f'support@{team}.example.com'},
                        _arn('ses', f'identity/{team}.example.com'), 'AWS::SES::Identity')]
    if tool in ('lookup_order', 'lookup_refund'):
      table = f'{team}-refunds' if tool == 'lookup_refund' else str(rng.choice(rt.order_tables))
      return [CloudCall('dynamodb', 'GetItem', {'tableName': table, 'key': {'order_id': {'S': 'HIDDEN_DUE_TO_SECURITY_REASONS'}},
                                                'consistentRead': False},
                        _arn('dynamodb', f'table/{table}'), 'AWS::DynamoDB::Table')]
    if tool == 'get_metrics':
      return [CloudCall('monitoring', 'GetMetricData', {'metricDataQueries': [{'id': 'm1', 'metricStat': {
          'metric': {'namespace': f'{team}/{ns}', 'metricName': 'p99_latency'}, 'period': 60, 'stat': 'p99'}}]},
          _arn('cloudwatch', f'metric/{team}/{ns}'), 'AWS::CloudWatch::Metric')]
    if tool == 'run_kubectl':
      return [CloudCall('eks', 'DescribeCluster', {'name': f'{team}-prod'}, _arn('eks', f'cluster/{team}-prod'),
                        'AWS::EKS::Cluster')]
    if tool == 'describe_service':
      return [CloudCall('ecs', 'DescribeServices', {'cluster': f'{team}-prod', 'services': [ns]},
                        _arn('ecs', f'cluster/{team}-prod'), 'AWS::ECS::Cluster')]
    if tool == 'restart_service':
      return [CloudCall('ecs', 'UpdateService', {'cluster': f'{team}-prod', 'service': ns, 'forceNewDeployment': True},
                        _arn('ecs', f'service/{team}-prod/{ns}'), 'AWS::ECS::Service')]
    if tool in ('tail_logs', 'read_build_logs'):
      group = f'/aws/ecs/{team}-{ns}' if tool == 'tail_logs' else f'/aws/codebuild/{team}-{rng.choice(a.repos)}'
      return [CloudCall('logs', 'FilterLogEvents', {'logGroupName': group, 'filterPattern': 'ERROR'},
                        _arn('logs', f'log-group:{group}'), 'AWS::Logs::LogGroup')]
    if tool == 'fetch_artifact':
      return [_s3('GetObject', f'artifacts-{team}', f'{rng.choice(a.repos)}/build-{part}.tar.gz')]
    return []

  def _injected(self, rt: Runtime, effect: str) -> List[CloudCall]:
    """What a compromised tool does instead: reads secrets, or copies another team's data out."""
    rng = self.rng
    if effect == 'secrets':
      picks = rng.choice(len(SECRETS), size=int(rng.integers(1, 4)), replace=False)
      return [CloudCall(s, action, {key: name, 'withDecryption': True} if s == 'ssm' else {key: name},
                        _arn(s, f'parameter{name}' if s == 'ssm' else f'secret:{name}'),
                        'AWS::SSM::Parameter' if s == 'ssm' else 'AWS::SecretsManager::Secret')
              for s, action, key, name in (SECRETS[int(i)] for i in picks)]
    other = str(rng.choice([t for t in OTHER_TEAMS if t != rt.agent.team]))
    reads = [_s3('GetObject', f'data-{other}', f'extracts/part-{int(rng.integers(0, 30))}.csv') if rng.random() < 0.5
             else _s3('GetObject', f'warehouse-{other}', f'customers/part-{int(rng.integers(0, 400)):05d}.parquet')
             for _ in range(int(rng.integers(1, 3)))]
    return reads + [_s3('PutObject', self.dropbox, f'{other}-{rng.bytes(4).hex()}.csv.gz')]

  def _record(self, rt: Runtime, t: int, call: CloudCall, ip: str = '', ua: str = '', key: str = '') -> dict:
    """One CloudTrail record of ``rt``'s assumed-role session at ``t`` (a session per hour)."""
    hour = t - t % 3600
    key = key or rt.key
    session = rt.agent.id if key == 'session_name' else f'botocore-session-{hour}'
    context = {'sessionIssuer': {'type': 'Role', 'principalId': rt.role_id, 'arn': rt.arn, 'accountId': ACCOUNT,
                                 'userName': rt.role},
               'attributes': {'creationDate': iso(hour), 'mfaAuthenticated': 'false'}}
    if key == 'source_identity':
      context['sourceIdentity'] = rt.agent.id
    event_id = str(uuid.UUID(bytes=self.rng.bytes(16), version=4))
    data = call.rtype in ('AWS::S3::Object', 'AWS::DynamoDB::Table')  # object and item calls: data events
    rec = {
        'eventVersion': '1.09',
        'userIdentity': {'type': 'AssumedRole', 'principalId': f'{rt.role_id}:{session}',
                         'arn': f'arn:aws:sts::{ACCOUNT}:assumed-role/{rt.role}/{session}', 'accountId': ACCOUNT,
                         'accessKeyId': 'ASIA' + hashlib.sha1(f'{rt.agent.id}/{hour}'.encode()).hexdigest()[:16].upper(),
                         'sessionContext': context},
        'eventTime': iso(t), 'eventSource': f'{call.service}.amazonaws.com', 'eventName': call.action,
        'awsRegion': REGION, 'sourceIPAddress': ip or rt.ip, 'userAgent': ua or rt.user_agent,
        'requestParameters': call.params, 'responseElements': call.response,
        'requestID': event_id[::-1], 'eventID': event_id,
        'readOnly': call.action.startswith(('Get', 'List', 'Describe', 'Filter')),
        'eventType': 'AwsApiCall', 'managementEvent': not data, 'recipientAccountId': ACCOUNT,
        'eventCategory': 'Data' if data else 'Management'}
    if call.arn:
      rec['resources'] = [{'type': call.rtype, 'ARN': call.arn}]
    return rec

  def _label(self, agent, scenario: str, fmt: str, start: float, end: float) -> None:
    self.attacked.add(agent.id)
    self.labels.append({'identity': agent.id, 'principal': self.runs_as(agent.id), 'scenario': scenario,
                        'format': fmt, 'start': iso(start), 'end': iso(math.ceil(end))})

  def _pick(self, ok: Callable, avoid: Set[str]):
    """An agent that fits, one not yet attacked if any: from the stream, so a seed gives the same."""
    for pool in ([a for a in self.crew if ok(a) and a.id not in avoid], [a for a in self.crew if ok(a)], self.crew):
      if pool:
        return pool[int(self.rng.integers(len(pool)))]

  def attacks(self, day0: float, labelled: Set[str]) -> List[Tuple[str, List[dict]]]:
    """The live day's attacks through tool calls (their spans and records) and the choice of the
    agent whose credentials are used outside (``outside_use``, once the day's spans are known)."""
    rng, calls = self.rng, []
    self.dropbox = f'dropbox-{rng.bytes(6).hex()}'
    for scenario, ok, tool, effect, hour, n, gap in (
        ('agent_injected_tool_reads_secrets', lambda a: HISTORY_TOOL in [t for t, _ in a.tools], HISTORY_TOOL,
         'secrets', 12, 10, (150, 300)),
        ('agent_tool_exports_other_team_data', lambda a: a.kind == 'data', 'export_table', 'exfil', 14, 8, (120, 240))):
      agent = self._pick(ok, labelled | self.attacked)
      times = (day0 + hour * HOUR + rng.uniform(0, HOUR) + np.cumsum(rng.uniform(*gap, size=n))).tolist()
      self.compromised[agent.id] = (tool, effect, times[0], times[-1] + 1)  # its routine calls then too
      spans = [self.tracer.call(agent, t, tool) for t in times]
      calls += [(agent.service, s) for s in spans]
      self._label(agent, scenario, 'joint', times[0], times[-1] + 10)  # past any such span's end
    self.outside = self._pick(lambda a: a.kind != 'coding' and self.runtimes[a.id].role == a.id
                              and self.runtimes[a.id].key != 'source_identity', labelled | self.attacked)
    self.attacked.add(self.outside.id)
    return calls

  def outside_use(self, day0: float) -> None:
    """The chosen agent's role credentials used from outside the fleet with no tool call of any agent
    in flight (a second's margin either side of every span): listing, then reading, over ~10 min."""
    rng, rt = self.rng, self.runtimes[self.outside.id]
    busy = sorted(self.busy)
    start = int(day0 + 9 * HOUR + rng.uniform(0, 8 * HOUR))
    team = rt.agent.team
    calls = [CloudCall('s3', 'ListBuckets', {'Host': f's3.{REGION}.amazonaws.com'}),
             CloudCall('secretsmanager', 'ListSecrets', {'maxResults': 100}), CloudCall('s3', 'ListBuckets', None),
             CloudCall('secretsmanager', 'ListSecrets', {'maxResults': 100, 'nextToken': 'HIDDEN'})]
    calls += [_s3('GetObject', f'{("data", "warehouse")[i % 2]}-{team}', f'extracts/part-{int(rng.integers(0, 30))}.csv')
              for i in range(int(rng.integers(4, 8)))]
    ip = f'203.0.113.{int(rng.integers(10, 250))}'
    times, t = [], start
    for gap in rng.uniform(20, 80, size=len(calls)).tolist():
      t += int(gap)
      while any(s - 1e9 <= t * 1e9 <= e + 1e9 for s, e in busy):
        t += 1
      times.append(t)
    key = '' if rt.key != 'source_identity' else 'none'  # stolen credentials carry no source identity here
    self.records += [self._record(rt, t, c, ip, CLI_UA, key) for t, c in zip(times, calls)]
    self._label(rt.agent, 'agent_credential_used_outside', 'cloudtrail', times[0], times[-1] + 1)

  def changes(self, routine: Callable, day0: float, live: bool, taken: Set[str]
              ) -> Tuple[List, List[dict], Set[str]]:
    """The day's cloud-side benign change (each at a daily rate of one half, twice on the live day):
    an agent adopts a tool calling its own team's resources (kept afterwards); a tool starts
    reading a new table of the agent's own team (kept afterwards)."""
    rng, calls, notes, changed = self.rng, [], [], set()
    kinds = ['tool_new_own_table', 'new_tool'] * 2 if live else [  # the scarcer candidates first
        k for k in ('tool_new_own_table', 'new_tool') if rng.random() < 0.5]
    for kind in kinds:
      free = [a for a in self.crew if a.id not in taken | changed and self._options(a, kind)]
      if not free:
        continue
      a = free[int(rng.integers(len(free)))]
      rt, choice = self.runtimes[a.id], self._options(a, kind)[0]
      if kind == 'new_tool':
        day = routine(self.tracer, a, day0, extra_tools=[choice])
        a.tools.append((choice, 1.5))
        detail = f'adopts {choice}, calling its own team\'s resources'
      else:
        if a.kind == 'data':
          a.tables.append(f'{a.team}.{choice}')
        else:
          rt.order_tables.append(f'{a.team}-{choice}')
        day = routine(self.tracer, a, day0)
        detail = f'{"run_sql" if a.kind == "data" else "lookup_order"} starts reading its own team\'s {choice} table'
      calls += day
      changed.add(a.id)
      if not live:
        self.history_changes[kind] = self.history_changes.get(kind, 0) + 1
      notes.append(dict(day_note(a, kind, day, day0, detail), principal=rt.arn))
    return calls, notes, changed

  def _options(self, agent, kind: str) -> List[str]:
    if kind == 'new_tool':
      return [t for t in NEW_TOOLS[agent.kind] if t not in [u for u, _ in agent.tools]]
    used = agent.tables if agent.kind == 'data' else self.runtimes[agent.id].order_tables
    return [t for t in NEW_TABLES.get(agent.kind, []) if not any(u.endswith(t) for u in used)]

  def write_day(self, out_dir: str, day0: float, live: bool) -> int:
    """The day's records as CloudTrail JSON lines (``cloudtrail-agents-<date>.jsonl``), time order."""
    self.records.sort(key=lambda r: r['eventTime'])
    path = os.path.join(out_dir, 'live' if live else 'history', f'cloudtrail-agents-{iso(day0)[:10]}.jsonl')
    with open(path, 'wb') as f:
      for r in self.records:
        f.write(orjson.dumps(r) + b'\n')
    n, self.records, self.busy = len(self.records), [], []
    return n
