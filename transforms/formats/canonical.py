"""postauth's own canonical events: JSON lines of Event and records of its Avro files.

Both arrive here as dicts (``transforms.records`` decodes Avro containers). They
were parsed once already, so they are validated rather than re-mapped: types,
time range and the fields an event cannot do without.
"""
from __future__ import annotations

from typing import Any

from postauth.domain.event import Event
from postauth.transforms.formats.base import ParseError, check_time, parse_time
from postauth.domain.taxonomy import CATEGORIES

FIELDS = frozenset(Event._fields)
REQUIRED = ('identity', 'event_time', 'provider', 'action')
# A record naming at least this many canonical fields is one of ours. No other
# format shares more than a couple of these names at top level.
SNIFF_MIN_FIELDS = 9
MAX_TEXT = 2048


def _text(record: dict, field: str) -> str:
  value = record.get(field)
  if value is None:
    return ''
  if not isinstance(value, str):
    raise ParseError(f'{field}: expected a string, got {type(value).__name__}')
  return value[:MAX_TEXT]


def _flag(record: dict, field: str, default: bool) -> bool:
  value = record.get(field)
  if value is None:
    return default
  if not isinstance(value, bool):
    raise ParseError(f'{field}: expected a boolean, got {type(value).__name__}')
  return value


def _time(value: Any) -> float:
  """Epoch seconds (as written) or an RFC 3339 string (hand-written JSON lines)."""
  if value is None:
    raise ParseError('missing event_time')
  if isinstance(value, str):
    return parse_time(value)
  return check_time(value)


def _duration(value: Any) -> float:
  if value is None:
    return 0.0
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 86400:
    raise ParseError(f'duration: expected seconds in [0, 86400), got {str(value)[:40]!r}')
  return float(value)


class Canonical:
  name = 'canonical'

  def sniff(self, record: dict) -> bool:
    return len(FIELDS.intersection(record)) >= SNIFF_MIN_FIELDS

  def parse(self, record: dict, raw_ref: str, taxonomy) -> Event:
    for field in REQUIRED:
      if record.get(field) in (None, ''):
        raise ParseError(f'missing {field}')
    event_time = _time(record.get('event_time'))
    provider, service, action = (_text(record, f) for f in ('provider', 'service', 'action'))
    category = _text(record, 'category')
    if not category:
      category = taxonomy.categorize(provider, service, action)
    elif category not in CATEGORIES:
      raise ParseError(f'unknown category {category[:50]!r}')
    error_code = _text(record, 'error_code')
    return Event(
        event_id=_text(record, 'event_id') or raw_ref,
        event_time=event_time,
        identity=_text(record, 'identity'),
        identity_type=_text(record, 'identity_type'),
        principal_raw=_text(record, 'principal_raw'),
        session_id=_text(record, 'session_id'),
        provider=provider,
        service=service,
        action=action,
        category=category,
        resource=_text(record, 'resource'),
        region=_text(record, 'region'),
        source_ip=_text(record, 'source_ip'),
        user_agent=_text(record, 'user_agent'),
        success=_flag(record, 'success', not error_code),
        error_code=error_code,
        read_only=_flag(record, 'read_only', False),
        # Keep the reference to the original log record: re-reading postauth's
        # own output must give the same events.
        raw_ref=_text(record, 'raw_ref') or raw_ref,
        duration=_duration(record.get('duration')),
        tool_call=_text(record, 'tool_call'),
        acting_for=_text(record, 'acting_for'))
