"""Peers in the stream: novelty that others of the same type start the same day is change.

A finding whose page rests only on shareable novelty (a never-seen sensitive action the
fleet does not routinely make, transforms/judgment.py) waits up to ``delay_seconds`` of
event time after its first window closed. Meanwhile every window of every identity of
its type reports the sensitive actions it makes for the first time (a *sighting*). When
the finding is released, if at least ``min_peers`` other identities of the type made each
of its shareable actions for the first time within the day before, the finding is a
fleet change: it stays low, names the fleet notice (``fleet_change_id``, the id
transforms/fleet_notice.py gives the change) and says who else adopted it. Otherwise it
pages as judged. A finding with evidence no rollout explains never waits and is never
folded.

Keyed by identity type: sightings and findings meet in one keyed timer loop (state and
event-time timers in streaming, a grouped walk in batch; transforms/timer_walk.py), so
batch and streaming decide alike: a decision reads only sightings of windows that closed
by the release time. Only windows with a first-time sensitive action and findings reach
this step, each once per window: it touches state per window, never per event.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, Dict, List, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue

from postauth.transforms.judgment import first_time_sensitive
from postauth.transforms.earliest_pending import EarliestPending
from postauth.transforms.packed import PackedStateCoder
from postauth.transforms.timer_walk import at_ms, in_global_window, per_identity, timer_ms
from postauth.transforms.versions import RANK
from postauth.transforms.triage import finding_time as _finding_time
from postauth.transforms.window_context import windows_of


DAY_MS = 86400 * 1000
ADOPTION_KEPT_MS = 2 * DAY_MS  # a decision reads the day before it, plus a day of margin
SIGHTING = 'peer_sighting'


def group_of(identity_type: str) -> str:
  return f'type:{identity_type or ""}'


def fleet_change_id(group: str, action: str, day: int) -> str:
  """The id of the fleet notice for ``action`` adopted in ``group`` on UTC ``day`` (as
  transforms/fleet_notice.py names it)."""
  return hashlib.sha256(f'fleet|{group}|{action}|{day}'.encode()).hexdigest()[:24]


class SightingsFn(beam.DoFn):
  """WindowInContext (or an identity's list of them, batch) -> a sighting (identity, its
  first-time sensitive actions) at the window's end."""

  def __init__(self):
    self.sightings = Metrics.counter('postauth', 'peer_sightings')

  def process(self, element):
    for item in windows_of(element):
      yield from self._sighting(item)

  def _sighting(self, item):
    actions = first_time_sensitive(item.window.agg, item.history)
    if not actions:
      return
    self.sightings.inc()
    identity_type = item.context.get('identity_type', '') or item.window.agg.identity_type
    yield TimestampedValue({'kind': SIGHTING, 'group': group_of(identity_type),
                            'identity': item.window.identity, 'actions': actions,
                            'window_end': item.window.window_end}, item.window.window_end - 1e-6)


def holds(finding: Dict) -> bool:
  """A version whose page rests only on shareable novelty: it waits for peers."""
  basis = finding.get('page_basis') or {}
  return (RANK.get(finding.get('severity'), 0) >= RANK['medium'] and not basis.get('evidence')
          and bool(basis.get('shareable')))


class _Corroborator:
  """The decision at one timer time, on plain values (state in streaming, locals in batch)."""

  def __init__(self, delay_seconds: float, min_peers: int):
    self._delay_ms = int(delay_seconds * 1000)
    self._min = min_peers
    self.adopters: Dict[str, Dict[str, int]] = {}  # action -> {identity: first window end (ms)}
    self.held = Metrics.counter('postauth', 'findings_held_for_peers')
    self.folded = Metrics.counter('postauth', 'findings_peer_corroborated')

  def due(self, entry: Tuple[int, Dict]) -> int:
    ms, x = entry
    if x.get('kind') != SIGHTING and holds(x):
      return max(ms, timer_ms(_finding_time(x)) + self._delay_ms)
    return ms

  def step(self, now: int, waiting: List[Tuple[int, Dict]]):
    """(versions to emit, entries still waiting, next timer in ms or None).

    Adopters are kept ``ADOPTION_KEPT_MS`` (2 days: a decision looks back one day) and the step
    asks for a timer when the oldest is due to go, so a group that falls silent (no more
    sightings or findings to tick it) leaves no state behind. Pruning at ``now`` before
    handling what is due is that timer's work, so batch (every timer fires) and streaming (a
    new entry may reset the timer to a later time) decide from the same adopters."""
    self._prune(now)
    timed = [(self.due(e), e) for e in waiting]  # once per entry and tick (a group waits on many)
    due = sorted(((t, e) for t, e in timed if t <= now),
                 key=lambda te: (te[0], te[1][1].get('kind') != SIGHTING, te[1][0],
                                 te[1][1].get('updates', 0), te[1][1].get('finding_id', '')))
    rest = [e for t, e in timed if t > now]
    out = []
    for at, (ms, x) in due:
      if x.get('kind') == SIGHTING:
        for action in x['actions']:
          seen = self.adopters.setdefault(action, {})
          seen[x['identity']] = min(seen.get(x['identity'], ms), ms)
        continue
      if holds(x):
        self.held.inc()
        x = self._decide(x, at)
      out.append(TimestampedValue(x, at_ms(at) if at > ms else at_ms(ms)))
    self._prune(now)
    nxt = [t for t, _ in timed if t > now]
    if self.adopters:  # when the oldest adoption goes
      nxt.append(min(t for ids in self.adopters.values() for t in ids.values()) + ADOPTION_KEPT_MS + 1)
    return out, rest, min(nxt) if nxt else None

  def _prune(self, now: int) -> None:
    """Drops adoptions older than ``ADOPTION_KEPT_MS`` by ``now`` (the expiry timer's work)."""
    horizon = now - ADOPTION_KEPT_MS
    self.adopters = {a: kept for a, ids in self.adopters.items()
                     if (kept := {i: t for i, t in ids.items() if t >= horizon})}

  def _decide(self, finding: Dict, at: int) -> Dict:
    """The finding as a fleet change when peers adopted each of its shareable actions."""
    since = at - DAY_MS
    peers: Dict[str, List[str]] = {}
    for item in finding['page_basis']['shareable']:
      action = item.partition(':')[2]
      others = sorted(i for i, t in self.adopters.get(action, {}).items()
                      if i != finding['identity'] and since <= t <= at)
      if len(others) < self._min:
        return finding
      peers[action] = others
    self.folded.inc()
    group = group_of(finding.get('identity_type', ''))
    action = sorted(peers)[0]
    day = int((_finding_time(finding) - 1e-6) // 86400)  # the day of the window's last instant
    named = '; '.join(f'{a}: {len(ids)} ({", ".join(i.rsplit("/", 1)[-1] for i in ids[:3])}'
                      f'{" and more" if len(ids) > 3 else ""})' for a, ids in sorted(peers.items()))
    reason = {'rule': 'peer_corroborated', 'severity': 'low', 'actions': sorted(peers),
              'detail': f'other {finding.get("identity_type") or "same-type"} identities made the same '
                        f'never-seen calls within the day: {named}: a fleet change, not an individual anomaly'}
    basis = dict(finding.get('severity_basis') or {}, peers=f'low ({sum(map(len, peers.values()))} peer adoptions)')
    return dict(finding, severity='low', severity_basis=basis, fleet_change_id=fleet_change_id(group, action, day),
                reasons=[reason] + list(finding['reasons']),
                rules=sorted(set(finding.get('rules', [])) | {'peer_corroborated'}))


class _CorroborateFn(beam.DoFn):
  """Streaming: (group, finding version or sighting) -> versions, each at its decision time."""

  PENDING = BagStateSpec('pending', PackedStateCoder())
  ADOPTERS = ReadModifyWriteStateSpec('adopters', PickleCoder())
  TICK = TimerSpec('tick', TimeDomain.WATERMARK)

  def __init__(self, delay_seconds: float, min_peers: int):
    self._delay = delay_seconds
    self._min = min_peers

  def setup(self):
    self._step = _Corroborator(self._delay, self._min)
    self._earliest = EarliestPending(self._step.due)

  def start_bundle(self):
    self._earliest.start_bundle()

  def process(self, kv, ts=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
              tick=beam.DoFn.TimerParam(TICK)):
    tick.set(at_ms(self._earliest.add(kv[0], pending, (timer_ms(ts), kv[1]))))

  @on_timer(TICK)
  def tick(self, fired=beam.DoFn.TimestampParam, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING),
           adopters=beam.DoFn.StateParam(ADOPTERS), tick=beam.DoFn.TimerParam(TICK)):
    step = self._step
    step.adopters = adopters.read() or {}
    out, rest, nxt = step.step(fired.micros // 1000, list(pending.read()))
    self._earliest.rewrite(key, pending, rest)
    adopters.write(step.adopters) if step.adopters else adopters.clear()
    if nxt is not None:
      tick.set(at_ms(nxt))
    yield from out


def _new_step(delay_seconds: float, min_peers: int):
  return _Corroborator(delay_seconds, min_peers).step


def _walk_start(delay_seconds: float, min_peers: int, stamped: List[Tuple[int, Any]]) -> Tuple[List, int]:
  due = _Corroborator(delay_seconds, min_peers).due
  return stamped, min(due(e) for e in stamped)


def _key(x: Dict) -> str:
  return x['group'] if x.get('kind') == SIGHTING else group_of(x.get('identity_type', ''))


def _waits_for_peers(finding: Dict, _partitions: int) -> int:
  return 0 if holds(finding) else 1


class CorroborateWithPeers(beam.PTransform):
  """(findings, WindowInContext) -> a tuple of finding PCollections (batch: those that never
  wait, those decided by peers; streaming: all, through the step). Findings resting only on
  novelty that at least ``min_peers`` peers of the same type also started within the day
  become low fleet changes.

  In batch only the findings that wait meet the sightings in the keyed step; the rest go by as
  they came (the step would emit them at their own time, unchanged), so the grouping carries a
  type's novel windows, not its whole finding stream. In streaming every finding still goes
  through the step: with the pass-by, the replay's window close -> finding median on Prism was
  ~25% longer (two interleaved pairs). The outputs (two in batch, one in streaming) stay
  apart: the caller hands each to the dedup's grouping as it is (a Flatten before a step would
  be a stage boundary that every finding version crosses encoded).
  """

  def __init__(self, windows: beam.PCollection, delay_seconds: float = 1800.0, min_peers: int = 2):
    super().__init__()
    self._windows = windows
    self._delay = delay_seconds
    self._min = min_peers

  def expand(self, findings):
    if findings.is_bounded:
      waiting, passing = findings | 'WaitsForPeers' >> beam.Partition(_waits_for_peers, 2)
    else:  # streaming: every finding goes through the step (see the docstring)
      waiting, passing = findings, None
    sightings = self._windows | 'Sightings' >> beam.ParDo(SightingsFn())
    both = (in_global_window(waiting, 'FindingsGlobal'), in_global_window(sightings, 'SightingsGlobal'))
    decided = per_identity(both, functools.partial(_new_step, self._delay, self._min),
                           functools.partial(_walk_start, self._delay, self._min),
                           _CorroborateFn(self._delay, self._min), 'WalkPeers', 'AskPeers', key=_key)
    return (decided,) if passing is None else (passing, decided)
