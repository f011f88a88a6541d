"""The parser interface and the helpers every format shares."""
from __future__ import annotations

import datetime
import re
import typing
from typing import Any, Optional, Protocol

from postauth.domain.event import Event

# Timestamps outside this range are data errors, not events (epoch zero,
# millisecond values read as seconds, year 9999 sentinels...).
MIN_TIME = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
MAX_TIME = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc).timestamp()


class ParseError(ValueError):
  """A record that cannot become an Event; the message is the dead-letter reason."""


class Skip(Exception):
  """A record that is neither an event nor bad input (an AWS service event without an actor, a
  chat span): counted as skipped with the message as its reason, never dead-lettered."""


class Item(typing.NamedTuple):
  """One outcome of a record that holds several (an OTLP request holds many spans).

  Exactly one of: ``event``; ``skipped`` with ``reason``; a dead letter with ``reason``.
  ``raw`` is the item's own payload (the span, with tool arguments redacted) for dead letters.
  """
  event: Optional[Event]
  reason: str
  skipped: bool
  raw: bytes
  ref: str


class RecordFormat(Protocol):
  name: str

  def sniff(self, record: dict) -> bool:
    ...

  def parse(self, record: dict, raw_ref: str, taxonomy: Any) -> Event:
    """One event, or ``ParseError`` (dead letter) or ``Skip`` (counted, not an error)."""
    ...

# A format whose records hold several events also has ``parse_many(record, raw_ref, taxonomy)
# -> Iterator[Item]``; one that reads binary messages (OTLP protobuf from Pub/Sub) has
# ``parse_bytes(raw, raw_ref, taxonomy) -> Optional[Iterator[Item]]`` (None: not its bytes).


# RFC 3339 allows any number of fraction digits; K8s, GCP and Panther exports
# write 0 to 9. Python 3.11's fromisoformat takes them all, 3.10's only 3 or 6:
# on failure the fraction is cut or padded to microseconds and parsed again.
_FRACTION = re.compile(r'(\d\d:\d\d:\d\d)\.(\d+)')


def _microsecond_fraction(text: str) -> str:
  return _FRACTION.sub(lambda m: m.group(1) + '.' + (m.group(2) + '000000')[:6], text, count=1)


def parse_time(value: Any) -> float:
  """RFC 3339 string (any number of fraction digits, Z or offset) -> epoch seconds, rejecting absurd values."""
  if not isinstance(value, str) or not value:
    raise ParseError(f'missing or non-string time: {value!r}'[:200])
  text = value.strip()
  if text.endswith('Z') or text.endswith('z'):
    text = text[:-1] + '+00:00'
  try:
    parsed = datetime.datetime.fromisoformat(text)
  except ValueError:
    try:
      parsed = datetime.datetime.fromisoformat(_microsecond_fraction(text))
    except ValueError as e:
      raise ParseError(f'unparseable time {value!r}'[:200]) from e
  if parsed.tzinfo is None:
    parsed = parsed.replace(tzinfo=datetime.timezone.utc)
  seconds = parsed.timestamp()
  if not MIN_TIME <= seconds < MAX_TIME:
    raise ParseError(f'absurd time {value!r}'[:200])
  return seconds


def check_time(seconds: Any) -> float:
  """Epoch seconds as a float, rejecting non-numbers, NaN and values outside 2000-2100."""
  if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
    raise ParseError(f'expected epoch seconds, got {seconds!r}'[:200])
  if not MIN_TIME <= seconds < MAX_TIME:  # NaN fails both comparisons
    raise ParseError(f'absurd time {seconds!r}'[:200])
  return float(seconds)


def text(value: Any, limit: int = 512) -> str:
  """A bounded string field; non-strings are rejected, None becomes ''."""
  if value.__class__ is str:  # most fields of most records: one check
    return value[:limit]
  if value is None:
    return ''
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  if not isinstance(value, str):
    raise ParseError(f'expected a string, got {type(value).__name__}')
  return value[:limit]
