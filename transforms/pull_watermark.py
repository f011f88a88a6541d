"""What one part of the Pub/Sub reader remembers, and its event-time watermark.

Event-time watermark (``advance``), for each part. Pub/Sub has no backlog count in its data
plane and answers a pull short, or empty, while messages remain (and a killed reader's leased
messages come back only after the ack deadline), so a short pull proves nothing:

* it follows the data: after a pull it may rise to the oldest event time that pull returned
  minus ``max_delay`` (never past wall clock - ``max_delay``), so it never passes what is being
  read; a backlog older than the allowed lateness, read after an outage or a restart, starts
  from the minimum and is scored, not dead-lettered as late;
* the reader is *caught up* only after ``caught_up_pulls`` consecutive empty answers spanning
  at least ``caught_up_seconds`` (a pull that timed out with nothing is an empty answer; a failed
  pull breaks the run); then it trails the newest event time by ``max_delay``, and once
  ``idle_seconds`` passed without a message it moves to wall clock - ``max_delay``, at most
  ``idle_limit`` past the newest event;
* never before the part's first message, and never from a timestamp attribute more than
  ``--max-clock-skew`` ahead of the wall clock (``stamp_messages``, shared with the native reader:
  such a record is stamped with the newest acceptable time and dead-lettered).
"""
from __future__ import annotations

import typing
from typing import List, Optional

from postauth.transforms.clock import ClockSkew


class PullState(typing.NamedTuple):
  """The restriction: what one part of the source must remember across checkpoints."""
  subscription: str
  newest: Optional[float]  # newest event time read so far (seconds)
  watermark: float  # seconds; float('-inf') before the first advance
  last_message: float  # wall-clock time a message was last read (or the source started)
  done: bool = False
  # wall-clock time the newest event time last moved (or the source started): what
  # --pubsub-stop-idle waits on, so redeliveries of unacked messages do not keep a source alive
  last_newer: Optional[float] = None
  # consecutive empty answers since the last message, and the wall-clock time the first of them
  # was sent: the only evidence that the backlog is empty (a short answer is none)
  empty_pulls: int = 0
  empty_since: Optional[float] = None
  # the reader slots [slot_start, slot_end) this part holds; each slot is one pull loop
  slot_start: int = 0
  slot_end: int = 1


# One pull loop unless asked for more: a part holds the watermark until it reads a message, so
# on a quiet subscription a second part that Pub/Sub feeds nothing would hold it for good.
DEFAULT_READERS = 1


class PullSettings(typing.NamedTuple):
  timestamp_attribute: Optional[str] = None
  max_messages: int = 500
  max_pulls: int = 20  # pulls per process() call while each one comes back full
  interval: float = 1.0  # seconds between pull rounds once a pull came back short
  max_delay: int = 60
  idle_seconds: float = 10.0
  idle_limit: int = 14400
  stop_idle: float = 0.0
  pull_timeout: float = 10.0
  # 'finalize': ack when the bundle that read a message is committed (bundle finalization);
  # 'counted': emit each (message id, (subscription, ack id)) on the ACK_IDS output instead, for
  # transforms.pubsub_ack to ack once the message's outcome is written.
  ack_mode: str = 'finalize'
  # a timestamp attribute further ahead of the wall clock moves nothing (transforms/clock.py)
  skew: ClockSkew = ClockSkew()
  readers: int = DEFAULT_READERS  # reader slots: parts that pull the subscription concurrently
  # Caught up (the backlog is empty) only after this many consecutive empty answers spanning
  # at least this long: until then the watermark only follows the data read. At least the
  # subscription's ack deadline waits out the leases of a reader that died.
  caught_up_pulls: int = 3
  caught_up_seconds: float = 30.0


class PullOutcome(typing.NamedTuple):
  """One pull: when it was sent and how many messages came back (0: none; -1: it failed)."""
  sent: float
  count: int


def advance(state: PullState, times: List[float], pulls: List[PullOutcome], now: float,
            s: PullSettings) -> PullState:
  """The part's state after a pull round that read messages with event times ``times``.

  Invariants: the watermark never decreases and never passes wall clock - ``max_delay``; a
  round with messages raises it at most to its oldest event time - ``max_delay``; it does not
  move before the part's first message; only ``caught_up_pulls`` empty answers in a row spanning
  ``caught_up_seconds`` take it further (to the newest event - ``max_delay``, and once idle for
  ``idle_seconds`` to the clock).
  """
  empty, since = state.empty_pulls, state.empty_since
  for p in pulls:
    if p.count == 0:
      empty, since = empty + 1, (since if empty else p.sent)
    else:  # messages, or a failed pull: no evidence either way
      empty, since = 0, None
  known = ([state.newest] if state.newest is not None else []) + list(times)
  newest = max(known) if known else None
  last_message = now if any(p.count > 0 for p in pulls) else state.last_message
  bound = now - s.max_delay
  candidate = float('-inf')
  if times:
    candidate = min(min(times) - s.max_delay, bound)
  caught_up = (newest is not None and empty >= max(1, s.caught_up_pulls)
               and now - since >= s.caught_up_seconds)
  if caught_up:
    candidate = max(candidate, min(newest - s.max_delay, bound))
    if now - last_message >= s.idle_seconds:
      idle = bound if s.idle_limit <= 0 else min(bound, newest + s.idle_limit)
      candidate = max(candidate, idle)
  return state._replace(newest=newest, watermark=max(state.watermark, candidate),
                        last_message=last_message, empty_pulls=empty, empty_since=since)
