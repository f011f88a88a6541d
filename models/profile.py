"""An identity's own baseline: what it normally does, learned from its windows.

Scores are relative to this baseline, so that "40 secret reads" is alarming for a
key that reads one secret an hour and routine for a vault sync job. The profile
is bounded (capped counters) and is built by folding window aggregates in time
order, the same way in the training job and (later) in streaming state. The
seen-sets of actions and resources hold 64-bit hashes (``seen_key``), so the
worst-case state does not grow with the length of ARNs or URLs.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import math
import struct
from typing import Any, Dict, Iterable, List, Tuple

from postauth.domain.resource_kind import resource_family, resource_scope
from postauth.domain.taxonomy import SENSITIVE_CATEGORIES
from postauth.domain.window import WindowAggregate

MAX_SEEN = {'actions': 512, 'resources': 2048, 'families': 256, 'scopes': 128, 'networks': 64,
            'agents': 32, 'regions': 32}
# Seen-sets kept as 64-bit hashes of their keys, not the strings: the profile only
# asks whether a key was seen and how many keys it keeps (explanations name keys
# from the current window's aggregate), and long ARNs/URLs made these sets ~3/4 of
# a capped identity's state. Networks, agents and regions stay strings: explanations
# name the usual ones ("usual: 10.0.0.0/24"), and their caps are small.
HASHED_SEEN = ('actions', 'resources', 'families', 'scopes')
# 1: every seen-set as {string: count}; 2: HASHED_SEEN as 64-bit keys; 3: + resource families;
# 4: + resource scopes (profiles of format 3 load with no scopes: every scope reads as new)
PROFILE_FORMAT = 4
TRACKED_CATEGORIES = (
    'secret_access', 'credential_create', 'privilege_change', 'config_change',
    'notify', 'message_publish', 'data_read', 'data_write', 'enumerate', 'delete',
    'defense_evasion', 'resource_sharing', 'remote_execution', 'compute_launch')


@functools.lru_cache(maxsize=1 << 12)  # a cache, not state: window ends repeat across identities
def hour_of(t: float) -> int:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).hour


@functools.lru_cache(maxsize=1 << 16)
def seen_key(value: str) -> int:
  """The stable 64-bit key a hashed seen-set holds for ``value`` (blake2b, 8 bytes, signed).

  Stable across processes and versions (unlike ``hash()``), so trained profiles and
  live state agree. Collisions: a seen-set holds at most 1.25 x 2,048 keys, so a
  never-seen key passes for seen with probability < 2,560 / 2**64 ~ 1.4e-16 per
  lookup, i.e. about once in 10**16 lookups: 10**8 lookups a day (100k identities,
  96 windows, 10 resources each) would take ~10**8 days to hit one, and its effect
  would be one resource or action counted as familiar. Signed, to pack as '<q'.
  Memoised (at most 65,536 strings, a few MB): the same resources recur across an
  identity's overlapping windows, and the fold and the features both look them up.
  """
  return int.from_bytes(hashlib.blake2b(value.encode('utf-8', 'surrogatepass'), digest_size=8).digest(),
                        'little', signed=True)


@functools.lru_cache(maxsize=1 << 16)
def resource_keys(resource: str) -> Tuple[int, int, int]:
  """The seen-set keys of a resource, its family and its scope (one lookup where three were)."""
  return seen_key(resource), seen_key(resource_family(resource)), seen_key(resource_scope(resource))


def _hashed(kept) -> Dict[int, int]:
  """A hashed seen-set from any form it was stored in, order kept (it breaks ties when pruning).

  ``{key: count}`` (live, or pickled state written before seen-sets were hashed, whose
  string keys are hashed here), ``[[key, count], ...]`` (profiles.json.gz) or packed bytes
  (pickled state, see ``_pack``).
  """
  if isinstance(kept, tuple):
    keys, counts, code = kept
    n = len(keys) // 8
    return dict(zip(struct.unpack(f'<{n}q', keys), struct.unpack(f'<{n}{code}', counts)))
  seen: Dict[int, int] = {}
  for k, n in (kept.items() if isinstance(kept, dict) else kept):
    h = seen_key(k) if isinstance(k, str) else int(k)
    seen[h] = seen.get(h, 0) + n
  return seen


def _pack(seen: Dict[int, int]) -> tuple:
  """A hashed seen-set as (keys, counts, count format): 8 bytes a key and 1 (up to 8) a count,
  where a pickled dict takes ~12 a pair; little-endian, so state moves between machines."""
  top = max(seen.values(), default=0)
  code = 'B' if top < 1 << 8 else 'H' if top < 1 << 16 else 'I' if top < 1 << 32 else 'Q'
  n = len(seen)
  return struct.pack(f'<{n}q', *seen), struct.pack(f'<{n}{code}', *seen.values()), code


# The aggregate's counter each seen-set is filled from (families and scopes: one key at most per resource).
_FILLED_FROM = {'actions': 'actions', 'resources': 'resources', 'families': 'resources', 'scopes': 'resources',
                'networks': 'networks', 'agents': 'agents', 'regions': 'regions'}
_ALONE = tuple({source: min(cap * 1.25 for f, cap in MAX_SEEN.items() if _FILLED_FROM[f] == source)
                for source in _FILLED_FROM.values()}.items())
assert set(_FILLED_FROM) == set(MAX_SEEN) == {'actions', 'resources', 'families', 'scopes', 'networks', 'agents',
                                               'regions'}, 'IdentityProfile.update fills these seen-sets by name'


def prunes_alone(agg: WindowAggregate) -> bool:
  """Whether one window's profile could prune a seen-set on its own (``_prune``: more than 1.25x
  its cap of distinct keys)."""
  for source, most in _ALONE:
    if len(getattr(agg, source)) > most:
      return True
  return False


def _prune(counts: Dict[str, int], cap: int) -> None:
  """Keeps the most frequent ``cap`` keys once a counter grows 25% past its cap."""
  if len(counts) > cap * 1.25:
    keep = sorted(counts.items(), key=lambda kv: -kv[1])[:cap]
    counts.clear()
    counts.update(keep)


class IdentityProfile:
  """Bounded running statistics of one identity's past windows."""

  def __init__(self):
    self.windows = 0
    self.first_seen = float('inf')
    self.last_seen = float('-inf')
    # log1p(event count) per window: per hour of day and overall (n, sum, sum of squares)
    self.hourly: List[List[float]] = [[0.0, 0.0, 0.0] for _ in range(24)]
    self.overall = [0.0, 0.0, 0.0]
    self.category_max: Dict[str, int] = {}
    self.category_events: Dict[str, int] = {}
    self.events = 0
    self.errors = 0
    self.max_distinct_actions = 0
    self.max_distinct_resources = 0
    self.sensitive_events = 0
    self.seen: Dict[str, Dict[str, int]] = {k: {} for k in MAX_SEEN}
    self._asked: Dict[str, tuple] = {}  # see ``_answer``; never stored

  # -- building ---------------------------------------------------------------
  def update(self, agg: WindowAggregate, window_end: float) -> 'IdentityProfile':
    self._asked.clear()
    self.windows += 1
    self.first_seen = min(self.first_seen, agg.first_time)
    self.last_seen = max(self.last_seen, agg.last_time)
    x = math.log1p(agg.count)
    for stats in (self.hourly[hour_of(window_end - 1)], self.overall):
      stats[0] += 1
      stats[1] += x
      stats[2] += x * x
    for cat, n in agg.categories.items():
      if n > self.category_max.get(cat, 0):
        self.category_max[cat] = n
      self.category_events[cat] = self.category_events.get(cat, 0) + n
      if cat in SENSITIVE_CATEGORIES:
        self.sensitive_events += n
    self.events += agg.count
    self.errors += agg.errors
    self.max_distinct_actions = max(self.max_distinct_actions, len(agg.actions))
    self.max_distinct_resources = max(self.max_distinct_resources, len(agg.resources))
    seen = self.seen
    kept = seen['actions']
    for k, v in agg.actions.items():
      h = seen_key(k)
      kept[h] = kept.get(h, 0) + v
    _prune(kept, MAX_SEEN['actions'])
    # Each seen-set is its own dict: filling the three a resource feeds in one pass, then pruning
    # each, leaves them as filling and pruning them one after the other did.
    resources, families, scopes = seen['resources'], seen['families'], seen['scopes']
    for k, v in agg.resources.items():
      h, hf, hs = resource_keys(k)
      resources[h] = resources.get(h, 0) + v
      families[hf] = families.get(hf, 0) + v
      scopes[hs] = scopes.get(hs, 0) + v
    for field in ('resources', 'families', 'scopes'):
      _prune(seen[field], MAX_SEEN[field])
    for field in ('networks', 'agents', 'regions'):
      kept = seen[field]
      for k, v in getattr(agg, field).items():
        kept[k] = kept.get(k, 0) + v
      _prune(kept, MAX_SEEN[field])
    return self

  def merge(self, other: 'IdentityProfile') -> 'IdentityProfile':
    """Folds another profile (e.g. one day's windows) into this one; same result as updating
    with its windows one by one, except that seen-set pruning happens once at the end."""
    if not other.windows:
      return self
    self._asked.clear()
    self.windows += other.windows
    self.first_seen = min(self.first_seen, other.first_seen)
    self.last_seen = max(self.last_seen, other.last_seen)
    for mine, theirs in zip(self.hourly + [self.overall], other.hourly + [other.overall]):
      if theirs[0] or theirs[1] or theirs[2]:  # a window's profile fills one hour of 24
        for i in range(3):
          mine[i] += theirs[i]
    for cat, n in other.category_max.items():
      if n > self.category_max.get(cat, 0):
        self.category_max[cat] = n
    for cat, n in other.category_events.items():
      self.category_events[cat] = self.category_events.get(cat, 0) + n
    self.events += other.events
    self.errors += other.errors
    self.sensitive_events += other.sensitive_events
    self.max_distinct_actions = max(self.max_distinct_actions, other.max_distinct_actions)
    self.max_distinct_resources = max(self.max_distinct_resources, other.max_distinct_resources)
    for field, cap in MAX_SEEN.items():
      seen = self.seen[field]
      for k, v in other.seen[field].items():
        seen[k] = seen.get(k, 0) + v
      _prune(seen, cap)
    return self

  @classmethod
  def build(cls, windows: Iterable) -> 'IdentityProfile':
    profile = cls()
    for w in windows:
      profile.update(w.agg, w.window_end)
    return profile

  # -- reading ----------------------------------------------------------------
  def knows(self, field: str, value: str) -> bool:
    """Whether ``value`` (an action, resource, network, agent or region) is in the seen-set."""
    return (seen_key(value) if field in HASHED_SEEN else value) in self.seen[field]

  def seen_count(self, field: str, value: str) -> int:
    """How often ``value`` was seen (events summed over the windows folded); 0 if never."""
    return int(self.seen[field].get(seen_key(value) if field in HASHED_SEEN else value, 0))

  def _answer(self, question: str, keys, answer):
    """The answer to ``question`` about ``keys`` (a window's counter), from the last time it was
    asked about the same object, else ``answer(keys)``: a window's features, rules and judgment
    ask the same profile the same question about the same counter up to five times. One answer
    kept per question; the kept counter pins its object (its ``id`` cannot be reused while kept).
    Cleared when the profile changes (the profiles a window is judged against never do)."""
    kept = self._asked.get(question)
    if kept is not None and kept[0] is keys:
      return kept[1]
    found = answer(keys)
    self._asked[question] = (keys, found)
    return found

  def unseen_families(self, resources: Iterable[str]) -> Dict[str, int]:
    """Resource families of ``resources`` this identity never touched: family -> resources in it."""
    return dict(self._answer('families', resources, self._unseen_families))

  def _unseen_families(self, resources: Iterable[str]) -> Dict[str, int]:
    seen = self.seen['families']
    out: Dict[str, int] = {}
    for r in resources:
      if resource_keys(r)[1] not in seen:
        fam = resource_family(r)
        out[fam] = out.get(fam, 0) + 1
    return out

  def unseen_scopes(self, resources: Iterable[str]) -> List[str]:
    """Scopes (namespace, bucket, project, naming prefix) of ``resources`` this identity never
    worked in, in first-seen order."""
    seen = self.seen['scopes']
    out: List[str] = []
    for r in resources:
      if resource_keys(r)[2] not in seen:
        scope = resource_scope(r)
        if scope not in out:
          out.append(scope)
    return out

  def unseen(self, field: str, keys: Iterable[str]) -> List[str]:
    """The keys (in their order) that are not in the seen-set: one pass for a window's features."""
    if field == 'actions':
      return list(self._answer('actions', keys, self._unseen_actions))
    seen = self.seen[field]
    if field in HASHED_SEEN:
      return [k for k in keys if seen_key(k) not in seen]
    return [k for k in keys if k not in seen]

  def _unseen_actions(self, keys: Iterable[str]) -> List[str]:
    seen = self.seen['actions']
    return [k for k in keys if seen_key(k) not in seen]

  def volume_baseline(self, hour: int, shrink: float = 4.0):
    """Mean and spread of log1p(events per window) at this hour, shrunk to the overall."""
    n, s, ss = self.overall
    if n == 0:
      return 0.0, 1.0
    mu_all = s / n
    var_all = max(ss / n - mu_all * mu_all, 0.0)
    hn, hs, hss = self.hourly[hour]
    mu_h = hs / hn if hn else mu_all
    var_h = max(hss / hn - mu_h * mu_h, 0.0) if hn else var_all
    w = hn / (hn + shrink)
    mu = w * mu_h + (1 - w) * mu_all
    var = w * var_h + (1 - w) * var_all
    return mu, max(math.sqrt(var), 0.5)

  def sensitive_share(self) -> float:
    return self.sensitive_events / self.events if self.events else 0.0

  def error_ratio(self) -> float:
    return self.errors / self.events if self.events else 0.0

  # -- persistence ------------------------------------------------------------
  # Hashed seen-sets are stored apart from the string ones ("seen_hashed"), so that
  # code from before hashing fails loudly (KeyError 'actions') on a newer profile
  # instead of taking every resource for new; models also record PROFILE_FORMAT.
  def to_dict(self) -> dict:
    """JSON-ready: hashed seen-sets as ``[[key, count], ...]`` in their order (JSON keys are strings)."""
    d: Dict[str, Any] = {k: v for k, v in self.__dict__.items() if k not in ('seen', '_asked')}
    d['seen'] = {f: dict(s) for f, s in self.seen.items() if f not in HASHED_SEEN}
    d['seen_hashed'] = {f: [[k, n] for k, n in self.seen[f].items()] for f in HASHED_SEEN}
    return d

  @classmethod
  def from_dict(cls, d: dict) -> 'IdentityProfile':
    """Reads ``to_dict``'s output, and profiles saved before seen-sets were hashed.

    Those hold ``{string: count}`` for every field under "seen": their hashed fields
    are hashed here, keeping their order (which decides ties when a set is pruned),
    so an old model's profiles judge windows as they did.
    """
    p = cls.__new__(cls)
    p.__setstate__(d)
    return p

  # Beam state pickles profiles (inside IdentityHistory): hashed seen-sets go packed.
  def __getstate__(self) -> dict:
    state = {k: v for k, v in self.__dict__.items() if k not in ('seen', '_asked')}
    # Hours with windows only ({hour: [n, sum, sum of squares]}): a single window's profile
    # (the history's ledger) has one, and 24 empty triples were over half its bytes.
    state['hourly'] = {h: s for h, s in enumerate(self.hourly) if s[0]}
    state['seen'] = {f: s for f, s in self.seen.items() if f not in HASHED_SEEN}
    state['seen_hashed'] = {f: _pack(self.seen[f]) for f in HASHED_SEEN}
    return state

  def __setstate__(self, state: dict) -> None:
    """Also reads state pickled before seen-sets were hashed (string keys get hashed)."""
    self.__init__()
    self.__dict__.update({k: v for k, v in state.items() if k not in ('seen', 'seen_hashed', 'hourly')})
    hourly = state.get('hourly')
    if isinstance(hourly, dict):
      for h, stats in hourly.items():
        self.hourly[h] = list(stats)
    elif hourly is not None:
      self.hourly = hourly
    for field, kept in [*state.get('seen', {}).items(), *state.get('seen_hashed', {}).items()]:
      self.seen[field] = _hashed(kept) if field in HASHED_SEEN else dict(kept)
    kept = state.get('seen', {}).get('resources')
    if 'families' not in state.get('seen_hashed', {}) and isinstance(kept, dict):
      # Saved before families were kept, with resources as strings: their families are known.
      for r, n in kept.items():
        if isinstance(r, str):
          h = seen_key(resource_family(r))
          self.seen['families'][h] = self.seen['families'].get(h, 0) + n
    if 'scopes' not in state.get('seen_hashed', {}) and isinstance(kept, dict):
      for r, n in kept.items():  # saved before scopes were kept, with resources as strings
        if isinstance(r, str):
          h = seen_key(resource_scope(r))
          self.seen['scopes'][h] = self.seen['scopes'].get(h, 0) + n
