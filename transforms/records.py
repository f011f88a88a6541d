"""Split raw log bytes into individual records, without losing any.

CloudTrail's S3 delivery wraps records in ``{"Records": [...]}`` (often gzipped);
most other pipelines write JSON lines. Whole files are split here in one pass so
that Beam pays per record only once, in the parse step.
"""
from __future__ import annotations

import gzip
import typing
import zlib
from typing import Iterator, Optional

import orjson


class RawRecord(typing.NamedTuple):
  """One record as read: its bytes, its parsed JSON if that worked, where it came from."""
  raw: bytes
  obj: Optional[dict]
  error: str  # '' when obj is a usable dict
  ref: str  # "source#index"


def decode(raw: bytes, ref: str) -> RawRecord:
  """Parses one record's bytes; errors are kept on the record, never raised."""
  try:
    obj = orjson.loads(raw)
  except orjson.JSONDecodeError as e:
    return RawRecord(raw, None, f'invalid JSON: {e}'[:300], ref)
  if not isinstance(obj, dict):
    return RawRecord(raw, None, f'record is a JSON {type(obj).__name__}, not an object', ref)
  return RawRecord(raw, obj, '', ref)


def split_records(data: bytes, source: str, max_record_bytes: int = 1 << 20) -> Iterator[RawRecord]:
  """Yields every record in ``data``; undecodable parts come out with ``error`` set."""
  if data[:2] == b'\x1f\x8b':
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      yield RawRecord(data, None, f'corrupt gzip: {e}'[:300], f'{source}#0')
      return
  stripped = data.strip()
  if not stripped:
    return
  whole = None
  if stripped[:1] in (b'{', b'['):
    try:
      whole = orjson.loads(stripped)
    except orjson.JSONDecodeError:
      whole = None  # JSON lines, or a damaged document: split by line below
  if isinstance(whole, dict) and isinstance(whole.get('Records'), list):
    items = whole['Records']
  elif isinstance(whole, list):
    items = whole
  elif isinstance(whole, dict):
    items = [whole]
  else:
    items = None
  if items is not None:
    for i, item in enumerate(items):
      ref = f'{source}#{i}'
      if isinstance(item, dict):
        yield RawRecord(orjson.dumps(item), item, '', ref)
      else:
        yield RawRecord(orjson.dumps(item), None, 'record is not a JSON object', ref)
    return
  for i, line in enumerate(stripped.split(b'\n')):
    line = line.strip()
    if not line:
      continue
    ref = f'{source}#{i}'
    if len(line) > max_record_bytes:
      yield RawRecord(line, None, f'record of {len(line)} bytes exceeds {max_record_bytes}', ref)
    else:
      yield decode(line, ref)


def raw_text(raw: bytes) -> str:
  """The raw payload as text for a dead letter, keeping undecodable bytes visible."""
  return raw.decode('utf-8', errors='backslashreplace')
