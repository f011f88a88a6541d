"""Event time may trail the wall clock without bound, never lead it: the one check of a record's
time against the clock, shared by every source and the parse.

Why: the streaming sources take their watermark from the records (the folder watch, the file
replay) or from the message's timestamp attribute (both Pub/Sub readers), and the parsers accept
any time before 2100. One record dated 2099 would move the watermark to 2099: every later event
would be dead-lettered as late, and the bad value would live on in the restriction across
checkpoints. Past times are legitimate (a replay or backfill of an old day is far behind the
clock); a time in the future is not, beyond the clock skew between the log's writer and this job.

Invariants, for every source and the parse alike:

* a time more than ``max_skew`` seconds ahead of ``clock()`` is *ahead*;
* a record whose time is ahead never moves a watermark, never becomes a source's newest time and
  never becomes an event: the source stamps it with a time it already holds (its neighbour's, the
  newest it read) and the parse dead-letters it with reason ``time_ahead_of_clock`` (the reason
  name and the counter are both ``TIME_AHEAD``), so ``records_read = events_parsed + dead_lettered
  + skipped`` still adds up;
* ``clock`` is a picklable callable (``time.time``, or ``FixedClock`` in tests), read when a
  record is checked, never cached: a long-running job's horizon moves with the clock.

A source that finds a time ahead before any parser sees the record (a Pub/Sub timestamp
attribute) marks the ``RawRecord`` with ``ahead_reason(detail)`` as its error; the parse turns the
mark into the same dead letter, before any format may read the record.
"""
from __future__ import annotations

import datetime
import time
import typing
from typing import Callable, Optional, Tuple

TIME_AHEAD = 'time_ahead_of_clock'
DEFAULT_MAX_CLOCK_SKEW = 900.0  # seconds: NTP keeps hosts within a second; 15 min is generous


class FixedClock:
  """A clock that always reads ``now`` (tests; picklable, unlike a lambda)."""

  def __init__(self, now: float):
    self.now = float(now)

  def __call__(self) -> float:
    return self.now


def _iso(seconds: float) -> str:
  try:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
  except (OverflowError, OSError, ValueError):
    return f'{seconds:.0f}'


class ClockSkew(typing.NamedTuple):
  """How far ahead of ``clock()`` a record's time may be (``--max-clock-skew``)."""
  max_skew: float = DEFAULT_MAX_CLOCK_SKEW
  clock: Callable[[], float] = time.time

  def horizon(self) -> float:
    """The latest acceptable time now: ``clock() + max_skew``."""
    return self.clock() + self.max_skew

  def ahead(self, seconds: Optional[float], what: str = 'event time',
            horizon: Optional[float] = None) -> str:
    """'' when ``seconds`` is acceptable (or unknown), else why not (a dead letter's detail).

    ``horizon``: a value of ``horizon()`` taken earlier, to check many records against one
    reading of the clock.
    """
    if seconds is None:
      return ''
    limit = self.horizon() if horizon is None else horizon
    if seconds <= limit:
      return ''
    now = limit - self.max_skew
    return (f'{what} {_iso(seconds)} is {seconds - now:.0f} s ahead of the wall clock '
            f'({_iso(now)}); at most {self.max_skew:g} s are allowed (--max-clock-skew)')[:300]


def ahead_reason(detail: str) -> str:
  """The error a source puts on a record whose time it found ahead of the clock."""
  return f'{TIME_AHEAD}: {detail}'


def split_reason(reason: str) -> Tuple[str, str]:
  """(reason, detail) of a dead letter: ``TIME_AHEAD`` and its detail, or ``reason`` and ''."""
  if reason.startswith(TIME_AHEAD + ': '):
    return TIME_AHEAD, reason[len(TIME_AHEAD) + 2:]
  return reason, ''
