"""What one identity did in one window, as a bounded, mergeable summary.

The summary keeps counts, not events: per action, category, resource, network,
user-agent family and region (and, for spans, the services that emitted them), each
capped so a noisy identity cannot grow it without bound. Beam combines panes of a sliding window into it
(``transforms.aggregate.WindowAggregateFn``), and the model reads it
(``models.features``): it is a domain type, below both, and imports no Beam.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from postauth.domain import evidence as evidence_sample
from postauth.domain.emitter import emitter_of
from postauth.domain.origin import agent_family, network_of
from postauth.domain.event import Event

MAX_KEYS = 256  # distinct values kept per field; beyond it, counted in *_overflow
MAX_EMITTERS = 16  # services emitting one identity's self-named records, per window
EMITTER_EVENTS = 3  # first events kept per emitting service (by time, then id)


_CAPPED = ('actions', 'resources', 'networks', 'agents', 'regions')  # counters of up to MAX_KEYS keys


def _bump(counts: Dict[str, int], key: str, n: int = 1) -> int:
  """Adds to a capped counter; returns how much did not fit."""
  if key in counts or len(counts) < MAX_KEYS:
    counts[key] = counts.get(key, 0) + n
    return 0
  return n


def _add_all(counts: Dict, more: Dict) -> None:
  """Adds every count of ``more`` (uncapped); into an empty counter (a fresh window's first
  pane) as one copy."""
  if not counts:
    counts.update(more)
  else:
    for k, v in more.items():
      counts[k] = counts.get(k, 0) + v


def _note_emitter(emitters: Dict[str, list], emitter: str, n: int, events: List[list]) -> int:
  """Adds ``n`` calls and their first ``events`` ([time, id, action], sorted) to an emitting
  service's entry; returns the calls that did not fit. The events kept are exact under merging
  (the first k of a union are among the first k of each part): batch and streaming name the
  same ones."""
  entry = emitters.get(emitter)
  if entry is None:
    if len(emitters) >= MAX_EMITTERS:
      return n
    emitters[emitter] = [n, [list(x) for x in events[:EMITTER_EVENTS]]]
    return 0
  entry[0] += n
  kept = entry[1]
  for ev in events:
    if len(kept) >= EMITTER_EVENTS and ev[:2] >= kept[-1][:2]:
      break  # ``events`` is sorted: none after it is among the first either
    if not any(k[:2] == ev[:2] for k in kept):  # the same event seen twice (a replay)
      kept.append(list(ev))
      kept.sort(key=lambda k: (k[0], k[1]))
      del kept[EMITTER_EVENTS:]
  return 0


class WindowAggregate:
  """Mergeable per-identity-window counts."""

  FIELDS = ('count', 'errors', 'read_only', 'actions', 'action_category',
            'categories', 'resources', 'networks', 'agents', 'regions',
            'panes', 'first_time', 'last_time', 'overflow', 'identity_type', 'network_spans',
            'evidence', 'emitters')
  # ``evidence`` is a property over a store and the stores still to merge into it (``merge``
  # with ``lazy``): most windows are never flagged, and never need their panes' samples merged.
  # A part still to merge is a Store, or an object whose ``store()`` gives one (a sample not yet
  # decoded from a shuffle) and whose ``len`` is its number of keys.
  __slots__ = tuple(f for f in FIELDS if f != 'evidence') + ('_evidence', '_evidence_parts')

  def __init__(self):
    self.count = 0
    self.errors = 0
    self.read_only = 0
    self.actions: Dict[str, int] = {}  # "service:Action" -> events
    self.action_category: Dict[str, str] = {}
    self.categories: Dict[str, int] = {}
    self.resources: Dict[str, int] = {}
    self.networks: Dict[str, int] = {}
    self.agents: Dict[str, int] = {}
    self.regions: Dict[str, int] = {}
    self.panes: Dict[int, int] = {}  # pane start (s) -> events, for exact unions of windows
    self.first_time = float('inf')
    self.last_time = float('-inf')
    self.overflow = 0
    self.identity_type = ''
    # network -> [first, last] event time: whether a new network was used *beside* the usual
    # ones (stolen credentials) or after them (a redeploy); kept for the networks counted above.
    self.network_spans: Dict[str, List[float]] = {}
    # A bounded sample of the events themselves, with their ids: domain/evidence.py.
    self._evidence: evidence_sample.Store = {}
    self._evidence_parts: List[evidence_sample.Store] = []
    # Records that name their own identity (spans, domain/emitter.py): the service that emitted
    # them -> [calls, [[time, event id, action] of its first EMITTER_EVENTS]]; empty for other logs.
    self.emitters: Dict[str, list] = {}

  def add(self, e: Event, pane_seconds: Optional[int] = None,
          sample: bool = True) -> 'WindowAggregate':
    self.count += 1
    if not e.success:
      self.errors += 1
    if e.read_only:
      self.read_only += 1
    t = e.event_time
    action = f'{e.service}:{e.action}'
    actions = self.actions  # _bump inlined for the counters every event touches
    if action in actions or len(actions) < MAX_KEYS:
      actions[action] = actions.get(action, 0) + 1
      self.action_category[action] = e.category
    else:
      self.overflow += 1
    categories = self.categories
    categories[e.category] = categories.get(e.category, 0) + 1
    if e.resource:
      self.overflow += _bump(self.resources, e.resource)
    net = network_of(e.source_ip)
    networks = self.networks
    if net in networks or len(networks) < MAX_KEYS:
      networks[net] = networks.get(net, 0) + 1
      span = self.network_spans.get(net)
      if span is None:
        self.network_spans[net] = [t, t]
      elif t < span[0]:
        span[0] = t
      elif t > span[1]:
        span[1] = t
    else:
      self.overflow += 1
    if sample:  # training needs no evidence: it skips the sample's cost
      evidence_sample.add(self.evidence if self._evidence_parts else self._evidence, e, action, net)
    self.overflow += _bump(self.agents, agent_family(e.user_agent))
    emitter = emitter_of(e.provider, e.user_agent)
    if emitter is not None:
      self.overflow += _note_emitter(self.emitters, emitter, 1, [[t, e.event_id, action]])
    self.overflow += _bump(self.regions, e.region)
    if pane_seconds:
      pane = int(t // pane_seconds * pane_seconds)
      self.panes[pane] = self.panes.get(pane, 0) + 1
    if t < self.first_time:
      self.first_time = t
    if t > self.last_time:
      self.last_time = t
    if not self.identity_type:
      self.identity_type = e.identity_type
    return self

  def listing(self, actions: List[str], limit: int = 5) -> str:
    """'action xN, ...' for the first ``limit`` actions, then how many more: how rules name calls."""
    shown = ', '.join(f'{a} x{self.actions.get(a, 0)}' for a in actions[:limit])
    return shown + (f' and {len(actions) - limit} more' if len(actions) > limit else '')

  @property
  def evidence(self) -> evidence_sample.Store:
    """The evidence sample (merged now from the parts ``merge(lazy=True)`` left pending)."""
    parts = self._evidence_parts
    if parts:
      self._evidence_parts = []
      for part in parts:
        evidence_sample.merge(self._evidence, part if part.__class__ is dict else part.store())
    return self._evidence

  @evidence.setter
  def evidence(self, store: evidence_sample.Store) -> None:
    self._evidence, self._evidence_parts = store, []

  def merge(self, other: 'WindowAggregate', lazy: bool = False) -> 'WindowAggregate':
    """Adds ``other``'s counts and samples. ``lazy``: its evidence sample is merged only when
    this aggregate's evidence is read (the result is the same: the sample is exact under
    merging); ``other`` must not change afterwards."""
    self.count += other.count
    self.errors += other.errors
    self.read_only += other.read_only
    for field in _CAPPED:
      mine, theirs = getattr(self, field), getattr(other, field)
      if len(mine) + len(theirs) <= MAX_KEYS:  # every key fits: _bump would spill nothing
        _add_all(mine, theirs)
      else:
        for k, v in theirs.items():
          self.overflow += _bump(mine, k, v)
    _add_all(self.categories, other.categories)  # not capped: a key per taxonomy category
    _add_all(self.panes, other.panes)
    for k, v in other.action_category.items():
      if k in self.actions:
        self.action_category[k] = v
    for k, (lo, hi) in other.network_spans.items():
      if k in self.networks:
        span = self.network_spans.get(k)
        self.network_spans[k] = [lo, hi] if span is None else [min(span[0], lo), max(span[1], hi)]
    if lazy:
      if other._evidence:
        self._evidence_parts.append(other.evidence)
      else:  # a store still to merge, or one not yet decoded (transforms/aggregate.py): as it is
        self._evidence_parts.extend(other._evidence_parts)
    else:
      evidence_sample.merge(self.evidence, other.evidence)
    for k, (n, events) in other.emitters.items():
      self.overflow += _note_emitter(self.emitters, k, n, events)
    self.first_time = min(self.first_time, other.first_time)
    self.last_time = max(self.last_time, other.last_time)
    self.overflow += other.overflow
    self.identity_type = self.identity_type or other.identity_type
    return self

  def to_dict(self) -> dict:
    return {k: getattr(self, k) for k in self.FIELDS}

  @classmethod
  def from_dict(cls, d: dict) -> 'WindowAggregate':
    agg = cls()
    for k in cls.FIELDS:
      if k in d:
        setattr(agg, k, d[k])
    agg.panes = {int(k): v for k, v in agg.panes.items()}
    agg.network_spans = {k: list(v) for k, v in (d.get('network_spans') or {}).items()}
    agg.evidence = {k: [tuple(s) for s in v] for k, v in (d.get('evidence') or {}).items()}
    return agg

  def __eq__(self, other):
    return isinstance(other, WindowAggregate) and self.to_dict() == other.to_dict()

  def __repr__(self):
    return f'WindowAggregate(count={self.count}, actions={len(self.actions)})'
