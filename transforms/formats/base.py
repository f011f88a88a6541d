"""The parser interface and the helpers every format shares."""
from __future__ import annotations

import datetime
from typing import Any, Protocol

from transforms.event import Event

# Timestamps outside this range are data errors, not events (epoch zero,
# millisecond values read as seconds, year 9999 sentinels...).
MIN_TIME = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
MAX_TIME = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc).timestamp()


class ParseError(ValueError):
  """A record that cannot become an Event; the message is the dead-letter reason."""


class RecordFormat(Protocol):
  name: str

  def sniff(self, record: dict) -> bool:
    ...

  def parse(self, record: dict, raw_ref: str, taxonomy: Any) -> Event:
    ...


def parse_time(value: Any) -> float:
  """RFC 3339 string -> epoch seconds, rejecting absurd values."""
  if not isinstance(value, str) or not value:
    raise ParseError(f'missing or non-string time: {value!r}'[:200])
  text = value.strip()
  if text.endswith('Z') or text.endswith('z'):
    text = text[:-1] + '+00:00'
  try:
    parsed = datetime.datetime.fromisoformat(text)
  except ValueError as e:
    raise ParseError(f'unparseable time {value!r}'[:200]) from e
  if parsed.tzinfo is None:
    parsed = parsed.replace(tzinfo=datetime.timezone.utc)
  seconds = parsed.timestamp()
  if not MIN_TIME <= seconds < MAX_TIME:
    raise ParseError(f'absurd time {value!r}')
  return seconds


def text(value: Any, limit: int = 512) -> str:
  """A bounded string field; non-strings are rejected, None becomes ''."""
  if value is None:
    return ''
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  if not isinstance(value, str):
    raise ParseError(f'expected a string, got {type(value).__name__}')
  return value[:limit]
