"""What an identity has done before, as of a window: the one fold that training and live scoring share.

A window is judged against the identity's history *before its day*: windows of day D
are featurised against the profile of days < D and only folded in when day D is
over. Sliding windows overlap, so folding each window in at once would make a
burst look familiar to the very next window; folding per day is also what the
training job sees, so features are computed the same way in training and live.

A streaming window fires again when late events arrive (its aggregate then holds
every event so far), and some runners fire it once more when it closes, with
nothing new. So live scoring folds windows through a small ledger: a window that
may still fire again (its end within ``refire_horizon`` of the newest window end)
is kept apart, one single-window profile per window start, and a later firing
replaces it; once past the horizon it settles into the day's profile, and its
event count is kept a day longer. A firing with no event beyond the one before
is a repeat (``firing``), for the caller to drop; a firing with new events of a
window that settled already is scored but not folded again. The history is
therefore the fold of each window's last firing, once, as in a batch run over the
same events. Invariants: no window counts twice; a window is never judged against
its own contribution; profiles handed out are never modified (every change to
``base`` makes a new object).

The state is a few bounded ``IdentityProfile`` s (the base, today's settled
delta, the ledger of at most ``horizon / period + 1`` windows, and the day
before's base while its windows may still fire) plus a few scalars, so it can
live in Beam keyed state per identity (streaming) or be rebuilt by walking an
identity's sorted windows (batch): both call ``observe``.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Optional, Tuple

from postauth.models.profile import IdentityProfile, prunes_alone

DAY = 86400


def day_of(window_end: float) -> int:
  """The UTC day a window belongs to (the day of its last instant)."""
  return int(math.floor((window_end - 1e-6) / DAY))


class _Firing:
  """A ledger window's last firing as its aggregate, folded into a profile only where it is
  folded: ``fold_into(p)`` is ``p.update(agg)``, which is what merging the window's own
  profile into ``p`` did (the same sums, keys in the same order, pruned at the same points) as
  long as that profile would not prune a seen-set on its own: such a window is kept as its
  profile (``ledger_entry``). Most windows settle once; building a profile per window only to
  merge it cost as much again. The aggregate is never changed after it is observed."""

  __slots__ = ('agg', 'end')

  def __init__(self, agg, end: float):
    self.agg, self.end = agg, end

  @property
  def events(self) -> int:
    return self.agg.count

  @property
  def last_seen(self) -> float:
    return self.agg.last_time  # a window's last event: what its profile's last_seen would be

  def profile(self) -> IdentityProfile:
    return IdentityProfile().update(self.agg, self.end)

  def fold_into(self, profile: IdentityProfile) -> None:
    profile.update(self.agg, self.end)


def ledger_entry(agg, window_end: float):
  """What the ledger keeps of a window's firing: a ``_Firing``, or its profile if that prunes alone."""
  return IdentityProfile().update(agg, window_end) if prunes_alone(agg) else _Firing(agg, window_end)


def _fold(entry, into: IdentityProfile) -> IdentityProfile:
  if isinstance(entry, _Firing):
    entry.fold_into(into)
  else:
    into.merge(entry)
  return into


def _profile(entry) -> IdentityProfile:
  return entry.profile() if isinstance(entry, _Firing) else entry


class IdentityHistory:
  """Per-identity history: ``observe(window)`` returns the profile to judge it against."""

  __slots__ = ('base', 'today', 'day', 'first_day', 'unregistered_clock', 'last_active', 'open',
               'closed', 'previous', '_merged', '_closed_from')
  _TRANSIENT = ('_merged', '_closed_from')

  def __init__(self, base: Optional[IdentityProfile] = None):
    self.base = base or IdentityProfile()  # days before ``day``, settled windows
    self.today = IdentityProfile()  # settled windows of ``day``
    self.day: Optional[int] = None
    # The first day this history covers: a trained profile counts as history
    # from the start; a new identity needs warm-up days before it is judged.
    self.first_day: Optional[int] = None if not self.base.windows else -1
    # When an unregistered-identity finding was last raised (transforms/unregistered.py).
    self.unregistered_clock = None
    # The latest window end observed: what the streaming state's expiry counts idle time from
    # (transforms/history.py), and the clock windows settle by. None in state written before it.
    self.last_active: Optional[float] = None
    # The ledger: window start -> (window end, that window's last firing: ``ledger_entry``).
    self.open: Dict[float, Tuple[float, object]] = {}
    # Windows settled within the last day: start -> (end, events in its last firing).
    self.closed: Dict[float, Tuple[float, int]] = {}
    # (the day before ``day``, its base): what a late firing of that day is judged against.
    self.previous: Optional[Tuple[int, IdentityProfile]] = None
    self._merged = None  # cache of the last base + ledger merge (not persisted)
    self._closed_from = float('inf')  # no end in ``closed`` is below it (not persisted)

  def observe(self, agg, window_end: float, window_start: Optional[float] = None,
              refire_horizon: float = 0.0) -> IdentityProfile:
    """Folds the window in; returns the profile of the days before its day.

    With ``refire_horizon`` > 0 (live scoring) the window goes through the ledger, replacing
    an earlier firing of the same ``window_start``; without it (training, where each window
    comes once) it is folded into today's delta at once."""
    day = day_of(window_end)
    if self.first_day is None:
      self.first_day = day
    if self.day is not None and day > self.day:
      self._roll_over()
    if self.day is None or day > self.day:
      self.day = day
    before = self._before(day, window_start)
    self.last_active = window_end if self.last_active is None else max(self.last_active, window_end)
    if refire_horizon > 0 and window_start is not None:
      if window_start not in self.closed:  # else: folded already; scored, not counted twice
        self.open[window_start] = (window_end, ledger_entry(agg, window_end))
      self._settle(self.last_active - refire_horizon, refire_horizon)
    else:
      # A late window of an earlier day is judged against the current base and folded into
      # today's delta: history never moves backwards.
      self.today.update(agg, window_end)
    return before

  def firing(self, window_start: float, window_end: float, events: int, index: int = 0) -> str:
    """What a firing (Beam's pane ``index``) of a window with ``events`` events is: ``first``;
    ``again`` (it replaces the one in the ledger); ``late`` (new events for a window that
    settled: scored, not folded again); ``repeat`` (no event beyond the last firing); or
    ``forgotten``: a later firing of a window too old for the history to have kept its record
    (a day behind the newest window: the history ran that far ahead of it), so it cannot be told
    from a repeat: not folded again, never counted twice. A later firing of a window the history
    has not seen but could still hold (firings can reach it out of order) is its ``first``."""
    if window_start in self.open:
      return 'again' if events > self.open[window_start][1].events else 'repeat'
    if window_start in self.closed:
      return 'late' if events > self.closed[window_start][1] else 'repeat'
    if index > 0 and self.last_active is not None and window_end <= self.last_active - DAY:
      return 'forgotten'
    return 'first'

  def _roll_over(self) -> None:
    # A new base object, never an in-place merge: profiles handed out for
    # earlier windows stay as they were (they may not be scored yet).
    self.previous = (self.day, self.base) if self.open else None
    self.base = copy.deepcopy(self.base).merge(self.today)
    self.today = IdentityProfile()

  def _before(self, day: int, window_start: Optional[float]) -> IdentityProfile:
    """The base for a window of ``day``: settled days before it plus ledger windows of days
    before it, never the window's own earlier firing."""
    root = self.base
    if day < (self.day or day) and self.previous is not None:
      root = self.previous[1]  # a late firing of the day before: judged as it was then
    prior = sorted(((s, p) for s, (e, p) in self.open.items() if day_of(e) < day and s != window_start),
                   key=lambda sp: sp[0])
    if not prior:
      return root
    key = (id(root),) + tuple(id(p) for _, p in prior)
    if self._merged is None or self._merged[0] != key:
      merged = copy.deepcopy(root)
      for _, p in prior:
        _fold(p, merged)
      self._merged = (key, merged)
    return self._merged[1]

  def _settle(self, upto: float, horizon: float) -> None:
    """Moves ledger windows that can no longer fire again (ending at or before ``upto``) into
    the profiles: the day's own one by one into today's delta, the day before's all at once
    into the base when the whole day is past (one merge, the one ``_before`` already made)."""
    for start in sorted(s for s, (e, _) in self.open.items() if e <= upto and day_of(e) == self.day):
      end, entry = self.open.pop(start)
      _fold(entry, self.today)
      self.closed[start] = (end, entry.events)
      self._closed_from = min(self._closed_from, end)
    if self.day is not None and upto >= self.day * DAY:
      if any(day_of(e) < self.day for e, _ in self.open.values()):
        self.base = self._before(self.day, None)
        for start, (end, profile) in list(self.open.items()):
          if day_of(end) < self.day:
            self.closed[start] = (end, self.open.pop(start)[1].events)
            self._closed_from = min(self._closed_from, end)
      self.previous = None
    # A re-fire normally reaches the history within a horizon of its window settling, but a busy
    # runner (a replay, a backlog) can run the history hours ahead of a window's late firings:
    # a day of records (~30 bytes a window) tells their counts; later ones are ``forgotten``.
    if self._closed_from <= upto - DAY:  # some record is a day old: keep the others
      self.closed = {s: v for s, v in self.closed.items() if v[0] > upto - DAY}
      self._closed_from = min((v[0] for v in self.closed.values()), default=float('inf'))

  def final_profile(self) -> IdentityProfile:
    """Everything observed so far folded together (what a trained model stores per identity)."""
    merged = copy.deepcopy(self.base).merge(self.today)
    for _, (_, p) in sorted(self.open.items(), key=lambda kv: kv[0]):
      _fold(p, merged)
    return merged

  def days_of_history(self, window_end: float) -> int:
    """Complete days of history before this window's day (a trained base counts as many)."""
    if self.first_day == -1:
      return 1 << 30
    if self.first_day is None:
      return 0
    return max(0, day_of(window_end) - self.first_day)

  def last_seen_before(self) -> float:
    """When the identity was last active before the current day (-inf if never)."""
    return self.base.last_seen

  def last_seen(self) -> float:
    """The latest event time seen of the identity, today included (-inf if never)."""
    return max([self.base.last_seen, self.today.last_seen] + [p.last_seen for _, p in self.open.values()])

  # -- persistence (Beam state coders pickle this object; keep it small) -------
  def __getstate__(self):
    state = {k: getattr(self, k) for k in self.__slots__ if k not in self._TRANSIENT}
    state['open'] = {s: (e, _profile(p)) for s, (e, p) in self.open.items()}  # profiles, as ever
    return state

  def __setstate__(self, state):
    for k in self.__slots__:
      setattr(self, k, state.get(k))
    self._closed_from = float('-inf')  # unknown: the next settle looks
    if self.open is None:  # state written before the ledger
      self.open, self.closed = {}, {}
