"""What an identity has done before, as of a window: the one fold that training and live scoring share.

A window is judged against the identity's history *before its day*: windows of day D
are featurised against the profile of days < D and only folded in when day D is
over. Sliding windows overlap, so folding each window in at once would make a
burst look familiar to the very next window; folding per day is also what the
training job sees, so features are computed the same way in training and live.

The state is two bounded ``IdentityProfile`` s (the base and today's delta) plus
a few scalars, so it can live in Beam keyed state per identity (streaming) or be
rebuilt by walking an identity's sorted windows (batch): both call ``observe``.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

from postauth.models.profile import IdentityProfile

DAY = 86400


def day_of(window_end: float) -> int:
  """The UTC day a window belongs to (the day of its last instant)."""
  return int(math.floor((window_end - 1e-6) / DAY))


class IdentityHistory:
  """Per-identity history: ``observe(window)`` returns the profile to judge it against."""

  __slots__ = ('base', 'today', 'day', 'first_day', 'unregistered_clock', 'last_active')

  def __init__(self, base: Optional[IdentityProfile] = None):
    self.base = base or IdentityProfile()
    self.today = IdentityProfile()
    self.day: Optional[int] = None
    # The first day this history covers: a trained profile counts as history
    # from the start; a new identity needs warm-up days before it is judged.
    self.first_day: Optional[int] = None if not self.base.windows else -1
    # When an unregistered-identity finding was last raised (transforms/unregistered.py).
    self.unregistered_clock = None
    # The latest window end observed: what the streaming state's expiry counts idle time from
    # (transforms/history.py). None in state written before it: set at the next window.
    self.last_active: Optional[float] = None

  def observe(self, agg, window_end: float) -> IdentityProfile:
    """Folds the window into today's delta; returns the profile of the days before."""
    day = day_of(window_end)
    if self.first_day is None:
      self.first_day = day
    if self.day is not None and day > self.day:
      # A new base object, never an in-place merge: profiles handed out for
      # earlier windows stay as they were (they may not be scored yet).
      self.base = copy.deepcopy(self.base).merge(self.today)
      self.today = IdentityProfile()
    if self.day is None or day > self.day:
      self.day = day
    # A late window of an earlier day is judged against the current base and
    # folded into today's delta: history never moves backwards.
    before = self.base
    self.today.update(agg, window_end)
    self.last_active = window_end if self.last_active is None else max(self.last_active, window_end)
    return before

  def final_profile(self) -> IdentityProfile:
    """Everything observed so far folded together (what a trained model stores per identity)."""
    return copy.deepcopy(self.base).merge(self.today)

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
    return max(self.base.last_seen, self.today.last_seen)

  # -- persistence (Beam state coders pickle this object; keep it small) -------
  def __getstate__(self):
    return {k: getattr(self, k) for k in self.__slots__}

  def __setstate__(self, state):
    for k in self.__slots__:
      setattr(self, k, state.get(k))
