"""What the live day injects into a sample: nine labelled attacks and deliberate benign cases.

Five attacks use the fleet's first identities of a kind (``attack_targets``, chosen before
the day's everyday change so none of it lands on them) and draw from the main stream. The
wider library (four more attacks, a new service deployed, the month-end close spike) draws
from its own stream (``generate``'s seed, stream 2) after them, so adding to it leaves every
other record of a seed as it was; it uses fleet identities free on the live day, plus two
identities of its own (``extra_identities``): a dormant partner-export key and a finance
month-end close job.
"""
from __future__ import annotations

import datetime
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from postauth.pipeline.activity import Simulator
from postauth.pipeline.synthetic_fleet import ACCOUNT, UA_ATTACKER, UA_CLI, UA_GO, UA_JAVA, UA_REUSE, Call, Identity
from postauth.pipeline.sample_layout import DAY, HOUR, iso


def _first(fleet: List[Identity], kind: str, skip: int = 0, env: Optional[str] = None) -> Identity:
  """The ``skip``-th identity of a kind (in ``env`` when there is one there)."""
  matches = [w for w in fleet if w.kind == kind and (env is None or w.environment == env)]
  matches = matches or [w for w in fleet if w.kind == kind]
  return matches[skip % len(matches)]


def _attacks(sim: Simulator, fleet: List[Identity], day0: float):
  """The five injected scenarios of the live day: (records, label)."""
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


def attack_targets(fleet: List[Identity]) -> Set[str]:
  """The identities the live day's first five attacks use (``_attacks``): no legitimate change on them."""
  attacked = {_first(fleet, k).canonical for k in ('ci', 'agent', 'apikey', 'automation')}
  attacked.add(_first(fleet, 'workload', skip=1).canonical)
  return attacked


DORMANT_SILENCE_DAYS = 45  # the dormant key's one day of activity: this long before the live day


def extra_identities(rng: np.random.Generator) -> Dict[str, Identity]:
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


def extra_routine(sim: Simulator, extras: Dict[str, Identity], day0: float) -> List[dict]:
  """The extra identities' own days: the dormant key's single early day, the close job every day."""
  out = []
  close = extras['close']
  out += sim.normal(close, day0, day0 + DAY)
  if month_end_close_day(day0):  # the close runs the same queries, four times over, in office hours
    out += sim.normal(close, day0 + 8 * HOUR, day0 + 20 * HOUR, volume=3.0)
  return out


def dormant_history(sim: Simulator, extras: Dict[str, Identity], live_day0: float) -> Tuple[float, List[dict]]:
  """The dormant key's one working day, ``DORMANT_SILENCE_DAYS`` before the live day: (its start, records)."""
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


def live_day(sim: Simulator, library: Simulator, fleet: List[Identity], extras: Dict[str, Identity],
             day0: float, taken: Set[str]) -> Tuple[List[dict], List[Dict], List[Dict]]:
  """The live day's injected cases: (records, labels, benign notes); ``taken`` gains their identities.

  ``sim`` draws the first five attacks, ``library`` (the wider library's own stream) the rest.
  """
  records: List[dict] = []
  labels: List[Dict] = []
  benign: List[Dict] = []
  for recs, lab in _attacks(sim, fleet, day0):
    records += recs
    labels.append(lab)
    taken.add(lab['identity'])
  for recs, lab in _more_attacks(library, fleet, extras, day0, taken):
    records += recs
    labels.append(lab)
  for recs, note in _more_legitimate_change(library, fleet, extras, day0, taken):
    records += recs
    benign.append({'start': min(r['eventTime'] for r in recs) if recs else iso(day0),
                   'end': max(r['eventTime'] for r in recs) if recs else iso(day0), **note})
  return records, labels, benign
