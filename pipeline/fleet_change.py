"""Everyday legitimate change of an NHI fleet, for the generator: the noise a detector must not page on.

Six kinds, each labelled in ``benign.json`` (``kind``), present on every history day
at a daily rate (``HISTORY_RATES``) and all at once on the live "release day"
(``RELEASE_RATES``). Every change is lasting, as in a real fleet: a rolled-out call,
a new network or a new table stays part of the identity's routine on later days.

- ``rollout``: 20-40% of one team's or one type's identities adopt the same new
  harmless call(s) within an hour or two of a release (client upgrade, new feature);
- ``redeploy``: an identity's whole traffic moves to a new network (the old one stops);
- ``backfill``: 2-5x routine volume of routine actions from the usual networks;
- ``new_resources``: new tables, partitions, buckets or recipients that follow the
  identity's naming pattern;
- ``key_rotation``: automation that rotates keys and secrets on a schedule does so;
- ``new_identity``: a new identity joins an existing cohort, with no history of its own.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from postauth.pipeline.synthetic_fleet import Call, make_identity
from postauth.pipeline.sample_layout import DAY, HOUR, benign_note, iso

KINDS = ('rollout', 'redeploy', 'backfill', 'new_resources', 'key_rotation', 'new_identity')

# Per history day: rollouts per day (each to 20-40% of a group), and the share of the
# fleet that redeploys, backfills or gets new resources; new identities per day.
HISTORY_RATES = {'rollouts': 0.6, 'redeploy': 0.03, 'backfill': 0.03, 'new_resources': 0.05,
                 'new_identities': 0.7}
# The release day: much changes at once.
RELEASE_RATES = {'rollouts': 2, 'redeploy': 0.08, 'backfill': 0.06, 'new_resources': 0.12,
                 'new_identities': 3}

# Harmless calls a client upgrade or a new feature starts making: (service, action,
# read_only, resource kind). "own" = one of the identity's own resources, "" = none.
ROLLOUT_CALLS = (
    ('sts', 'GetCallerIdentity', True, ''),
    ('cloudwatch', 'PutMetricData', False, 'namespace'),
    ('xray', 'PutTraceSegments', False, ''),
    ('logs', 'PutLogEvents', False, 'log_group'),
    ('appconfig', 'GetLatestConfiguration', True, 'config'),
    ('s3', 'HeadObject', True, 'own_s3'),
    ('dynamodb', 'DescribeTable', True, 'own_table'),
    ('ec2', 'DescribeTags', True, ''),
    ('kms', 'GenerateDataKey', True, 'own_kms'),
)


@dataclasses.dataclass
class Change:
  """One labelled change: the records it produced and its note for ``benign.json``."""
  records: List[dict]
  note: Dict


def _note(who, kind: str, start: float, end: float, detail: str) -> Dict:
  return benign_note(who.canonical, kind, start, end, detail)


class FleetChange:
  """Applies a day's legitimate change to the fleet (mutating it for good) and simulates its traffic.

  ``day`` returns the changes and the identities whose whole day it simulated (the
  caller simulates everyone else's routine day as usual).
  """

  def __init__(self, sim, rng: np.random.Generator):
    self.sim = sim  # a pipeline.activity.Simulator
    self.rng = rng
    self.joined = 0

  # -- helpers ------------------------------------------------------------------
  def _pick(self, pool: Sequence, share: float, at_least: int = 1) -> List:
    n = min(len(pool), max(at_least, int(round(share * len(pool)))))
    if not pool or n <= 0:
      return []
    return [pool[int(i)] for i in self.rng.choice(len(pool), size=n, replace=False)]

  def _count(self, rate: float) -> int:
    """A daily rate as a count: the integer part, plus one with the fractional part's probability."""
    whole = int(rate)
    return whole + int(self.rng.random() < rate - whole)

  def _own(self, who, service: str):
    return next((c for c in who.calls if c.service == service and c.resources and c.resources[0]), None)

  def _rollout_call(self, spec, who):
    service, action, read_only, kind = spec
    if kind == 'namespace':
      return Call(service, action, [f'{who.team}/{who.kind}'], 1.5, read_only, 'namespace')
    if kind == 'log_group':
      return Call(service, action, [f'/{who.team}/{who.name}'], 1.5, read_only, 'logGroupName')
    if kind == 'config':
      return Call(service, action, [f'{who.team}-{who.environment}-flags'], 1.5, read_only, 'configurationToken')
    if kind.startswith('own_'):
      own = self._own(who, {'own_s3': 's3', 'own_table': 'dynamodb', 'own_kms': 'kms'}[kind])
      if own is None:
        return None
      return Call(service, action, list(own.resources[:3]), 1.5, read_only, own.param)
    return Call(service, action, [''], 1.0, read_only)

  # -- the six kinds ------------------------------------------------------------------
  def rollout(self, fleet, day0: float, taken: Set[str]) -> List[Change]:
    """A release: some of a team's or a type's identities adopt the same new harmless call(s)."""
    rng = self.rng
    nhis = [w for w in fleet if w.kind not in ('human', 'rotator')]
    if rng.random() < 0.5:
      team = nhis[int(rng.integers(len(nhis)))].team
      group, label = [w for w in nhis if w.team == team], f'team {team}'
    else:
      kind = nhis[int(rng.integers(len(nhis)))].kind
      group, label = [w for w in nhis if w.kind == kind], f'{kind} identities'
    specs = [ROLLOUT_CALLS[int(i)] for i in rng.choice(len(ROLLOUT_CALLS), size=int(rng.integers(1, 3)),
                                                      replace=False)]
    free = [w for w in group if w.canonical not in taken]
    adopters = self._pick(free, float(rng.uniform(0.2, 0.4)), at_least=min(3, len(free)))
    release = day0 + float(rng.uniform(8, 16)) * HOUR
    out = []
    for who in adopters:
      calls = [c for c in (self._rollout_call(s, who) for s in specs) if c is not None]
      if not calls:
        continue
      start = release + float(rng.uniform(0, 1.5)) * HOUR  # pods roll over an hour or two
      before = self.sim.normal(who, day0, start)
      who.extra_calls.extend(calls)
      after = self.sim.normal(who, start, day0 + DAY)
      names = ', '.join(f'{c.service}:{c.action}' for c in calls)
      out.append(Change(before + after, _note(who, 'rollout', start, day0 + DAY - 1,
                                              f'release for {label}: now also calls {names}')))
    return out

  def redeploy(self, who, day0: float) -> Change:
    """The identity moves to a new network: the old one stops when the new one starts."""
    rng = self.rng
    old = list(who.networks)
    first = old[0].split('.')
    new = [f'{first[0]}.{int(rng.integers(32, 64)) if first[0] == "10" else first[1]}.{int(rng.integers(0, 255))}']
    t = day0 + float(rng.uniform(1, 20)) * HOUR
    before = self.sim.normal(who, day0, t)
    who.networks = new
    after = self.sim.normal(who, t, day0 + DAY)
    return Change(before + after, _note(who, 'redeploy', t, day0 + DAY - 1,
                                        f'moved from {", ".join(old)} to {new[0]} (old network stopped)'))

  def backfill(self, who, day0: float) -> Change:
    """Planned bulk work: 2-5x the routine volume of routine calls, from the usual networks."""
    rng = self.rng
    start = day0 + float(rng.uniform(0, 18)) * HOUR
    hours = float(rng.uniform(2, 6))
    factor = float(rng.uniform(2, 5))
    routine = self.sim.normal(who, day0, day0 + DAY)
    extra = self.sim.normal(who, start, start + hours * HOUR, volume=factor - 1.0)
    return Change(routine + extra, _note(who, 'backfill', start, start + hours * HOUR,
                                         f'{factor:.1f}x routine volume for {hours:.1f} h'))

  def new_resources(self, who, day0: float) -> Change:
    """New resources of a kind the identity already uses, named as its others are; used for good."""
    rng = self.rng
    owned = [i for i, c in enumerate(who.calls) if c.resources and c.resources[0]]
    if not owned:
      return Change(self.sim.normal(who, day0, day0 + DAY), _note(who, 'new_resources', day0, day0, 'none'))
    i = owned[int(rng.integers(len(owned)))]
    call = who.calls[i]
    date = iso(day0)[:10]
    fresh = [_sibling(r, date, k, rng) for k, r in enumerate(call.resources[:int(rng.integers(1, 4))])]
    t = day0 + float(rng.uniform(2, 18)) * HOUR
    before = self.sim.normal(who, day0, t)
    who.calls[i] = dataclasses.replace(call, resources=list(call.resources) + fresh)
    after = self.sim.normal(who, t, day0 + DAY)
    return Change(before + after, _note(who, 'new_resources', t, day0 + DAY - 1,
                                        f'{call.service}:{call.action} now also on {", ".join(fresh)}'))

  def key_rotation(self, who, day0: float) -> Change:
    """A rotation job's scheduled run: new access keys and secret versions, old keys retired."""
    rng = self.rng
    targets = list(who.rotation_targets)
    picked = [targets[int(k)] for k in rng.choice(len(targets), size=min(len(targets), int(rng.integers(2, 5))),
                                                  replace=False)]
    calls = []
    for user in picked:
      calls += [(Call('iam', 'ListAccessKeys', param='userName'), user),
                (Call('iam', 'CreateAccessKey', read_only=False, param='userName'), user),
                (Call('secretsmanager', 'PutSecretValue', read_only=False, param='secretId'), f'rotated/{user}'),
                (Call('iam', 'UpdateAccessKey', read_only=False, param='userName'), user),
                (Call('iam', 'DeleteAccessKey', read_only=False, param='userName'), user)]
    start = day0 + who.rotation_hour * HOUR + float(rng.uniform(0, 600))
    recs = self.sim.normal(who, day0, day0 + DAY) + self.sim.burst(who, start, 6, calls)
    return Change(recs, _note(who, 'key_rotation', start, start + 600,
                              f'rotated the keys of {", ".join(picked)}'))

  def new_identity(self, fleet, day0: float) -> Change:
    """A new identity of an existing cohort (a team's new service): in the inventory, no history."""
    rng = self.rng
    pool = [w for w in fleet if w.kind not in ('human', 'rotator')]
    template = pool[int(rng.integers(len(pool)))]
    self.joined += 1
    index = 80 + self.joined
    nets = [f'10.{int(rng.integers(0, 32))}.{int(rng.integers(0, 255))}']
    who = make_identity(template.kind, index, template.team, template.environment, nets, rng)
    who.created = day0
    fleet.append(who)
    start = day0 + float(rng.uniform(6, 16)) * HOUR
    return Change(self.sim.normal(who, start, day0 + DAY),
                  _note(who, 'new_identity', start, day0 + DAY - 1,
                        f'new {who.identity_type} of team {who.team}, created {iso(day0)[:10]}'))

  # -- one day ------------------------------------------------------------------------
  def day(self, fleet, day0: float, release: bool, taken: Set[str]) -> Tuple[List[Change], Set[str]]:
    """Every change of one day; ``taken`` identities (e.g. the live day's attack targets) are left alone."""
    rates = RELEASE_RATES if release else HISTORY_RATES
    changes: List[Change] = []
    busy: Set[str] = set(taken)
    for who in [w for w in fleet if w.kind == 'rotator']:
      if who.canonical in busy:
        continue
      if release or int(day0 // DAY) % who.rotation_every == who.rotation_phase:
        changes.append(self.key_rotation(who, day0))
        busy.add(who.canonical)
    for _ in range(self._count(rates['rollouts'])):
      done = self.rollout(fleet, day0, busy)
      changes += done
      busy.update(c.note['identity'] for c in done)
    nhis = [w for w in fleet if w.kind not in ('human', 'rotator') and w.canonical not in busy]
    for kind in ('redeploy', 'backfill', 'new_resources'):
      chosen = self._pick([w for w in nhis if w.canonical not in busy], rates[kind], at_least=1)
      for who in chosen:
        changes.append(getattr(self, kind)(who, day0))
        busy.add(who.canonical)
    for _ in range(self._count(rates['new_identities'])):
      change = self.new_identity(fleet, day0)
      changes.append(change)
      busy.add(change.note['identity'])
    return changes, busy


def _sibling(resource: str, date: str, k: int, rng: np.random.Generator) -> str:
  """A new resource following ``resource``'s naming pattern: a partition, a version, a sibling."""
  if '@' in resource:  # a recipient: another address at the same domain
    local, _, domain = resource.partition('@')
    return f'{local.rsplit("-", 1)[0]}-{int(rng.integers(10, 99))}@{domain}'
  if '/' in resource and not resource.startswith(('arn:', 'https://')):  # bucket/key: a new partition
    bucket, _, key = resource.partition('/')
    head, _, tail = key.rpartition('/')
    return f'{bucket}/{head + "/" if head else ""}dt={date}/{tail or f"part-{k}"}'
  parts = resource.rsplit('-', 1)
  if resource.startswith(('arn:', 'https://')) or len(parts) == 1:
    return f'{resource}-v{int(rng.integers(2, 9))}'
  word = ('archive', 'events', 'audit', 'v2', 'replica', 'daily')[int(rng.integers(6))]
  return f'{parts[0]}-{word}-{parts[1]}'  # payments-orders-prod -> payments-orders-archive-prod
