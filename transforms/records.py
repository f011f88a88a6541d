"""Split raw log bytes into individual records, without losing any.

CloudTrail's S3 delivery wraps records in ``{"Records": [...]}`` (often gzipped);
most other pipelines write JSON lines; postauth itself writes Avro container
files. Whole files are split here in one pass so that Beam pays per record only
once, in the parse step.
"""
from __future__ import annotations

import base64
import gzip
import io
import typing
import zlib
from typing import Any, Iterator, Optional, Tuple

import fastavro
import orjson

AVRO_MAGIC = b'Obj\x01'
# An OTLP/JSON line (the collector's file exporter) is a whole batch of spans, often several MB;
# each span is then parsed as its own record, so such a line may be this large.
OTLP_MAX_BYTES = 64 << 20
OTLP_PREFIXES = (b'{"resourceSpans"', b'{"resource_spans"')


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


def _json_default(value: Any) -> Any:
  """Avro values orjson cannot write (bytes, decimals...) as text, for the raw payload."""
  if isinstance(value, (bytes, bytearray)):
    return base64.b64encode(bytes(value)).decode('ascii')
  return str(value)


SYNC_SIZE = 16  # an Avro header ends with the file's sync marker, repeated after every block


def _avro_blocks(data: bytes) -> Iterator[Tuple[int, int, Any, str]]:
  """(start, end, block or None, error) over an Avro container's blocks.

  After a block that cannot be read (bad length, codec error, missing sync
  marker) reading resumes after the next sync marker, so one damaged block
  costs that block only.
  """
  fo = io.BytesIO(data)
  try:
    blocks = iter(fastavro.block_reader(fo))
  except Exception as e:  # fastavro raises many types on a bad header
    yield 0, len(data), None, f'corrupt Avro header: {type(e).__name__}: {e}'
    return
  header_end = fo.tell()
  sync = data[header_end - SYNC_SIZE:header_end]
  shift = 0  # offset of the current reader's data within ``data``
  good_end = header_end
  while True:
    try:
      block = next(blocks)
    except StopIteration:
      return
    except Exception as e:
      found = data.find(sync, good_end)
      end = len(data) if found < 0 else found + SYNC_SIZE
      yield good_end, end, None, f'corrupt Avro block at byte {good_end}: {type(e).__name__}: {e}'
      if end >= len(data):
        return
      shift = end - header_end
      blocks = iter(fastavro.block_reader(io.BytesIO(data[:header_end] + data[end:])))
      good_end = end
      continue
    start, good_end = block.offset + shift, block.offset + block.size + shift
    yield start, good_end, block, ''


def split_avro(data: bytes, source: str, max_record_bytes: int = 1 << 20) -> Iterator[RawRecord]:
  """Records of an Avro container file, block by block.

  Each record's ``raw`` is its JSON form (what a dead letter shows, and what a
  replay re-decodes). A damaged header or block becomes one dead letter holding
  its bytes; the blocks after it are still read. Nothing raises.
  """
  index = 0
  for start, end, block, error in _avro_blocks(data):
    records = None
    if block is not None:
      # Every record takes at least a byte: a larger count is a damaged block
      # header that would otherwise spin on an empty buffer.
      if block.num_records > len(block.bytes_.getvalue()) + 1:
        error = f'corrupt Avro block at byte {start}: {block.num_records} records in {end - start} bytes'
      else:
        try:
          records = list(block)
        except Exception as e:
          error = f'corrupt Avro block at byte {start}: {type(e).__name__}: {e}'
    if records is None:
      yield RawRecord(data[start:end], None, error[:300], f'{source}#{index}')
      index += 1
      continue
    for record in records:
      ref = f'{source}#{index}'
      index += 1
      try:
        raw = orjson.dumps(record, default=_json_default)
      except (TypeError, orjson.JSONEncodeError) as e:
        yield RawRecord(repr(record).encode()[:max_record_bytes], None,
                        f'Avro record not representable as JSON: {e}'[:300], ref)
        continue
      if not isinstance(record, dict):
        yield RawRecord(raw, None, f'Avro record is a {type(record).__name__}, not a record', ref)
      elif len(raw) > max_record_bytes:
        yield RawRecord(raw, None, f'record of {len(raw)} bytes exceeds {max_record_bytes}', ref)
      else:
        yield RawRecord(raw, record, '', ref)


def split_records(data: bytes, source: str, max_record_bytes: int = 1 << 20) -> Iterator[RawRecord]:
  """Yields every record in ``data``; undecodable parts come out with ``error`` set."""
  if data[:2] == b'\x1f\x8b':
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      yield RawRecord(data, None, f'corrupt gzip: {e}'[:300], f'{source}#0')
      return
  if data[:4] == AVRO_MAGIC:
    yield from split_avro(data, source, max_record_bytes)
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
      raw = orjson.dumps(item)
      limit = OTLP_MAX_BYTES if raw.startswith(OTLP_PREFIXES) else max_record_bytes
      if not isinstance(item, dict):
        yield RawRecord(raw, None, 'record is not a JSON object', ref)
      elif len(raw) > limit:
        yield RawRecord(raw, None, f'record of {len(raw)} bytes exceeds {limit}', ref)
      else:
        yield RawRecord(raw, item, '', ref)
    return
  for i, line in enumerate(stripped.split(b'\n')):
    line = line.strip()
    if not line:
      continue
    ref = f'{source}#{i}'
    limit = OTLP_MAX_BYTES if line.startswith(OTLP_PREFIXES) else max_record_bytes
    if len(line) > limit:
      yield RawRecord(line, None, f'record of {len(line)} bytes exceeds {limit}', ref)
    else:
      yield decode(line, ref)


def raw_text(raw: bytes) -> str:
  """The raw payload as text for a dead letter, keeping undecodable bytes visible."""
  return raw.decode('utf-8', errors='backslashreplace')
