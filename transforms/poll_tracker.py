"""The restriction tracker of postauth's polling sources (folder watch, Pub/Sub pull).

Their restriction is a NamedTuple state with a ``done`` flag: everything the source must
remember across checkpoints (files read, watermark inputs, ...). A ``process()`` call claims
one new state (one poll round) and then checkpoints or stops; a round is not divisible, so the
tracker splits only at checkpoints. ``done_state`` says what the primary keeps when it is
closed at a checkpoint (e.g. the watch drops its set of files read: the residual carries it).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker


class PollTracker(RestrictionTracker):
  """One claim per process() call: the state after that poll. Splits only at checkpoints."""

  def __init__(self, state: Any, name: str,
               done_state: Callable[[Any], Any] = lambda s: s._replace(done=True)):
    self._state = state
    self._name = name
    self._done_state = done_state
    self._claimed: Optional[Any] = None

  def current_restriction(self) -> Any:
    return self._state

  def try_claim(self, new_state: Any) -> bool:
    if self._state.done or self._claimed is not None:
      return False
    self._claimed = new_state
    if new_state.done:
      self._state = new_state
    return True

  def try_split(self, fraction_of_remainder):
    if fraction_of_remainder > 0 or self._state.done:
      return None  # a poll round is not divisible: only checkpoints
    residual = self._claimed if self._claimed is not None else self._state
    primary = self._done_state(self._state)
    self._state = primary
    return primary, residual

  def check_done(self):
    if not self._state.done:
      raise ValueError(f'{self._name} restriction not done: the poll loop must checkpoint or stop')

  def current_progress(self) -> RestrictionProgress:
    return RestrictionProgress(completed=1 if self._state.done else 0,
                               remaining=0 if self._state.done else 1)

  def is_bounded(self) -> bool:
    return self._state.done
