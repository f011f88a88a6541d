"""A run's finding version kept up to date window by window (``FindingBuilder``), so building a
version costs about the new window, not the whole run: the run merge (transforms/findings.py)
emits a version per window that joins a run, and rebuilt from every window each version cost the
square of the run's length. ``to_finding`` (transforms/finding_content.py) stays the definition.
"""
from __future__ import annotations

import bisect
from typing import Dict, Iterable, List, Optional, Tuple

from postauth.domain import evidence
from postauth.domain.evidence_pool import EvidencePool
from postauth.transforms.finding_content import (SEVERITY_ORDER, assemble, max_severity, reason_items,
                                                  take_reasons)

def _basis_of(w: Dict) -> Tuple[tuple, tuple, tuple]:
  """A window's part of ``page_basis``: (evidence, shareable, change)."""
  j = w.get('judgment') or {}
  paging = SEVERITY_ORDER.get(w.get('severity'), 0) >= SEVERITY_ORDER['medium'] and not j.get('evidence')
  return tuple(j.get('evidence', ())), tuple(j.get('shareable', ())) if paging else (), tuple(j.get('change', ()))


def _count(counter: Dict, items: Iterable, by: int) -> None:
  for x in items:
    n = counter.get(x, 0) + by
    if n:
      counter[x] = n
    else:
      del counter[x]


class FindingBuilder:
  """``to_finding`` of a run's windows kept up to date as windows join it or are re-scored, so
  a version costs about the new window's size, not the run's: the evidence pool and its
  rankings (``EvidencePool``), the best-first order of windows and the reasons walked
  along it, the maxima of actions and resources, the panes' counts, severities and page basis.

  Invariant: ``finding()`` equals ``to_finding(list(windows.values()))`` after any sequence of
  ``put`` (tests/test_finding_builder.py). ``windows`` is the run's own dict (key -> latest
  version, in first-put order). A re-scored window that held a maximum (the top window, an
  action's count) makes that one maximum be taken again from the run's windows. Pickled
  (streaming state), only ``windows`` is kept and the rest is rebuilt from it at first use:
  the state stays what it was, the windows.
  """

  def __init__(self, windows: Optional[Dict[tuple, Dict]] = None):
    self.windows: Dict[tuple, Dict] = {} if windows is None else windows
    self._stale = bool(self.windows)
    self._seq: Dict[tuple, int] = {}  # window -> order of its first put (to_finding's tie-break)
    self._by_start: List[Tuple[float, int, tuple]] = []
    self._end = float('-inf')
    self._top: Optional[tuple] = None  # _top_key of the peak window
    self._score: Optional[tuple] = None  # _score_key of the window max() gives the score of
    self._best_first: List[Tuple[tuple, tuple]] = []  # (EvidencePool.order, window), sorted
    self._items: Dict[tuple, List[Tuple[str, str, Dict]]] = {}
    self._taken: List[Tuple[str, str, Dict]] = []  # the reasons the walk took, in order
    self._taken_at: List[int] = []  # len(_taken) after each window of _best_first walked
    self._panes: Dict[str, int] = {}  # pane -> its count in the last window (start order) holding it
    self._panes_of: Dict[str, Dict[tuple, None]] = {}  # pane -> windows holding it
    self._event_count = 0
    self._actions: Dict[str, int] = {}
    self._resources: Dict[str, int] = {}
    self._severities: Dict[str, int] = {}
    self._flagged = 0
    self._basis: Tuple[Dict, Dict, Dict] = ({}, {}, {})  # page_basis' evidence, shareable, change
    self._calls: Dict[tuple, Dict] = {}
    self._pool = EvidencePool()

  def __getstate__(self):
    return {'windows': self.windows}

  def __setstate__(self, state):
    self.__init__(state['windows'])

  def _fresh(self) -> None:
    if self._stale:
      self._stale = False
      windows = list(self.windows.values())
      self.windows.clear()
      for w in windows:
        self.put(w)

  def put(self, w: Dict) -> None:
    """Window ``w`` joins the run, or replaces its earlier version (same start and end)."""
    self._fresh()
    wk = (w['window_start'], w['window_end'])
    old = self.windows.get(wk)
    self.windows[wk] = w
    seq = self._seq.setdefault(wk, len(self._seq))
    if old is None:
      bisect.insort(self._by_start, (w['window_start'], seq, wk))
      self._end = max(self._end, w['window_end'])
      self._add(wk, w, (), ((), ()))
    else:
      self._add(wk, w, *self._remove(wk, old))

  def _remove(self, wk: tuple, w: Dict) -> Tuple[Iterable[str], Tuple[List[str], List[str]]]:
    """Takes an earlier version out; returns its panes and the maxima it may have held."""
    at = bisect.bisect_left(self._best_first, (EvidencePool.order(w), wk))
    del self._best_first[at]
    if at < len(self._taken_at):
      if self._taken_at[at] == (self._taken_at[at - 1] if at else 0):
        del self._taken_at[at]  # it took no reason: the walk after it is unchanged
      else:
        self._cut_walk(at)
    _count(self._severities, (w['severity'],), -1)
    self._flagged -= int(bool(w.get('model_flagged', True)))
    for counter, items in zip(self._basis, _basis_of(w)):
      _count(counter, items, -1)
    for pane in w['panes']:
      del self._panes_of[pane][wk]
    if self._top[-1] == wk:
      self._top = None
    if self._score[-1] == wk:
      self._score = None
    return w['panes'], ([a for a, n in w.get('actions', {}).items() if self._actions.get(a) == n],
                        [r for r, n in w.get('resources', {}).items() if self._resources.get(r) == n])

  def _add(self, wk: tuple, w: Dict, old_panes: Iterable[str], held: Tuple[List[str], List[str]]) -> None:
    for attr, key in (('_top', self._top_key), ('_score', self._score_key)):
      mine, best = key(wk), getattr(self, attr)
      if best is None:  # the first window, or the holder was re-scored: over all windows
        setattr(self, attr, max((key(k) for k in self.windows), key=lambda x: x[:-1]))
      elif mine[:-1] > best[:-1]:
        setattr(self, attr, mine)
    self._items[wk] = reason_items(w)
    self._walk_in(wk, (EvidencePool.order(w), wk))
    _count(self._severities, (w['severity'],), 1)
    self._flagged += int(bool(w.get('model_flagged', True)))
    for counter, items in zip(self._basis, _basis_of(w)):
      _count(counter, items, 1)
    for pane in w['panes']:
      self._panes_of.setdefault(pane, {})[wk] = None
    for pane in {**dict.fromkeys(old_panes), **dict.fromkeys(w['panes'])}:
      self._settle_pane(pane)
    for counts, field, lowered in ((self._actions, 'actions', held[0]), (self._resources, 'resources', held[1])):
      for a in lowered:
        values = [x[field][a] for x in self.windows.values() if a in x.get(field, {})]
        if values:
          counts[a] = max([0] + values)  # to_finding's max(get(a, 0), n) fold
        else:
          del counts[a]
      for a, n in w.get(field, {}).items():
        counts[a] = max(counts.get(a, 0), n)
    self._calls[wk] = evidence.window_calls(w)
    self._pool.put(wk, w)

  def _top_key(self, wk: tuple) -> tuple:
    """to_finding's peak: max of (score, rules, -start) over windows in start order (first wins)."""
    w = self.windows[wk]
    return (w['score'], len(w.get('rules', ())), -w['window_start'], -self._seq[wk], wk)

  def _score_key(self, wk: tuple) -> tuple:
    w = self.windows[wk]
    return (w['score'], -w['window_start'], -self._seq[wk], wk)

  def _settle_pane(self, pane: str) -> None:
    """The pane's count from the last window (start order) holding it; keeps the total."""
    self._event_count -= self._panes.pop(pane, 0)
    holders = self._panes_of.get(pane)
    if not holders:
      self._panes_of.pop(pane, None)
      return
    wk = max(holders, key=lambda k: (k[0], self._seq[k]))
    self._panes[pane] = n = self.windows[wk]['panes'][pane]
    self._event_count += n

  def _cut_walk(self, at: int) -> None:
    """Forgets the reasons walk from the ``at``-th best window on."""
    del self._taken[self._taken_at[at - 1] if at else 0:]
    del self._taken_at[at:]

  def _walk_in(self, wk: tuple, order: tuple) -> None:
    """Puts a window in the best-first order and brings the reasons walk up to date: when it
    takes no reason, the walk after it is unchanged; else it is walked again from there."""
    at = bisect.bisect_left(self._best_first, order)
    self._best_first.insert(at, order)
    walked = len(self._taken_at)  # all windows but this one, unless a re-score cut the walk
    keep = self._taken_at[min(at, walked) - 1] if min(at, walked) else 0
    seen = set()
    for key, detail, _ in self._taken[:keep]:
      seen.update((key, detail))
    if walked == len(self._best_first) - 1:
      took: List = []
      take_reasons(self._items[wk], set(seen), took)
      if not took:
        self._taken_at.insert(at, keep)
        return
    self._cut_walk(min(at, walked))
    for _, k in self._best_first[len(self._taken_at):]:
      take_reasons(self._items[k], seen, self._taken)
      self._taken_at.append(len(self._taken))

  @property
  def start(self) -> float:
    self._fresh()
    return self._by_start[0][0]

  @property
  def end(self) -> float:
    self._fresh()
    return self._end

  def finding(self) -> Dict:
    """The run's finding as of now: ``to_finding`` of its windows."""
    self._fresh()
    windows = self.windows
    first = windows[self._by_start[0][2]]
    reasons = [dict(pub) for _, _, pub in self._taken]
    ev, share, change = self._basis
    finding = assemble(
        windows[self._top[-1]], first, self._by_start[0][0], self._end, windows[self._score[-1]]['score'],
        self._flagged > 0, max_severity(self._severities), reasons, self._actions, self._resources,
        self._event_count, len(windows),
        {'evidence': sorted(ev), 'shareable': sorted(share), 'change': sorted(change)[:6]})
    finding['evidence'] = self._pool.evidence(reasons)
    finding['window_actions'] = [self._calls[wk] for _, _, wk in self._by_start]  # shared by versions, never changed
    return finding
