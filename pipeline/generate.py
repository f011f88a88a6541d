"""A labelled CloudTrail sample: NHI fleets behaving normally, legitimate change, and attacks.

Writes ``history/`` (CloudTrail S3 delivery files, gzipped ``{"Records": [...]}``,
one per day, plus the dormant key's single day of use 45 days before the live day),
``live/`` (the last day as CloudTrail JSON lines), ``inventory.csv``, ``labels.json``
(the nine injected attacks) and ``benign.json`` (legitimate change on the last day
that should stay low or silent). Deterministic for a given seed.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import json
import os
import uuid
import zlib
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import orjson

from postauth.pipeline.fleet_change import FleetChange

ACCOUNT = '111122223333'
PROD_ACCOUNT = '444455556666'
HOUR = 3600.0
DAY = 86400.0
DEFAULT_END = '2026-11-06'  # exclusive: the live day is Thursday 2026-11-05

UA_CLI = 'aws-cli/2.15.30 Python/3.11.8 Linux/5.15.0-1051-aws exe/x86_64.ubuntu.22'
UA_CLI_NEW = 'aws-cli/2.17.2 Python/3.11.9 Linux/6.1.0-1012-aws exe/x86_64.ubuntu.24'
UA_BOTO = 'Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#5.15.0 md/arch#x86_64 lang/python#3.11.8'
UA_JAVA = 'aws-sdk-java/2.25.16 Linux/5.10.213-201.855.amzn2.x86_64 OpenJDK_64-Bit_Server_VM/17.0.10'
UA_GO = 'aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64'
UA_CONSOLE = 'AWS Internal'
UA_REUSE = 'aws-cli/1.29.62 Python/3.8.10 Windows/10 exe/AMD64 botocore/1.31.62'
UA_ATTACKER = 'Boto3/1.28.0 md/Botocore#1.31.0 ua/2.0 os/macos#23.1.0 md/arch#arm64 lang/python#3.9.6'


def iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


@dataclasses.dataclass
class Call:
  """One API call template: service, action and the resources it touches."""
  service: str
  action: str
  resources: Sequence[str] = ('',)
  weight: float = 1.0
  read_only: bool = True
  param: str = 'name'


@dataclasses.dataclass
class Identity:
  name: str
  kind: str  # ci, agent, apikey, workload, automation, human
  identity_type: str  # inventory type
  arn: str
  principal: str  # how CloudTrail's userIdentity looks: AssumedRole or IAMUser
  team: str
  owner: str
  environment: str
  criticality: str
  calls: List[Call]
  rate: float  # mean events per hour at peak
  diurnal: bool
  networks: List[str]  # /24 prefixes "a.b.c"
  user_agent: str
  region: str = 'us-east-1'
  burst: int = 1  # events per session (CI builds come in bursts)
  key_id: str = ''
  extra_calls: List[Call] = dataclasses.field(default_factory=list)  # legit change
  created: Optional[float] = None  # set for identities that join during the sample
  # key rotation jobs: whose keys they rotate, at what hour, every how many days
  rotation_targets: Sequence[str] = ()
  rotation_hour: float = 2.0
  rotation_every: int = 2
  rotation_phase: int = 0

  @property
  def canonical(self) -> str:
    return self.arn


class Writer:
  """Builds CloudTrail records for an identity."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng

  def record(self, who: Identity, t: float, call: Call, resource: str, ip: str,
             ua: Optional[str] = None, error: str = '') -> dict:
    event_id = str(uuid.UUID(bytes=self.rng.bytes(16), version=4))
    if who.principal == 'AssumedRole':
      role = who.arn.rsplit('/', 1)[1]
      session = f'{role}-{int(t // 3600)}'
      ui = {
          'type': 'AssumedRole',
          'principalId': f'AROA{zlib.crc32(role.encode()):012d}:{session}',
          'arn': f'arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}',
          'accountId': ACCOUNT,
          'accessKeyId': 'ASIA' + event_id.replace('-', '')[:16].upper(),
          'sessionContext': {
              'sessionIssuer': {'type': 'Role', 'principalId': f'AROA{role[:8].upper()}',
                                'arn': who.arn, 'accountId': ACCOUNT, 'userName': role},
              'attributes': {'creationDate': iso(t - (t % 3600)), 'mfaAuthenticated': 'false'}},
      }
    else:
      user = who.arn.rsplit('/', 1)[1]
      ui = {'type': 'IAMUser', 'principalId': f'AIDA{user[:10].upper()}', 'arn': who.arn,
            'accountId': ACCOUNT, 'accessKeyId': who.key_id, 'userName': user}
    params: Dict[str, str] = {}
    if resource:
      if call.service == 's3':
        bucket, _, key = resource.partition('/')
        params = {'bucketName': bucket, 'key': key} if key else {'bucketName': bucket}
      else:
        params = {call.param: resource}
    rec = {
        'eventVersion': '1.09',
        'userIdentity': ui,
        'eventTime': iso(t),
        'eventSource': f'{call.service}.amazonaws.com',
        'eventName': call.action,
        'awsRegion': who.region,
        'sourceIPAddress': ip,
        'userAgent': ua or who.user_agent,
        'requestParameters': params or None,
        'responseElements': None,
        'requestID': event_id[::-1],
        'eventID': event_id,
        'readOnly': call.read_only,
        'eventType': 'AwsApiCall',
        'managementEvent': call.service not in ('s3', 'dynamodb'),
        'recipientAccountId': ACCOUNT,
        'eventCategory': 'Data' if call.service in ('s3', 'dynamodb') else 'Management',
    }
    if error:
      rec['errorCode'] = error
      rec['errorMessage'] = f'User is not authorized to perform: {call.service}:{call.action}'
    return rec


def _fleet(n: int, rng: np.random.Generator) -> List[Identity]:
  """The identity population: mostly NHIs of five kinds, a few humans."""
  shares = [('ci', 0.2), ('agent', 0.18), ('apikey', 0.22), ('workload', 0.25),
            ('automation', 0.1), ('human', 0.05)]
  counts = {k: max(1, int(round(n * s))) for k, s in shares}
  counts['workload'] += n - sum(counts.values())
  counts['rotator'] = max(1, n // 80)  # key rotation jobs (automation that rotates keys on a schedule)
  teams = ['payments', 'search', 'growth', 'platform', 'data', 'support', 'identity', 'ml']
  fleet: List[Identity] = []
  for kind, count in counts.items():
    for i in range(count):
      team = teams[int(rng.integers(len(teams)))]
      env = ['prod', 'prod', 'staging', 'dev'][int(rng.integers(4))]
      nets = [f'10.{int(rng.integers(0, 32))}.{int(rng.integers(0, 255))}']
      fleet.append(_identity(kind, i, team, env, nets, rng))
  return fleet


def _identity(kind: str, i: int, team: str, env: str, nets: List[str],
              rng: np.random.Generator) -> Identity:
  r = lambda lo, hi: float(rng.uniform(lo, hi))
  crit = ['low', 'medium', 'high'][int(rng.integers(3))]
  if kind == 'ci':
    name = f'ci-build-{team}-{i:02d}'
    repo = f'{team}-svc-{i:02d}'
    calls = [
        Call('ecr', 'GetAuthorizationToken', weight=1),
        Call('ecr', 'BatchCheckLayerAvailability', [repo], 3, param='repositoryName'),
        Call('ecr', 'InitiateLayerUpload', [repo], 2, False, 'repositoryName'),
        Call('ecr', 'UploadLayerPart', [repo], 5, False, 'repositoryName'),
        Call('ecr', 'CompleteLayerUpload', [repo], 2, False, 'repositoryName'),
        Call('ecr', 'PutImage', [repo], 1, False, 'repositoryName'),
        Call('s3', 'GetObject', [f'ci-cache-{team}/{repo}/deps-{k}.tgz' for k in range(6)], 3),
        Call('s3', 'PutObject', [f'ci-artifacts-{team}/{repo}/build.tar'], 1, False),
        Call('sts', 'GetCallerIdentity', weight=0.5)]
    nets = ['172.31.%d' % int(rng.integers(0, 255))]
    return Identity(name, kind, 'service_account', f'arn:aws:iam::{ACCOUNT}:role/{name}',
                    'AssumedRole', team, f'{team}-devops@example.com', 'ci', crit, calls,
                    rate=r(8, 25), diurnal=True, networks=nets, user_agent=UA_CLI, burst=int(rng.integers(12, 26)))
  if kind == 'agent':
    name = f'agent-{team}-assistant-{i:02d}'
    recipients = [f'ops-{team}-{k}@example.com' for k in range(4)]
    calls = [
        Call('bedrock', 'InvokeModel', ['anthropic.claude-3-haiku'], 6, param='modelId'),
        Call('dynamodb', 'Query', [f'{team}-kb-{i:02d}'], 4, param='tableName'),
        Call('dynamodb', 'GetItem', [f'{team}-tickets'], 2, param='tableName'),
        Call('ses', 'SendEmail', recipients, 1, False, 'destination'),
        Call('sns', 'Publish', [f'arn:aws:sns:us-east-1:{ACCOUNT}:{team}-agent-updates'], 1, False, 'topicArn')]
    return Identity(name, kind, 'ai_agent', f'arn:aws:iam::{ACCOUNT}:role/{name}', 'AssumedRole',
                    team, f'{team}-lead@example.com', env, crit, calls, rate=r(4, 12),
                    diurnal=True, networks=nets, user_agent=UA_BOTO, burst=int(rng.integers(2, 5)))
  if kind == 'apikey':
    name = f'svc-{team}-api-{i:02d}'
    secrets = [f'{env}/{team}/api-{i:02d}/{s}' for s in ('db-password', 'stripe-token')[:1 + i % 2]]
    calls = [
        Call('secretsmanager', 'GetSecretValue', secrets, 1, param='secretId'),
        Call('s3', 'GetObject', [f'{team}-uploads-{env}/inbox/{k}.json' for k in range(20)], 4),
        Call('s3', 'PutObject', [f'{team}-uploads-{env}/processed/{k}.json' for k in range(20)], 2, False),
        Call('sqs', 'SendMessage', [f'https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/{team}-jobs'], 2, False, 'queueUrl'),
        Call('sqs', 'ReceiveMessage', [f'https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/{team}-jobs'], 3, False, 'queueUrl')]
    key = 'AKIA' + ''.join('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'[int(x)] for x in rng.integers(0, 32, 16))
    return Identity(name, kind, 'api_key', f'arn:aws:iam::{ACCOUNT}:user/{name}', 'IAMUser',
                    team, f'{team}-backend@example.com', env, crit, calls, rate=r(3, 9),
                    diurnal=False, networks=nets, user_agent=UA_GO, key_id=key)
  if kind == 'workload':
    name = f'wl-{team}-{i:02d}'
    tables = [f'{team}-orders-{env}', f'{team}-sessions-{env}']
    calls = [
        Call('dynamodb', 'GetItem', tables, 5, param='tableName'),
        Call('dynamodb', 'Query', tables[:1], 3, param='tableName'),
        Call('dynamodb', 'PutItem', tables, 2, False, 'tableName'),
        Call('s3', 'GetObject', [f'{team}-config-{env}/app/{k}.yaml' for k in range(5)], 1),
        Call('kms', 'Decrypt', [f'arn:aws:kms:us-east-1:{ACCOUNT}:key/{team}-{env}'], 1, param='keyId')]
    return Identity(name, kind, 'workload_identity', f'arn:aws:iam::{ACCOUNT}:role/{name}', 'AssumedRole',
                    team, f'{team}-sre@example.com', env, crit, calls, rate=r(5, 14),
                    diurnal=False, networks=nets + [nets[0][:-1] + str((int(nets[0][-1]) + 1) % 10)],
                    user_agent=UA_JAVA)
  if kind == 'automation':
    name = f'automation-{team}-{i:02d}'
    calls = [
        Call('ec2', 'DescribeInstances', weight=3), Call('ec2', 'DescribeSecurityGroups', weight=2),
        Call('iam', 'GetRole', [f'{team}-app-role'], 1, param='roleName'),
        Call('iam', 'ListAttachedRolePolicies', [f'{team}-app-role'], 1, param='roleName'),
        Call('cloudformation', 'DescribeStacks', [f'{team}-stack'], 2, param='stackName'),
        Call('s3', 'GetObject', [f'tfstate-{team}/terraform.tfstate'], 1)]
    return Identity(name, kind, 'service_account', f'arn:aws:iam::{ACCOUNT}:role/{name}', 'AssumedRole',
                    team, f'{team}-infra@example.com', 'prod', 'high', calls, rate=r(4, 10),
                    diurnal=False, networks=nets, user_agent=UA_GO, burst=int(rng.integers(8, 16)))
  if kind == 'rotator':
    name = f'automation-{team}-keyrotator-{i:02d}'
    calls = [Call('iam', 'ListUsers', weight=1), Call('iam', 'GetAccessKeyLastUsed', [f'svc-{team}-api-{k:02d}' for k in range(6)], 2, param='userName'),
             Call('secretsmanager', 'DescribeSecret', [f'rotated/svc-{team}-api-{k:02d}' for k in range(6)], 1, param='secretId')]
    who = Identity(name, kind, 'service_account', f'arn:aws:iam::{ACCOUNT}:role/{name}', 'AssumedRole',
                   team, f'{team}-infra@example.com', 'prod', 'high', calls, rate=r(1, 3),
                   diurnal=False, networks=nets, user_agent=UA_GO, burst=int(rng.integers(3, 6)))
    who.rotation_targets = [f'svc-{team}-api-{k:02d}' for k in range(6)] + [f'svc-{team}-batch-{k:02d}' for k in range(3)]
    who.rotation_hour = float(rng.uniform(1, 5))
    who.rotation_every = int(rng.integers(1, 3))
    who.rotation_phase = int(rng.integers(0, who.rotation_every))
    return who
  name = f'human-{team}-{i:02d}'
  calls = [Call('ec2', 'DescribeInstances', weight=3), Call('cloudwatch', 'GetMetricData', weight=3),
           Call('logs', 'FilterLogEvents', [f'/aws/{team}'], 2, param='logGroupName'),
           Call('s3', 'ListBuckets', weight=1)]
  return Identity(name, kind, 'human', f'arn:aws:iam::{ACCOUNT}:user/{name}', 'IAMUser',
                  team, f'{name}@example.com', 'prod', 'medium', calls, rate=r(2, 6), diurnal=True,
                  networks=['198.51.100'], user_agent=UA_CONSOLE, key_id='ASIA' + name.upper()[:12].ljust(16, 'X'))


def _hour_factor(who: Identity, t: float) -> float:
  if not who.diurnal:
    return 1.0
  dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
  weekend = dt.weekday() >= 5
  work = 8 <= dt.hour < 19
  return (0.35 if weekend else 1.0) * (1.0 if work else 0.12)


class Simulator:
  def __init__(self, rng: np.random.Generator, rate_scale: float = 1.0):
    self.rng = rng
    self.rate_scale = rate_scale
    self.writer = Writer(rng)

  def _pick(self, calls: Sequence[Call]) -> Tuple[Call, str]:
    weights = np.array([c.weight for c in calls], dtype=float)
    call = calls[int(self.rng.choice(len(calls), p=weights / weights.sum()))]
    return call, call.resources[int(self.rng.integers(len(call.resources)))]

  def _ip(self, who: Identity, networks: Optional[List[str]] = None) -> str:
    nets = networks or who.networks
    return f'{nets[int(self.rng.integers(len(nets)))]}.{int(self.rng.integers(2, 250))}'

  def normal(self, who: Identity, start: float, end: float, volume: float = 1.0,
             calls: Optional[List[Call]] = None, networks: Optional[List[str]] = None,
             ua: Optional[str] = None) -> List[dict]:
    """Routine activity: Poisson sessions per hour, each a short burst of calls."""
    rng = self.rng
    calls = calls or who.calls + who.extra_calls
    hours = np.arange(start, end, HOUR)
    lam = np.array([who.rate * _hour_factor(who, t) for t in hours]) * volume * self.rate_scale / who.burst
    sessions = rng.poisson(lam)
    starts = np.repeat(hours, sessions) + rng.uniform(0, HOUR, int(sessions.sum()))
    if who.burst == 1:
      times = starts
    else:
      sizes = rng.integers(who.burst // 2, who.burst + 1, len(starts))
      offsets = np.concatenate([np.cumsum(rng.uniform(1, 8, n)) for n in sizes]) if len(sizes) else np.zeros(0)
      times = np.repeat(starts, sizes) + offsets
    times = np.sort(times[times < end])
    weights = np.array([c.weight for c in calls], dtype=float)
    picks = rng.choice(len(calls), size=len(times), p=weights / weights.sum())
    res_u = rng.random(len(times))
    errors = rng.random(len(times)) < 0.003
    nets = networks or who.networks
    net_i = rng.integers(0, len(nets), len(times))
    hosts = rng.integers(2, 250, len(times))
    out = []
    for k, ts in enumerate(times.tolist()):
      call = calls[picks[k]]
      res = call.resources[int(res_u[k] * len(call.resources))]
      ip = f'{nets[net_i[k]]}.{hosts[k]}'
      out.append(self.writer.record(who, ts, call, res, ip, ua, 'AccessDenied' if errors[k] else ''))
    return out

  def burst(self, who: Identity, start: float, minutes: float, calls: List[Tuple[Call, str]],
            ip: Optional[str] = None, ua: Optional[str] = None, error: str = '',
            errors: Optional[Sequence[str]] = None) -> List[dict]:
    """Calls spread evenly over a few minutes (an attack step or a deliberate change).

    ``errors`` gives each call its own errorCode ("" for success) instead of ``error``.
    """
    out = []
    for k, (call, res) in enumerate(calls):
      ts = start + minutes * 60.0 * k / max(1, len(calls)) + float(self.rng.uniform(0, 2))
      out.append(self.writer.record(who, ts, call, res, ip or self._ip(who), ua,
                                    errors[k] if errors is not None else error))
    return out


def _first(fleet: List[Identity], kind: str, skip: int = 0, env: Optional[str] = None) -> Identity:
  matches = [w for w in fleet if w.kind == kind and (env is None or w.environment == env)]
  matches = matches or [w for w in fleet if w.kind == kind]
  return matches[skip % len(matches)]


def _attacks(sim: Simulator, fleet: List[Identity], day0: float):
  """The five injected scenarios of the live day: (records, label)."""
  rng = sim.rng
  out = []

  def label(who, scenario, recs):
    times = [r['eventTime'] for r in recs]
    out.append((recs, {'identity': who.canonical, 'scenario': scenario,
                       'start': min(times), 'end': max(times)}))

  # 1. A CI build account starts changing deployments in prod.
  ci = _first(fleet, 'ci')
  svc = ['payments-api', 'checkout', 'ledger-worker']
  calls = []
  for s in svc:
    calls += [(Call('ecs', 'DescribeServices', read_only=True, param='service'), f'prod-cluster/{s}'),
              (Call('ecs', 'RegisterTaskDefinition', read_only=False, param='taskDefinition'), f'{s}-prod'),
              (Call('ecs', 'UpdateService', read_only=False, param='service'), f'prod-cluster/{s}')]
  calls += [(Call('lambda', 'UpdateFunctionCode20150331v2', read_only=False, param='functionName'), 'prod-card-tokenizer')]
  label(ci, 'ci_deploys_to_prod', sim.burst(ci, day0 + 10.2 * HOUR, 25, calls))

  # 2. An AI agent notifies a large audience it never reached before.
  agent = _first(fleet, 'agent')
  calls = [(Call('ses', 'SendEmail', read_only=False, param='destination'), f'customer-{k:05d}@mail.example.net')
           for k in range(120)]
  calls += [(Call('sns', 'Publish', read_only=False, param='topicArn'),
             f'arn:aws:sns:us-east-1:{ACCOUNT}:customers-all-marketing')] * 30
  label(agent, 'agent_notifies_new_audience', sim.burst(agent, day0 + 13.1 * HOUR, 35, calls))

  # 3. An API key pulls many secrets, then rotates credentials it never touched.
  key = _first(fleet, 'apikey')
  secrets = [f'prod/{t}/{n}' for t in ('payments', 'identity', 'data', 'search', 'growth')
             for n in ('db-password', 'admin-token', 'api-key', 'oauth-client', 'signing-key', 'replica-password', 'smtp', 'root-ca')]
  calls = [(Call('secretsmanager', 'ListSecrets'), '')] * 3
  calls += [(Call('secretsmanager', 'GetSecretValue', param='secretId'), s) for s in secrets]
  calls += [(Call('secretsmanager', 'PutSecretValue', read_only=False, param='secretId'), s) for s in secrets[:4]]
  calls += [(Call('secretsmanager', 'RotateSecret', read_only=False, param='secretId'), s) for s in secrets[4:6]]
  calls += [(Call('iam', 'CreateAccessKey', read_only=False, param='userName'), 'svc-backup-admin')]
  label(key, 'apikey_secret_sweep_and_rotation', sim.burst(key, day0 + 3.3 * HOUR, 30, calls))

  # 4. A workload identity reused from a new source reads other resources.
  wl = _first(fleet, 'workload', skip=1)
  ip = '203.0.113.77'
  calls = [(Call('dynamodb', 'Scan', param='tableName'), t) for t in
           ('payments-customers-prod', 'identity-users-prod', 'payments-cards-prod') for _ in range(8)]
  calls += [(Call('s3', 'GetObject'), f'data-lake-prod/exports/customers/part-{k:04d}.parquet') for k in range(30)]
  calls += [(Call('dynamodb', 'GetItem', param='tableName'), wl.calls[0].resources[0])] * 6
  label(wl, 'workload_identity_reuse', sim.burst(wl, day0 + 16.0 * HOUR, 50, calls, ip=ip, ua=UA_ATTACKER))

  # 5. Privilege escalation by an automation identity: a handful of high-impact calls.
  auto = _first(fleet, 'automation')
  calls = [(Call('iam', 'AttachRolePolicy', read_only=False, param='roleName'), 'automation-breakglass'),
           (Call('iam', 'CreateAccessKey', read_only=False, param='userName'), 'svc-legacy-admin'),
           (Call('iam', 'PutUserPolicy', read_only=False, param='userName'), 'svc-legacy-admin')]
  label(auto, 'automation_privilege_escalation', sim.burst(auto, day0 + 21.25 * HOUR, 4, calls))
  return out


def _attack_targets(fleet: List[Identity]) -> Set[str]:
  """The identities the live day's first five attacks use (``_attacks``): no legitimate change on them."""
  attacked = {_first(fleet, k).canonical for k in ('ci', 'agent', 'apikey', 'automation')}
  attacked.add(_first(fleet, 'workload', skip=1).canonical)
  return attacked


# -- the wider scenario library --------------------------------------------------------
# Drawn from their own random stream (``generate``'s seed, stream 2), after the five
# attacks and the daily legitimate changes, so adding them leaves every other record of
# a given seed as it was. Attacks use fleet identities free on the live day; the dormant
# key and the month-end close job are identities of their own (``_extra_identities``).

DORMANT_SILENCE_DAYS = 45  # the dormant key's one day of activity: this long before the live day


def _extra_identities(rng: np.random.Generator) -> Dict[str, Identity]:
  """A partner-export key abandoned after one day of use, and a finance month-end close job."""
  dormant = Identity(
      'svc-data-partner-export-00', 'apikey', 'api_key', f'arn:aws:iam::{ACCOUNT}:user/svc-data-partner-export-00',
      'IAMUser', 'data', 'data-backend@example.com', 'prod', 'high',
      [Call('s3', 'GetObject', [f'partner-exports-prod/outbound/{k}.csv' for k in range(12)], 4),
       Call('s3', 'PutObject', [f'partner-exports-prod/outbound/{k}.csv' for k in range(12)], 2, False),
       Call('s3', 'ListObjectsV2', ['partner-exports-prod'], 1)],
      rate=6.0, diurnal=False, networks=['10.40.12'], user_agent=UA_GO,
      key_id='AKIA' + ''.join('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'[int(x)] for x in rng.integers(0, 32, 16)))
  # Its own inventory type (its own cohort, or the global one while it has too few windows):
  # inside service_account, its close-day spikes lowered every service account's calibrated
  # score (the CI deploy attack of the test sample went from 7.7 to 5.0).
  close = Identity(
      'batch-payments-close-00', 'batch', 'batch_job', f'arn:aws:iam::{ACCOUNT}:role/batch-payments-close-00',
      'AssumedRole', 'payments', 'payments-finance@example.com', 'prod', 'high',
      [Call('athena', 'StartQueryExecution', ['finance-close'], 3, False, 'workGroup'),
       Call('athena', 'GetQueryResults', ['finance-close'], 4, param='workGroup'),
       Call('s3', 'GetObject', [f'ledger-exports-prod/daily/part-{k:03d}.parquet' for k in range(30)], 4),
       Call('s3', 'PutObject', [f'finance-reports-prod/close/report-{k}.csv' for k in range(6)], 1, False)],
      rate=10.0, diurnal=True, networks=['10.41.7'], user_agent=UA_JAVA, burst=4)
  return {'dormant': dormant, 'close': close}


def month_end_close_day(day0: float) -> bool:
  """A day of the month-end close calendar: the month's last workday and the next month's first four."""
  d = datetime.datetime.fromtimestamp(day0, datetime.timezone.utc).date()
  if d.weekday() >= 5:
    return False
  nxt = d + datetime.timedelta(days=1)
  while nxt.weekday() >= 5:
    nxt += datetime.timedelta(days=1)
  if nxt.month != d.month:
    return True  # workday -1
  workday = sum(1 for k in range(1, d.day + 1) if d.replace(day=k).weekday() < 5)
  return workday <= 4


def _extra_routine(sim: Simulator, extras: Dict[str, Identity], day0: float) -> List[dict]:
  """The extra identities' own days: the dormant key's single early day, the close job every day."""
  out = []
  close = extras['close']
  out += sim.normal(close, day0, day0 + DAY)
  if month_end_close_day(day0):  # the close runs the same queries, four times over, in office hours
    out += sim.normal(close, day0 + 8 * HOUR, day0 + 20 * HOUR, volume=3.0)
  return out


def _dormant_history(sim: Simulator, extras: Dict[str, Identity], live_day0: float) -> Tuple[float, List[dict]]:
  day0 = live_day0 - DORMANT_SILENCE_DAYS * DAY
  return day0, sim.normal(extras['dormant'], day0 + 9 * HOUR, day0 + 17 * HOUR)


def _free(fleet: List[Identity], kind: str, taken: set) -> Identity:
  """The first identity of a kind not already in a live-day scenario."""
  for w in fleet:
    if w.kind == kind and w.canonical not in taken:
      return w
  return _first(fleet, kind)


def _more_attacks(sim: Simulator, fleet: List[Identity], extras: Dict[str, Identity], day0: float,
                  taken: set):
  """Four more attacks on the live day, (records, label) pairs: recon, dormant, reuse, slow exfiltration."""
  rng = sim.rng
  out = []

  def label(who, scenario, recs):
    taken.add(who.canonical)
    times = [r['eventTime'] for r in recs]
    out.append((recs, {'identity': who.canonical, 'scenario': scenario, 'start': min(times), 'end': max(times)}))

  # 6. Reconnaissance: a poisoned build step enumerates the account, mostly denied.
  ci = _free(fleet, 'ci', taken)
  probes = [('iam', 'ListUsers'), ('iam', 'ListRoles'), ('iam', 'ListPolicies'), ('iam', 'GetAccountAuthorizationDetails'),
            ('s3', 'ListBuckets'), ('ec2', 'DescribeInstances'), ('ec2', 'DescribeSnapshots'), ('ec2', 'DescribeVpcs'),
            ('rds', 'DescribeDBInstances'), ('rds', 'DescribeDBSnapshots'), ('lambda', 'ListFunctions20150331'),
            ('secretsmanager', 'ListSecrets'), ('ssm', 'DescribeParameters'), ('kms', 'ListKeys'),
            ('dynamodb', 'ListTables'), ('eks', 'ListClusters'), ('organizations', 'ListAccounts'),
            ('cloudtrail', 'DescribeTrails'), ('guardduty', 'ListDetectors'), ('sns', 'ListTopics')]
  calls, errors = [], []
  for sweep in range(3):  # the tool retries its whole list three times
    for service, action in probes:
      calls.append((Call(service, action), ''))
      allowed = service in ('s3', 'sts') or (service == 'ec2' and action == 'DescribeInstances')
      errors.append('' if allowed else 'AccessDenied')
  label(ci, 'reconnaissance_access_denied_sweep',
        sim.burst(ci, day0 + 7.6 * HOUR, 14, calls, ua=UA_CLI, errors=errors))

  # 7. A key abandoned 45 days ago is used again, from outside, for the data it used to move.
  dormant = extras['dormant']
  calls = [(Call('s3', 'ListBuckets'), '')] + [(Call('s3', 'ListObjectsV2'), 'partner-exports-prod')] * 2
  calls += [(Call('s3', 'GetObject'), f'partner-exports-prod/outbound/{k}.csv') for k in range(12)]
  calls += [(Call('secretsmanager', 'GetSecretValue', param='secretId'), 'prod/data/warehouse-readonly')]
  label(dormant, 'dormant_identity_revived',
        sim.burst(dormant, day0 + 19.7 * HOUR, 20, calls, ip='203.0.113.145', ua=UA_ATTACKER))

  # 8. A leaked API key replayed from a new network and client: the same routine calls, same volume.
  # (the busiest free key: a replay of a near-silent key's routine would be a handful of calls)
  key = max((w for w in fleet if w.kind == 'apikey' and w.canonical not in taken),
            key=lambda w: w.rate, default=_free(fleet, 'apikey', taken))
  label(key, 'credential_reuse_new_network_and_agent',
        sim.normal(key, day0 + 18 * HOUR, day0 + 21 * HOUR, networks=['192.0.2'], ua=UA_REUSE))

  # 9. Slow exfiltration: a workload reads a few objects of prefixes it never read, every hour for 7 h.
  wl = _free(fleet, 'workload', taken)
  prefixes = ['data-lake-prod/finance/ledger', 'data-lake-prod/customers/profiles', 'data-lake-prod/hr/payroll']
  n = 28
  times = np.sort(day0 + 9 * HOUR + rng.uniform(0, 7 * HOUR, n))
  recs = []
  for k, t in enumerate(times.tolist()):
    res = f'{prefixes[k % len(prefixes)]}/2026/part-{k:05d}.parquet'
    recs += sim.burst(wl, t, 0, [(Call('s3', 'GetObject'), res)])
  label(wl, 'slow_exfiltration_new_prefixes', recs)
  return out


def _more_legitimate_change(sim: Simulator, fleet: List[Identity], extras: Dict[str, Identity], day0: float,
                            taken: set):
  """Two more legitimate changes of the live day, (records, note) pairs, expected low or silent."""
  out = []
  # A new release makes a workload use a service it never used: a queue it now publishes to.
  wl = _free(fleet, 'workload', taken)
  taken.add(wl.canonical)
  queue = f'https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/{wl.team}-events-{wl.environment}'
  calls = [Call('sqs', 'SendMessage', [queue], 3, False, 'queueUrl'),
           Call('sqs', 'GetQueueAttributes', [queue], 1, param='queueUrl')]
  out.append((sim.normal(wl, day0 + 14 * HOUR, day0 + DAY, volume=0.4, calls=calls),
              {'identity': wl.canonical, 'change': 'deploy_new_service_sqs', 'expected': 'low_or_none'}))
  # The month-end close spike: four times the usual volume, as on every close day in its history.
  close = extras['close']
  if month_end_close_day(day0):
    out.append(([], {'identity': close.canonical, 'change': 'month_end_close_spike', 'expected': 'none',
                     'start': iso(day0 + 8 * HOUR), 'end': iso(day0 + 20 * HOUR)}))
  return out


def expected_services(who: Identity) -> List[str]:
  """What the owning team declared the identity uses: its routine services (sts for everyone)."""
  return sorted({c.service for c in who.calls} | {'sts'})


def expected_actions(who: Identity) -> List[str]:
  """CI accounts declare their actions too (push images, read caches); others only services."""
  if who.kind != 'ci':
    return []
  return ['ecr:*', 's3:GetObject', 's3:PutObject', 'sts:GetCallerIdentity']


def _days(end: str, days: int) -> List[float]:
  last = datetime.datetime.fromisoformat(end).replace(tzinfo=datetime.timezone.utc).timestamp() - DAY
  return [last - (days - 1 - d) * DAY for d in range(days)]


def _write_history(out_dir: str, day0: float, records: List[dict]) -> None:
  """One day of history as a CloudTrail S3 delivery file (gzipped ``{"Records": [...]}``)."""
  date = iso(day0)[:10]
  path = os.path.join(out_dir, 'history', f'{ACCOUNT}_CloudTrail_us-east-1_{date.replace("-", "")}.json.gz')
  with gzip.open(path, 'wb', compresslevel=3) as f:
    f.write(orjson.dumps({'Records': records}))


def generate(out_dir: str, identities: int = 200, days: int = 7, seed: int = 7,
             end: str = DEFAULT_END, rate_scale: float = 0.4, agents: int = 0) -> Dict[str, int]:
  """Writes the sample; returns counts for the caller to report. ``agents``: also an AI-agent
  fleet as OpenTelemetry traces (``pipeline/agent_fleet.py``), in the same sample."""
  if days < 2:
    raise ValueError('need at least 2 days: history and a live day')
  rng = np.random.default_rng(seed)
  fleet = _fleet(identities, rng)
  sim = Simulator(rng, rate_scale)
  starts = _days(end, days)
  os.makedirs(os.path.join(out_dir, 'history'), exist_ok=True)
  os.makedirs(os.path.join(out_dir, 'live'), exist_ok=True)
  labels, benign = [], []
  sim2 = Simulator(np.random.default_rng([seed, 2]), rate_scale)  # the wider library's own stream
  sim3 = Simulator(np.random.default_rng([seed, 3]), rate_scale)  # everyday fleet change's own stream
  change = FleetChange(sim3, _identity, Call, sim3.rng)
  extras = _extra_identities(sim2.rng)
  counts = {'identities': len(fleet) + len(extras), 'history_events': 0, 'live_events': 0}
  old_day0, old_records = _dormant_history(sim2, extras, starts[-1])
  _write_history(out_dir, old_day0, old_records)
  counts['history_events'] += len(old_records)
  for d, day0 in enumerate(starts):
    live = d == days - 1
    records: List[dict] = []
    # The live day's attack targets are chosen first and left out of the day's change.
    taken = _attack_targets(fleet) if live else set()
    changes, changed = change.day(fleet, day0, release=live, taken=taken)
    for who in fleet:
      if who.canonical not in changed or who.canonical in taken:
        records += sim.normal(who, day0, day0 + DAY)
    for c in changes:
      records += c.records
      if live:
        benign.append(c.note)
    taken |= changed
    if live:
      for recs, lab in _attacks(sim, fleet, day0):
        records += recs
        labels.append(lab)
        taken.add(lab['identity'])
      for recs, lab in _more_attacks(sim2, fleet, extras, day0, taken):
        records += recs
        labels.append(lab)
      for recs, note in _more_legitimate_change(sim2, fleet, extras, day0, taken):
        records += recs
        benign.append({'start': min(r['eventTime'] for r in recs) if recs else iso(day0),
                       'end': max(r['eventTime'] for r in recs) if recs else iso(day0), **note})
    records += _extra_routine(sim2, extras, day0)
    records.sort(key=lambda r: r['eventTime'])
    date = iso(day0)[:10]
    if live:
      path = os.path.join(out_dir, 'live', f'cloudtrail-{date}.jsonl')
      with open(path, 'wb') as f:
        for r in records:
          f.write(orjson.dumps(r) + b'\n')
      counts['live_events'] += len(records)
    else:
      _write_history(out_dir, day0, records)
      counts['history_events'] += len(records)
  with open(os.path.join(out_dir, 'inventory.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['identity', 'identity_type', 'owner', 'team', 'environment', 'criticality',
                'expected_services', 'expected_actions', 'created_at', 'last_rotated_at', 'status',
                'display_name'])
    for who in fleet + list(extras.values()):
      created = starts[0] - DAY * (30 + zlib.crc32(who.name.encode()) % 400)
      if who.created is not None:
        created = who.created
      if who is extras['dormant']:
        created = old_day0 - 400 * DAY
      w.writerow([who.canonical, who.identity_type, who.owner, who.team, who.environment,
                  who.criticality, ';'.join(expected_services(who)), ';'.join(expected_actions(who)),
                  iso(created), iso(created + DAY * (zlib.crc32(who.arn.encode()) % 30)), 'active',
                  who.name])
  with open(os.path.join(out_dir, 'labels.json'), 'w') as f:
    json.dump(labels, f, indent=1)
  with open(os.path.join(out_dir, 'benign.json'), 'w') as f:
    json.dump(benign, f, indent=1)
  counts['labels'] = len(labels)
  counts['identities'] = len(fleet) + len(extras)  # with the identities that joined
  counts['benign_changes'] = len(benign)
  if agents:
    from postauth.pipeline.agent_fleet import generate_agents
    counts['otel'] = generate_agents(out_dir, agents, days, seed, end, append=True)
  return counts
