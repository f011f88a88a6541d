"""Everyday legitimate change of an NHI fleet, for the generator: the noise a detector must not page on.

Ten kinds, each labelled in ``benign.json`` (``kind``), present on every history day
at a daily rate (``HISTORY_RATES``) and all at once on the live "release day"
(``RELEASE_RATES``). Every change is lasting, as in a real fleet: a rolled-out call,
a new network or a new table stays part of the identity's routine on later days.

- ``rollout``: 20-40% of one team's or one type's identities adopt the same new
  harmless call(s) within an hour or two of a release (client upgrade, new feature);
- ``novel_harmless``: a rollout of 1-3 calls drawn at random from the project's own taxonomy
  (``synthetic_fleet.harmless_calls``: reads, listings, writes, web-identity sign-ins) that no
  identity of the fleet ever made before, each of the 20-40% adopters starting at its own
  time over 3-8 hours; an S3 call reaches the feature's own new bucket (one new resource kind);
- ``redeploy``: an identity's whole traffic moves to a new network (the old one stops);
- ``scale_out``: a second deployment beside the first: calls also come from a new private /24
  of the fleet's own range (the same /16, or another /16 of the same private block) while the
  old network keeps working;
- ``reschedule``: a workload's pods move between 3-5 new /24s of its cluster's pod network (its
  /16) over the day, a replica on the previous node overlapping each move;
- ``backfill``: 2-5x routine volume of routine actions from the usual networks;
- ``burst``: a paused consumer catching up: silent for 1.5-4 h, then 3x routine volume for 3-6 h;
- ``new_resources``: new tables, partitions, buckets or recipients that follow the
  identity's naming pattern;
- ``key_rotation``: automation that rotates keys and secrets on a schedule does so;
- ``new_identity``: a new identity joins an existing cohort, with no history of its own.

``quiet=True`` (``generate(quiet_history=True)``): history days hold no change at all (no rotation
either) and the live day has about a third of the fleet's NHIs changing at once (``QUIET_RELEASE``):
change no history foreshadows. Scheduled key rotation is left out of that day too: a first-ever
CreateAccessKey for another user is the high-impact evidence the detector must page on.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from postauth.pipeline.synthetic_fleet import Call, feature_call, harmless_calls, make_identity
from postauth.pipeline.sample_layout import DAY, HOUR, benign_note, iso

KINDS = ('rollout', 'novel_harmless', 'redeploy', 'scale_out', 'reschedule', 'backfill', 'burst',
         'new_resources', 'key_rotation', 'new_identity')
PER_IDENTITY = ('redeploy', 'scale_out', 'backfill', 'burst', 'new_resources', 'reschedule')

# Per history day: rollouts and novel-harmless rollouts per day (each to 20-40% of a group),
# the share of the NHIs that redeploy, scale out, backfill, burst or get new resources, the
# share of workloads rescheduled; new identities per day.
HISTORY_RATES = {'rollouts': 0.6, 'novel_rollouts': 0.5, 'redeploy': 0.03, 'scale_out': 0.02,
                 'backfill': 0.03, 'burst': 0.02, 'new_resources': 0.05, 'reschedule': 0.06,
                 'new_identities': 0.7}
# The release day: much changes at once.
RELEASE_RATES = {'rollouts': 2, 'novel_rollouts': 2, 'redeploy': 0.08, 'scale_out': 0.05,
                 'backfill': 0.06, 'burst': 0.04, 'new_resources': 0.12, 'reschedule': 0.12,
                 'new_identities': 3}
# The quiet-history mode's release day: rollouts, then the per-identity kinds in these
# proportions until a third of the NHIs change (QUIET_SHARE).
QUIET_RELEASE = {'rollouts': 1, 'novel_rollouts': 3, 'new_identities': 3}
QUIET_MIX = {'scale_out': 3, 'reschedule': 3, 'burst': 2, 'redeploy': 1, 'backfill': 1, 'new_resources': 1}
QUIET_SHARE = 1 / 3
FEATURES = ('search', 'insights', 'exports', 'billing', 'audit', 'reports', 'sync', 'archive', 'feeds')

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
    self.seen: Set[Tuple[str, str]] = set()  # (service, action) any identity made so far
    self.pool = harmless_calls()
    self.nets: Set[str] = set()  # /24s handed out by scale-outs and reschedules

  def saw(self, records: Sequence[dict]) -> None:
    """Marks the calls of a day's records as made by the fleet (no novel rollout draws them again)."""
    self.seen.update((r['eventSource'].partition('.')[0], r['eventName']) for r in records)

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
  def _group(self, fleet):
    """A release's audience: one team's or one type's NHIs, and how a note names it."""
    rng = self.rng
    nhis = [w for w in fleet if w.kind not in ('human', 'rotator')]
    if rng.random() < 0.5:
      team = nhis[int(rng.integers(len(nhis)))].team
      return [w for w in nhis if w.team == team], f'team {team}'
    kind = nhis[int(rng.integers(len(nhis)))].kind
    return [w for w in nhis if w.kind == kind], f'{kind} identities'

  def _fresh_net(self, fleet, base: str, same16: bool) -> str:
    """A /24 no identity calls from, in ``base``'s /16 or (else) another /16 of its private block.

    Bounded: after 1000 draws (a full /16 in a fleet of thousands), the first free /24 in the
    /16, then in 10.64-127.0/16; the draws (and so every smaller sample) are as before."""
    a, b, _ = base.split('.')
    used = {n for w in fleet for n in w.networks} | self.nets
    for _ in range(1000):
      b2 = b if same16 or a != '10' else str(int(self.rng.integers(0, 64)))
      net = f'{a}.{b2}.{int(self.rng.integers(0, 255))}'
      if net not in used:
        self.nets.add(net)
        return net
    # The /16 is (nearly) full, as in a fleet of thousands: the first free /24 in it, else in 10.64-127.
    for a2, b2 in [(a, b)] + [('10', str(x)) for x in range(64, 128)]:
      for c in range(255):
        net = f'{a2}.{b2}.{c}'
        if net not in used:
          self.nets.add(net)
          return net
    raise ValueError('no free /24 left for a new network')

  def rollout(self, fleet, day0: float, taken: Set[str]) -> List[Change]:
    """A release: some of a team's or a type's identities adopt the same new harmless call(s)."""
    rng = self.rng
    group, label = self._group(fleet)
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

  def novel_harmless(self, fleet, day0: float, taken: Set[str]) -> List[Change]:
    """A release of harmless calls no identity of the fleet ever made, adopted over several hours."""
    rng = self.rng
    fresh = [c for c in self.pool if c[:2] not in self.seen]
    group, label = self._group(fleet)
    free = [w for w in group if w.canonical not in taken]
    if not fresh or not free:
      return []
    specs = [fresh[int(i)] for i in rng.choice(len(fresh), size=min(len(fresh), int(rng.integers(1, 4))),
                                               replace=False)]
    self.seen.update(c[:2] for c in specs)
    feature = FEATURES[int(rng.integers(len(FEATURES)))]
    adopters = self._pick(free, float(rng.uniform(0.2, 0.4)), at_least=min(3, len(free)))
    release, spread = day0 + float(rng.uniform(6, 11)) * HOUR, float(rng.uniform(3, 8)) * HOUR
    offsets = np.sort(rng.uniform(0, spread, len(adopters)))
    if len(offsets) > 1:  # the first adopter at the release, the last ``spread`` later
      offsets[0], offsets[-1] = 0.0, spread
    out = []
    for who, offset in zip(adopters, offsets.tolist()):
      calls = [feature_call(s, a, cat, who, feature, float(rng.uniform(0.5, 2.0))) for s, a, cat in specs]
      start = release + offset
      before = self.sim.normal(who, day0, start)
      who.extra_calls.extend(calls)
      after = self.sim.normal(who, start, day0 + DAY)
      names = [f'{c.service}:{c.action}' for c in calls]
      note = _note(who, 'novel_harmless', start, day0 + DAY - 1,
                   f'{feature} release for {label}, adopted over {spread / HOUR:.1f} h: now also calls '
                   f'{", ".join(names)} (no identity of the fleet made them before)')
      out.append(Change(before + after, dict(note, calls=names, categories=[c[2] for c in specs])))
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

  def scale_out(self, fleet, who, day0: float) -> Change:
    """A second deployment beside the first: a new private /24 of the fleet's range, the old one kept."""
    rng = self.rng
    old = list(who.networks)
    new = self._fresh_net(fleet, old[0], same16=bool(rng.random() < 0.5))
    t = day0 + float(rng.uniform(1, 20)) * HOUR
    before = self.sim.normal(who, day0, t)
    who.networks = old + [new]
    after = self.sim.normal(who, t, day0 + DAY)
    return Change(before + after, dict(_note(who, 'scale_out', t, day0 + DAY - 1,
                                             f'now also calls from {new} beside {", ".join(old)}'),
                                       networks=[new], old_networks=old))

  def reschedule(self, fleet, who, day0: float) -> Change:
    """A workload's pods rescheduled over the day onto nodes of new /24s of its cluster's pod network."""
    rng = self.rng
    old = list(who.networks)
    new = [self._fresh_net(fleet, old[0], same16=True) for _ in range(int(rng.integers(3, 6)))]
    moves = np.sort(rng.uniform(1, 22, len(new))) * HOUR + day0
    records = self.sim.normal(who, day0, float(moves[0]))
    for i, t in enumerate(moves.tolist()):  # each move: the new node, and a replica left on the last one
      who.networks = [new[i], new[i - 1] if i else old[0]]
      records += self.sim.normal(who, t, float(moves[i + 1]) if i + 1 < len(new) else day0 + DAY)
    return Change(records, dict(_note(who, 'reschedule', float(moves[0]), day0 + DAY - 1,
                                      f'pods moved from {", ".join(old)} through {", ".join(new)}'),
                                networks=new, old_networks=old))

  def burst(self, who, day0: float) -> Change:
    """A paused consumer catching up: silent for a while, then 3x its routine volume for hours."""
    rng = self.rng
    pause = day0 + float(rng.uniform(2, 14)) * HOUR
    resume = pause + float(rng.uniform(1.5, 4)) * HOUR
    hours = float(rng.uniform(3, 6))
    recs = (self.sim.normal(who, day0, pause) + self.sim.normal(who, resume, day0 + DAY)
            + self.sim.normal(who, resume, resume + hours * HOUR, volume=2.0))
    return Change(recs, _note(who, 'burst', pause, resume + hours * HOUR,
                              f'paused {(resume - pause) / HOUR:.1f} h, then 3x routine volume for {hours:.1f} h'))

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
  def day(self, fleet, day0: float, release: bool, taken: Set[str],
          quiet: bool = False) -> Tuple[List[Change], Set[str]]:
    """Every change of one day; ``taken`` identities (e.g. the live day's attack targets) are left alone.
    ``quiet``: nothing changes on history days; the release day changes a third of the NHIs."""
    if quiet and not release:
      return [], set()
    rates = QUIET_RELEASE if quiet else RELEASE_RATES if release else HISTORY_RATES
    changes: List[Change] = []
    busy: Set[str] = set(taken)
    for who in [w for w in fleet if w.kind == 'rotator' and not quiet]:
      if who.canonical in busy:
        continue
      if release or int(day0 // DAY) % who.rotation_every == who.rotation_phase:
        changes.append(self.key_rotation(who, day0))
        busy.add(who.canonical)
    nhis = [w for w in fleet if w.kind not in ('human', 'rotator')]
    for kind, n in (('rollout', rates['rollouts']), ('novel_harmless', rates['novel_rollouts'])):
      for _ in range(self._count(n)):
        done = getattr(self, kind)(fleet, day0, busy)
        changes += done
        busy.update(c.note['identity'] for c in done)
    left = max(0, int(round(QUIET_SHARE * len(nhis))) - len(busy - taken))
    weight = sum(QUIET_MIX.values())
    for kind in PER_IDENTITY:
      pool = [w for w in nhis if w.canonical not in busy and (kind != 'reschedule' or w.kind == 'workload')]
      if quiet:
        chosen = self._pick(pool, 0.0, at_least=max(1, int(round(left * QUIET_MIX[kind] / weight))))
      else:
        chosen = self._pick(pool, rates[kind], at_least=1)
      for who in chosen:
        extra = (fleet,) if kind in ('scale_out', 'reschedule') else ()
        changes.append(getattr(self, kind)(*extra, who, day0))
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
