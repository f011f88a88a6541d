"""Split raw log bytes into individual records, without losing any.

CloudTrail's S3 delivery wraps records in ``{"Records": [...]}`` (often gzipped);
most other pipelines write JSON lines; postauth itself writes Avro container
files. Whole files are split here in one pass so that Beam pays per record only
once, in the parse step.
"""
from __future__ import annotations

import base64
import io
import typing
import zlib
from typing import Any, Iterator, Optional, Tuple

import fastavro
import orjson

from postauth.transforms.clock import ClockSkew

AVRO_MAGIC = b'Obj\x01'
GZIP_MAGIC = b'\x1f\x8b'
# An OTLP/JSON line (the collector's file exporter) is a whole batch of spans, often several MB;
# each span is then parsed as its own record, so such a line may be this large.
OTLP_MAX_BYTES = 64 << 20
OTLP_PREFIXES = (b'{"resourceSpans"', b'{"resource_spans"')


class ReadLimits(typing.NamedTuple):
  """What one bad input may cost the job (``--max-record-bytes``, ``--max-gzip-*``).

  A record over ``max_record_bytes`` is dead-lettered unparsed (CloudTrail's own limit is far
  below the default 1 MiB; an OTLP/JSON batch line may take ``OTLP_MAX_BYTES``). A gzip file
  may always expand to ``max_record_bytes``; beyond that, to at most ``max_gzip_ratio`` times
  its compressed size and never past ``max_gzip_bytes`` (a 1000:1 bomb stops at the bound,
  not at memory's end). A file over its bound is one dead letter naming the flag to raise.
  ``skew``: a record dated more than ``--max-clock-skew`` ahead of the wall clock moves no
  watermark and is dead-lettered (``transforms/clock.py``).
  """
  max_record_bytes: int = 1 << 20
  max_gzip_bytes: int = 1 << 30
  max_gzip_ratio: float = 200.0
  skew: ClockSkew = ClockSkew()

  def gzip_bound(self, compressed: int) -> int:
    return min(self.max_gzip_bytes, max(self.max_record_bytes, int(self.max_gzip_ratio * compressed)))

  def gzip_too_large(self, compressed: int) -> str:
    return (f'gzip expands beyond {self.gzip_bound(compressed)} bytes (--max-gzip-bytes '
            f'{self.max_gzip_bytes}, --max-gzip-ratio {self.max_gzip_ratio:g} of its {compressed} bytes)')

  @classmethod
  def from_options(cls, options) -> 'ReadLimits':
    from postauth.transforms.options import EventOptions
    ev = options.view_as(EventOptions)
    return cls(ev.max_record_bytes, ev.max_gzip_bytes, ev.max_gzip_ratio, ClockSkew(ev.max_clock_skew))


DEFAULT_LIMITS = ReadLimits()


class GzipTooLarge(ValueError):
  """A gzip stream that would expand beyond its bound (``ReadLimits.gzip_bound``)."""


def gunzip(data: bytes, bound: int) -> bytes:
  """``data`` decompressed (every member, as ``gzip.decompress``), never more than ``bound`` bytes.

  Raises ``GzipTooLarge`` past the bound, ``zlib.error`` or ``EOFError`` on a damaged stream.
  Memory stays within the bound plus one chunk: output is requested in limited slices.
  """
  out, total, rest = [], 0, data
  while rest:
    d = zlib.decompressobj(wbits=31)  # gzip header and trailer (CRC, length) checked by zlib
    pending = rest
    while not d.eof:
      chunk = d.decompress(pending, bound - total + 1)
      total += len(chunk)
      if total > bound:
        raise GzipTooLarge(bound)
      out.append(chunk)
      pending = d.unconsumed_tail
      if not chunk and not pending:
        break
    if not d.eof:
      raise EOFError('Compressed file ended before the end-of-stream marker was reached')
    rest = d.unused_data.lstrip(b'\x00')
  return b''.join(out)


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


def split_avro(data: bytes, source: str, max_record_bytes: int = DEFAULT_LIMITS.max_record_bytes
               ) -> Iterator[RawRecord]:
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


def split_records(data: bytes, source: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawRecord]:
  """Yields every record in ``data``; undecodable parts come out with ``error`` set.

  A gzip file over its bound (``ReadLimits``) is one record holding the compressed bytes.
  """
  max_record_bytes = limits.max_record_bytes
  if data[:2] == GZIP_MAGIC:
    try:
      data = gunzip(data, limits.gzip_bound(len(data)))
    except GzipTooLarge:
      yield RawRecord(data, None, limits.gzip_too_large(len(data)), f'{source}#0')
      return
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
  if stripped[:1] in (b'{', b'[') and not _first_line_is_a_value(stripped):
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


def _first_line_is_a_value(data: bytes) -> bool:
  """Whether ``data`` (stripped) is more than one line and its first line is a JSON value by
  itself: then the whole cannot be one document (a value is followed by nothing), so a JSON-lines
  file skips parsing all of it as one only to fail at its second line."""
  end = data.find(b'\n')
  if end < 0:
    return False
  try:
    orjson.loads(data[:end])
  except orjson.JSONDecodeError:
    return False
  return True


def raw_text(raw: bytes) -> str:
  """The raw payload as text for a dead letter, keeping undecodable bytes visible."""
  return raw.decode('utf-8', errors='backslashreplace')
