"""The generator's identity population: NHIs of five kinds and a few humans, with their routine calls.

Each identity carries what its simulated day needs (the calls it makes and how often, its
networks and client) and what the inventory declares about it (type, owner, team,
environment, criticality, expected services). ``pipeline/activity.py`` turns identities
into CloudTrail records; ``pipeline/fleet_change.py`` changes them for good, day after day.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

ACCOUNT = '111122223333'

UA_CLI = 'aws-cli/2.15.30 Python/3.11.8 Linux/5.15.0-1051-aws exe/x86_64.ubuntu.22'
UA_BOTO = 'Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#5.15.0 md/arch#x86_64 lang/python#3.11.8'
UA_JAVA = 'aws-sdk-java/2.25.16 Linux/5.10.213-201.855.amzn2.x86_64 OpenJDK_64-Bit_Server_VM/17.0.10'
UA_GO = 'aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64'
UA_CONSOLE = 'AWS Internal'
UA_REUSE = 'aws-cli/1.29.62 Python/3.8.10 Windows/10 exe/AMD64 botocore/1.31.62'
UA_ATTACKER = 'Boto3/1.28.0 md/Botocore#1.31.0 ua/2.0 os/macos#23.1.0 md/arch#arm64 lang/python#3.9.6'


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
  """One identity: what its simulated day needs and what the inventory declares about it."""
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


def build_fleet(n: int, rng: np.random.Generator) -> List[Identity]:
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
      fleet.append(make_identity(kind, i, team, env, nets, rng))
  return fleet


def make_identity(kind: str, i: int, team: str, env: str, nets: List[str],
                  rng: np.random.Generator) -> Identity:
  """The ``i``-th identity of a kind in a team: its calls, rate, burst, client and inventory fields."""
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


def expected_services(who: Identity) -> List[str]:
  """What the owning team declared the identity uses: its routine services (sts for everyone)."""
  return sorted({c.service for c in who.calls} | {'sts'})


def expected_actions(who: Identity) -> List[str]:
  """CI accounts declare their actions too (push images, read caches); others only services."""
  if who.kind != 'ci':
    return []
  return ['ecr:*', 's3:GetObject', 's3:PutObject', 'sts:GetCallerIdentity']


# -- harmless calls nobody in the fleet makes: drawn from the project's own taxonomy ----------------
# Categories whose never-seen calls are change, not abuse (domain/taxonomy.py: neither sensitive nor
# high-impact). compute_launch is left out on purpose: the taxonomy does not list it sensitive, but
# an identity launching instances or tasks that no identity of the fleet ever launched is what
# cryptomining and persistence look like; labelling it harmless would ask the detector to be blind to it.
HARMLESS_CATEGORIES = ('data_read', 'enumerate', 'data_write', 'auth_other')
# auth_other rows that a client upgrade never starts making: human sign-ins.
NOT_A_CLIENT_CALL = {('signin', 'ConsoleLogin'), ('sts', 'AssumeRoleWithSAML')}
# What the verbs of domain/taxonomy/prefixes.csv act on, per service (the suffix of the action
# name: verb + noun, e.g. describe + Volumes = ec2:DescribeVolumes); also the suffixes of aws.csv's
# glob rows (ec2 Describe*, iam List*, ...). Data-plane and read-side nouns of real AWS APIs.
VERB_NOUNS = {
    'ec2': {'describe': ('Volumes', 'Subnets', 'Vpcs', 'Images', 'Snapshots', 'NetworkInterfaces',
                         'InstanceTypes', 'RouteTables', 'AvailabilityZones', 'LaunchTemplates')},
    's3': {'get': ('BucketLocation', 'BucketVersioning', 'ObjectTagging', 'BucketTagging', 'ObjectAttributes'),
           'list': ('ObjectVersions', 'MultipartUploads', 'Parts'), 'head': ('Bucket',), 'put': ('ObjectTagging',)},
    'dynamodb': {'describe': ('TimeToLive', 'ContinuousBackups', 'Limits', 'Endpoints'),
                 'list': ('Tables', 'TagsOfResource', 'Backups'), 'batchget': ('Item',), 'scan': ('',)},
    'sqs': {'get': ('QueueAttributes', 'QueueUrl'), 'list': ('Queues', 'QueueTags', 'DeadLetterSourceQueues')},
    'sns': {'get': ('TopicAttributes',), 'list': ('Topics', 'SubscriptionsByTopic')},
    'kinesis': {'describe': ('StreamSummary', 'Limits'), 'list': ('Shards', 'Streams'), 'get': ('ShardIterator',)},
    'lambda': {'getfunction': ('Configuration', 'Concurrency', 'CodeSigningConfig'),
               'listfunctions': ('',), 'list': ('Aliases', 'Versions', 'EventSourceMappings', 'Layers')},
    'logs': {'describe': ('LogStreams', 'LogGroups', 'MetricFilters'), 'get': ('QueryResults', 'LogRecord'),
             'put': ('LogEvents',)},
    'cloudwatch': {'put': ('MetricData',), 'get': ('MetricStatistics', 'MetricData'),
                   'list': ('Metrics', 'Dashboards'), 'describe': ('Alarms',)},
    'kms': {'list': ('Aliases', 'Keys', 'ResourceTags'), 'describe': ('Key',), 'get': ('PublicKey', 'KeyRotationStatus')},
    'ecr': {'describe': ('Images', 'Repositories', 'ImageScanFindings'), 'list': ('Images',),
            'get': ('LifecyclePolicy', 'DownloadUrlForLayer'), 'batchget': ('Image',)},
    'ecs': {'describe': ('Clusters', 'TaskDefinition', 'ContainerInstances', 'Services', 'Tasks'),
            'list': ('Tasks', 'Services', 'Clusters')},
    'eks': {'describe': ('Cluster', 'Nodegroup', 'Addon'), 'list': ('Nodegroups', 'Clusters', 'Addons')},
    'cloudformation': {'describe': ('StackResources', 'StackEvents', 'Stacks'), 'list': ('StackResources', 'Exports'),
                       'get': ('Template',)},
    'bedrock': {'invokemodel': ('WithResponseStream',), 'converse': ('', 'Stream'), 'list': ('FoundationModels',)},
    'iam': {'get': ('Role', 'Policy', 'PolicyVersion', 'InstanceProfile'), 'list': ('RoleTags', 'InstanceProfiles')},
    'organizations': {'describe': ('Organization',), 'list': ('Roots',)},
    'secretsmanager': {'list': ('SecretVersionIds',), 'describe': ('Secret',)},
    'xray': {'put': ('TraceSegments', 'TelemetryRecords'), 'get': ('SamplingRules', 'ServiceGraph')},
    'sts': {'get': ('CallerIdentity', 'AccessKeyInfo')},
    'cloudtrail': {'lookup': ('Events',), 'describe': ('Trails',)},
}
_CAMEL = {'batchget': 'BatchGet', 'getfunction': 'GetFunction', 'listfunctions': 'ListFunctions',
          'invokemodel': 'InvokeModel'}


def _taxonomy_text(name: str) -> List[dict]:
  import csv
  import io
  from importlib import resources
  text = resources.files('postauth.domain').joinpath('taxonomy', name).read_text()
  return list(csv.DictReader(io.StringIO('\n'.join(l for l in text.splitlines() if l.strip() and not l.startswith('#')))))


def harmless_calls() -> List[Tuple[str, str, str]]:
  """(service, action, category) of every harmless AWS call the project's taxonomy names: the exact
  rows of ``domain/taxonomy/aws.csv`` in ``HARMLESS_CATEGORIES``, and each ``VERB_NOUNS`` verb
  (a verb prefix of ``prefixes.csv`` or an aws.csv glob's stem) with its nouns; each kept only when
  the taxonomy itself puts it in a harmless category and the high-impact list does not name it."""
  from postauth.domain import high_impact
  from postauth.domain.taxonomy import Taxonomy
  taxonomy = Taxonomy()
  names = {(r['service'], r['action']) for r in _taxonomy_text('aws.csv') if '*' not in r['action']}
  verbs = {r['verb'] for r in _taxonomy_text('prefixes.csv')}
  stems = {r['action'].rstrip('*').lower() for r in _taxonomy_text('aws.csv') if r['action'].endswith('*')}
  for service, by_verb in VERB_NOUNS.items():
    for verb, nouns in by_verb.items():
      if verb not in verbs and verb not in stems:
        raise ValueError(f'{verb!r} is neither a verb of prefixes.csv nor an aws.csv glob stem')
      names.update((service, _CAMEL.get(verb, verb.capitalize()) + noun) for noun in nouns)
  out = []
  for service, action in sorted(names):
    category = taxonomy.categorize('aws', service, action)
    if (category in HARMLESS_CATEGORIES and (service, action) not in NOT_A_CLIENT_CALL
        and high_impact.what_of(f'{service}:{action}', 'aws') is None):
      out.append((service, action, category))
  return out


def feature_call(service: str, action: str, category: str, who: Identity, feature: str,
                 weight: float) -> Call:
  """A new feature's call as ``who`` makes it: on its own resources of that service when it has
  some, on the feature's bucket for S3, on nothing for listings and sign-ins, else on a resource
  named in its team's namespace (``payments-search-prod``)."""
  read_only = category in ('data_read', 'enumerate')
  own = next((c for c in who.calls if c.service == service and c.resources and c.resources[0]), None)
  if category == 'auth_other' or (category == 'enumerate' and own is None and service != 's3'):
    return Call(service, action, [''], weight, read_only)
  if own is not None:
    return Call(service, action, list(own.resources[:3]), weight, read_only, own.param)
  if service == 's3':
    return Call(service, action, [f'{who.team}-{feature}-{who.environment}/{feature}/{who.name}.json'],
                weight, read_only)
  return Call(service, action, [f'{who.team}-{feature}-{who.environment}'], weight, read_only)
