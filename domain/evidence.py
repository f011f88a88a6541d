"""Evidence a responder can pivot on: a bounded sample of the events behind a window.

A window's aggregate keeps counts, not events; a finding must still name the events
behind its reasons by the provider's own id (CloudTrail ``eventID``, GCP ``insertId``,
Kubernetes ``auditID``, OCSF ``metadata.uid``) and say where each was read. So every
aggregate also keeps, per action, its first and last events, and per source
network its first and last: at most ``MAX_ACTIONS * 2 + MAX_NETWORKS * 2`` samples,
whatever the window's volume. The selection is exact under merging (the first k of a
union are among the first k of each part), so panes merge into windows, and batch
and streaming keep the same samples (ties broken by event id).

A flagged window's samples get novelty flags from the identity's profile (``for_window``,
at scoring); a finding then picks up to 20 of them for its top reasons (``pick``).
"""
from __future__ import annotations

import datetime
import functools
import re
import zlib
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from postauth.domain.event import Event
from postauth.domain.origin import agent_family, network_of
from postauth.domain.taxonomy import SENSITIVE_CATEGORIES
from postauth.domain.tool_calls import is_derived

MAX_ACTIONS = 32  # distinct actions sampled per window (beyond them: counted, not sampled)
MAX_NETWORKS = 8
KEEP = {'a': (1, 1), 'n': (1, 1)}  # key kind -> (first, last) events kept per key
MAX_TEXT = 256  # characters kept of resource, user agent, reference
MAX_EVIDENCE = 20  # events per finding
MAX_WINDOW_ACTIONS = 50  # actions listed per window of a finding

# A sample, as a tuple (compact in the coder, hashable):
FIELDS = ('event_id', 'time', 'provider', 'action', 'category', 'resource', 'source_ip',
          'user_agent', 'error_code', 'region', 'raw_ref', 'tool_call', 'joined_by')
_ID, _TIME, _ACTION, _CATEGORY, _IP = 0, 1, 3, 4, 6

Sample = Tuple  # (event_id, time, provider, action, category, resource, source_ip, ...)
Store = Dict[str, List[Sample]]  # 'a<action>' | 'n<network>' -> samples sorted by (time, id)


def _sample(e: Event, action: str) -> Sample:
  return (e.event_id, e.event_time, e.provider, action, e.category, e.resource[:MAX_TEXT],
          e.source_ip, e.user_agent[:MAX_TEXT], e.error_code[:64], e.region, e.raw_ref[:MAX_TEXT],
          e.tool_call, e.acting_for if is_derived(action) else '')


def _wanted(lst: List[Sample], t: float, eid: str, first: int, last: int) -> bool:
  """Whether an event at (t, eid) would be among the first/last of ``lst`` plus it."""
  if len(lst) < first + last:
    return True
  k = (t, eid)
  return k < (lst[first - 1][_TIME], lst[first - 1][_ID]) or (
      last > 0 and k > (lst[-last][_TIME], lst[-last][_ID]))


def _priority(key: str, s: Sample) -> Tuple[int, int]:
  """Which keys a full sample keeps: sensitive actions first, then by a hash of the key.

  A function of the key alone, so the kept keys are the ``cap`` best of all keys seen
  whatever the order or split of the events: exact under merging, like the first/last.
  """
  return (0 if key[0] == 'a' and s[_CATEGORY] in SENSITIVE_CATEGORIES else 1,
          zlib.crc32(key.encode('utf-8', 'surrogatepass')))


def _insert(store: Store, key: str, s: Sample, cap: int) -> None:
  """Adds ``s`` under ``key`` if it is among that key's first/last events (see KEEP)."""
  first, last = KEEP[key[0]]
  lst = store.get(key)
  if lst is not None and not _wanted(lst, s[_TIME], s[_ID], first, last):
    return
  _place(store, key, s, cap, lst, first, last)


def _place(store: Store, key: str, s: Sample, cap: int, lst: Optional[List[Sample]], first: int,
           last: int) -> None:
  """``_insert`` once ``lst`` (``store[key]``, or None) is known to want ``s``."""
  if lst is None:
    same = [k for k in store if k[0] == key[0]] if len(store) >= cap else ()  # fewer keys in all: not full
    if len(same) >= cap:
      worst = max(same, key=lambda k: _priority(k, store[k][0]))
      if _priority(worst, store[worst][0]) < _priority(key, s):
        return
      del store[worst]
    store[key] = [s]
    return
  if not lst or (s[_TIME], s[_ID]) > (lst[-1][_TIME], lst[-1][_ID]):  # after all kept (events in time order)
    lst.append(s)
  elif any(x[_ID] == s[_ID] and x[_TIME] == s[_TIME] for x in lst):
    return  # the same event seen twice (a replayed message)
  else:
    lst.append(s)
    lst.sort(key=lambda x: (x[_TIME], x[_ID]))
  if len(lst) > first + last:
    del lst[first]  # neither among the first nor the last


def add(store: Store, e: Event, action: str, network: str) -> None:
  """Offers one event to the sample; builds its tuple only if some key keeps it. The same as
  ``_insert`` under both keys (an action key never evicts a network key, nor the reverse)."""
  t, eid = e.event_time, e.event_id
  a, n = 'a' + action, 'n' + network
  la, ln = store.get(a), store.get(n)
  fa, xa = KEEP['a']
  fn, xn = KEEP['n']
  wa = la is None or _wanted(la, t, eid, fa, xa)
  wn = ln is None or _wanted(ln, t, eid, fn, xn)
  if wa or wn:
    s = _sample(e, action)
    if wa:
      _place(store, a, s, MAX_ACTIONS, la, fa, xa)
    if wn:
      _place(store, n, s, MAX_NETWORKS, ln, fn, xn)


def merge(store: Store, other: Store) -> None:
  if not store:  # merging into a fresh accumulator (common): other already obeys the bounds
    for key, samples in other.items():
      store[key] = list(samples)
    return
  for key, samples in other.items():
    cap = MAX_ACTIONS if key[0] == 'a' else MAX_NETWORKS
    for s in samples:
      _insert(store, key, s, cap)


def samples(store: Store) -> List[Sample]:
  """Every kept event once, in (time, id) order."""
  return sorted(set(s for lst in store.values() for s in lst), key=lambda s: (s[_TIME], s[_ID]))


def encode(store: Store) -> list:
  """[strings, rows, {key: [row indices]}], JSON-able and compact.

  An event kept under two keys is written once (samples are shared objects, found by
  ``id``); the two long strings that repeat within a window (the user agent and the
  file it was read from) go to a table once and rows hold their index.
  """
  rows, index, strings, slots, keys = [], {}, [], {}, {}
  for k, lst in store.items():
    out = []
    for s in lst:
      i = index.get(id(s))
      if i is None:
        i = index[id(s)] = len(rows)
        source, sep, at = s[10].rpartition('#')
        if not sep:
          source, at = s[10], None
        ua = slots.get(s[7])
        if ua is None:
          ua = slots[s[7]] = len(strings)
          strings.append(s[7])
        src = slots.get(source)
        if src is None:
          src = slots[source] = len(strings)
          strings.append(source)
        rows.append((*s[:7], ua, *s[8:10], src, at, *s[11:]))
      out.append(i)
    keys[k] = out
  return [strings, rows, keys]


def decode(v: Optional[list]) -> Store:
  if not v:
    return {}
  strings, rows, keys = v
  built = [(*r[:7], strings[r[7]], r[8], r[9],
            strings[r[10]] if r[11] is None else f'{strings[r[10]]}#{r[11]}',
            *(r[12:14] if len(r) > 12 else ('', ''))) for r in rows]  # rows before the join: none
  return {k: [built[i] for i in idx] for k, idx in keys.items()}


# -- at scoring: flag what is new to the identity --------------------------------------------

def for_window(agg, profile) -> Dict:
  """A flagged window's evidence: its samples (with what was new in each) and calls per action."""
  events = []
  for s in samples(getattr(agg, 'evidence', None) or {}):
    d = dict(zip(FIELDS, s))
    d['network'] = network_of(d['source_ip'])
    new = []
    if profile is not None:
      for field, value in (('actions', d['action']), ('resources', d['resource']),
                           ('networks', d['network']), ('agents', agent_family(d['user_agent']))):
        if value and not profile.knows(field, value):
          new.append(field)
    d['new'] = new
    events.append(d)
  actions = dict(sorted(agg.actions.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_WINDOW_ACTIONS])
  return {'events': events, 'actions': actions}


# -- at the finding: pick the events behind its top reasons ----------------------------------

_TOKEN = re.compile(r'[\s,;()]+')
ALL_EVENTS = ('volume_z', 'distinct_actions_excess', 'distinct_resources_excess',
              'disabled_identity_active', 'dormant_identity_revived', 'unregistered_identity')


def _novelty_field(key: str) -> Optional[str]:
  """Which novelty flag a reason is about, from its feature or rule name."""
  if 'network' in key:
    return 'networks'
  if 'agent' in key or 'client' in key:
    return 'agents'
  if 'resource' in key or 'family' in key:
    return 'resources'
  if 'novel' in key or 'action' in key:
    return 'actions'
  return None


Terms = Tuple  # (key, named actions, detail/value tokens, novelty field): what _relevance reads of a reason


def reason_terms(reason: Dict) -> Terms:
  """What of a reason decides an event's relevance (hashable: equal terms rank events alike)."""
  value = reason.get('value')
  return _terms(reason.get('rule') or reason.get('feature') or '', str(reason.get('detail', '')),
                '' if value is None else str(value), tuple(reason.get('actions') or ()))


@functools.lru_cache(maxsize=1 << 12)  # a cache, not state: a finding's versions repeat their reasons
def _terms(key: str, detail: str, value: str, actions: Tuple[str, ...]) -> Terms:
  tokens = set(_TOKEN.split(detail))
  tokens.update(_TOKEN.split(value))
  return key, frozenset(actions), frozenset(tokens), _novelty_field(key)


def _relevance_of(terms: Terms, ev: Dict) -> int:
  """How directly an event backs a reason (given by its ``reason_terms``): 0 not at all, higher is better."""
  key, named, tokens, novelty = terms
  score = 0
  if ev['action'] in named or ev['action'] in tokens:
    score += 2
  if (ev['resource'] and ev['resource'] in tokens) or (ev['network'] and ev['network'] in tokens):
    score += 1
  if novelty and novelty in ev.get('new', ()):
    score += 4
  if key.startswith('excess_') and ev.get('category') == key[len('excess_'):]:
    score += 4
  if ('error' in key or 'denied' in key) and ev.get('error_code'):
    score += 4
  if key in ALL_EVENTS and score == 0:
    score = 1  # every event is behind a volume or breadth reason
  return score


def _relevance(reason: Dict, ev: Dict) -> int:
  """How directly an event backs a reason: 0 not at all, higher is better."""
  return _relevance_of(reason_terms(reason), ev)


def rank_entry(terms: Terms, k: Tuple[str, float], ev: Dict) -> Optional[tuple]:
  """An event's place in a reason's ranking (ties: more that is new to the identity, then the
  earliest), or None when it does not back the reason."""
  rel = _relevance_of(terms, ev)
  return (-rel, -len(ev.get('new', ())), ev['time'], ev['event_id'], k) if rel > 0 else None


@functools.lru_cache(maxsize=1 << 16)  # a cache, not state: a finding's versions repeat its events
def _time(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
      '%Y-%m-%dT%H:%M:%S.%f')[:-3] + 'Z'


def public(ev: Dict, reason_key: str) -> Dict:
  """A sample as a finding's evidence record (transforms/schemas/finding.avsc ``Evidence``)."""
  out = {k: ev.get(k, '') for k in FIELDS if k != 'time'}  # a sample kept before the join: no tool call
  out['time'] = _time(ev['time'])
  # The log's own id (eventID, insertId, auditID, metadata.uid by format); a record without
  # one is named by where it was read, and says so.
  out['id_from_log'] = ev['event_id'] != ev['raw_ref']
  out['read_from'] = out.pop('raw_ref')
  out['network'] = ev['network']
  out['new'] = list(ev.get('new', ()))
  out['reason'] = reason_key
  return out


def choose(ranked: List[Tuple[str, List[tuple]]], limit: int) -> Dict[Tuple[str, float], str]:
  """Events taken in turn per reason from its ranking, each once: pool key -> the reason's key."""
  chosen: Dict[Tuple[str, float], str] = {}
  at = [0] * len(ranked)
  while len(chosen) < limit and any(at[i] < len(lst) for i, (_, lst) in enumerate(ranked)):
    for i, (key, lst) in enumerate(ranked):
      while at[i] < len(lst) and lst[at[i]][-1] in chosen:
        at[i] += 1  # already backing an earlier reason
      if at[i] < len(lst) and len(chosen) < limit:
        chosen[lst[at[i]][-1]] = key
        at[i] += 1
  return chosen


def evidence_records(pool: Dict[Tuple[str, float], Dict], chosen: Dict[Tuple[str, float], str],
                     record: Optional[Callable[[Tuple[str, float], str], Dict]] = None) -> List[Dict]:
  """The chosen events as evidence records in time order; ``record(k, why)`` makes one (by
  default ``public`` of the pool's event)."""
  make = record or (lambda k, why: public(pool[k], why))
  return sorted((make(k, why) for k, why in chosen.items()), key=lambda e: (e['time'], e['event_id']))


def window_calls(w: Dict) -> Dict:
  """One window's line of a finding's ``window_actions``."""
  return {'window_start': _time(w['window_start']), 'window_end': _time(w['window_end']),
          'calls': w.get('event_count', 0),
          'actions': (w.get('evidence') or {}).get('actions') or w.get('actions', {})}


def pick(windows: Sequence[Dict], reasons: Sequence[Dict], limit: int = MAX_EVIDENCE,
         top_reasons: int = 4) -> Dict:
  """Up to ``limit`` events behind the finding's top reasons, taken in turn per reason
  (most relevant first, then earliest); and each window's calls per action.
  The definition domain/evidence_pool.py keeps up to date window by window."""
  pool: Dict[Tuple[str, float], Dict] = {}
  for w in sorted(windows, key=lambda w: (-w.get('score', 0.0), w['window_start'], w['window_end'])):
    for ev in (w.get('evidence') or {}).get('events', ()):
      pool.setdefault((ev['event_id'], ev['time']), ev)
  ranked = []
  for r in list(reasons)[:top_reasons]:
    terms = reason_terms(r)
    ranked.append((terms[0], sorted(x for x in (rank_entry(terms, k, ev) for k, ev in pool.items())
                                    if x is not None)))
  chosen = choose(ranked, limit)
  if not chosen and ranked:  # no event names what the top reasons say: the earliest ones
    for k in sorted(pool, key=lambda k: (pool[k]['time'], pool[k]['event_id']))[:limit]:
      chosen[k] = ranked[0][0]
  window_actions = [window_calls(w) for w in sorted(windows, key=lambda w: w['window_start'])]
  return {'evidence': evidence_records(pool, chosen), 'window_actions': window_actions}


def from_aggregate(agg, reasons: Iterable[Dict], window_start: float, window_end: float) -> Dict:
  """``pick`` for a finding made from one window without a profile (unregistered identity)."""
  w = {'window_start': window_start, 'window_end': window_end, 'event_count': agg.count,
       'evidence': for_window(agg, None)}
  return pick([w], list(reasons))
