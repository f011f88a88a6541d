"""``pick``'s evidence for a run of windows that grows, kept up to date window by window.

A finding gets a version per window that joins its run; picking its evidence again from every
window's samples each time cost the square of the run's length. ``EvidencePool`` keeps the pool
and the rankings of the reasons in use, so a version costs about the new window's samples.
``evidence.pick`` stays the definition.
"""
from __future__ import annotations

import bisect
from typing import Dict, List, Sequence, Tuple

from postauth.domain.evidence import (MAX_EVIDENCE, Terms, choose, evidence_records, public, rank_entry,
                                      reason_terms)


class EvidencePool:
  """``pick``'s pool and per-reason rankings for a run of windows that grows (and whose windows
  may be re-scored), so a finding version costs the new window's events, not the run's.

  Invariant: after any sequence of ``put``, ``evidence(reasons)`` equals
  ``pick(the windows put, last version of each, reasons)['evidence']``. Each event (by id and
  time) is taken from the best window holding it (highest score, then earliest), as ``pick``'s
  pool; the rankings of the reasons last asked for are kept sorted as events come and go (a
  reason's ranking is built from the whole pool only when it first enters the top reasons).
  """

  def __init__(self):
    self.pool: Dict[Tuple[str, float], Dict] = {}  # (event id, time) -> the event, from ``_won``'s window
    self._windows: Dict[tuple, Tuple[tuple, Dict[Tuple[str, float], Dict]]] = {}  # window -> (order, events)
    self._holders: Dict[Tuple[str, float], Dict[tuple, tuple]] = {}  # event -> {window: order}
    self._won: Dict[Tuple[str, float], tuple] = {}  # event -> the window it is taken from
    self._by_time: List[Tuple[float, str]] = []  # the pool's (time, id), sorted
    self._rankings: Dict[Terms, Tuple[List[tuple], Dict[Tuple[str, float], tuple]]] = {}
    # (event, reason key) -> (the pool's event it was made from, its record): a finding's
    # versions repeat most of their evidence; a record is made again once the event is replaced.
    self._records: Dict[Tuple[Tuple[str, float], str], Tuple[Dict, Dict]] = {}

  @staticmethod
  def order(w: Dict) -> tuple:
    """Which window's copy of a shared event the pool keeps: the lowest order."""
    return (-w.get('score', 0.0), w['window_start'], w['window_end'])

  def put(self, wk: tuple, w: Dict) -> None:
    """Adds window ``w`` (key ``wk``), or replaces the earlier version of it."""
    events: Dict[Tuple[str, float], Dict] = {}
    for ev in (w.get('evidence') or {}).get('events', ()):
      events.setdefault((ev['event_id'], ev['time']), ev)
    order = self.order(w)
    old = self._windows.get(wk)
    self._windows[wk] = (order, events)
    changed = set()
    if old is not None:
      for k in old[1]:
        del self._holders[k][wk]
        if self._won[k] == wk:
          changed.add(k)
    for k in events:
      holders = self._holders.setdefault(k, {})
      holders[wk] = order
      won = self._won.get(k)
      if won is None or won == wk or order < self._windows[won][0]:
        changed.add(k)
    for k in changed:
      self._settle(k)

  def _settle(self, k: Tuple[str, float]) -> None:
    """Re-takes event ``k`` from its best holder (or drops it) and re-ranks it."""
    holders = self._holders.get(k)
    before = self.pool.get(k)
    if not holders:
      self._holders.pop(k, None)
      self._won.pop(k, None)
      if before is not None:
        del self.pool[k]
        del self._by_time[bisect.bisect_left(self._by_time, (k[1], k[0]))]
        for entries, by_key in self._rankings.values():
          self._unrank(entries, by_key, k)
      return
    wk = min(holders, key=holders.get)
    ev = self._windows[wk][1][k]
    self._won[k] = wk
    if ev is before:
      return
    if before is None:
      bisect.insort(self._by_time, (k[1], k[0]))
    self.pool[k] = ev
    for terms, (entries, by_key) in self._rankings.items():
      self._unrank(entries, by_key, k)
      entry = rank_entry(terms, k, ev)
      if entry is not None:
        bisect.insort(entries, entry)
        by_key[k] = entry

  @staticmethod
  def _unrank(entries: List[tuple], by_key: Dict, k) -> None:
    entry = by_key.pop(k, None)
    if entry is not None:
      del entries[bisect.bisect_left(entries, entry)]

  def evidence(self, reasons: Sequence[Dict], limit: int = MAX_EVIDENCE, top_reasons: int = 4) -> List[Dict]:
    """``pick``'s evidence records for the pool as it is."""
    ranked, kept = [], {}
    for r in list(reasons)[:top_reasons]:
      terms = reason_terms(r)
      ranking = kept.get(terms) or self._rankings.get(terms)
      if ranking is None:
        by_key = {k: e for k, e in ((k, rank_entry(terms, k, ev)) for k, ev in self.pool.items()) if e is not None}
        ranking = (sorted(by_key.values()), by_key)
      kept[terms] = ranking
      ranked.append((terms[0], ranking[0]))
    self._rankings = kept  # only the reasons in use are kept up to date
    chosen = choose(ranked, limit)
    if not chosen and ranked:  # no event names what the top reasons say: the earliest ones
      for t, eid in self._by_time[:limit]:
        chosen[(eid, t)] = ranked[0][0]
    return evidence_records(self.pool, chosen, self._record)

  def _record(self, k: Tuple[str, float], why: str) -> Dict:
    """``public(pool[k], why)`` as ``evidence_records`` makes it: the one made for an earlier
    version while the pool holds the same event. Versions share their records, so a shuffle
    of a finding's versions carries each once; records are never changed once made."""
    ev = self.pool[k]
    made = self._records.get((k, why))
    if made is None or made[0] is not ev:
      made = self._records[k, why] = (ev, public(ev, why))
    return made[1]
