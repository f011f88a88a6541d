"""Raw records -> canonical Events, with every failure dead-lettered.

``ParseFiles`` reads and parses whole files (batch, backfill); ``ParseRecords``
parses records that arrive one by one (streaming). Both share ``RecordParser``,
so a record is parsed the same way whichever path it took.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from transforms import formats
from transforms.event import Event
from transforms.records import RawRecord, decode, raw_text, split_records
from transforms.taxonomy import Taxonomy

DEAD_LETTER = 'dead_letter'
EVENT_WITH_RAW = Tuple[Event, bytes]  # an event and the record it was parsed from
NAMESPACE = 'postauth'
# Parsed events per format and per category; counter names are the format and
# category names (dynamic, so a new format or taxonomy category needs no change).
FORMAT_NAMESPACE = 'postauth.format'
CATEGORY_NAMESPACE = 'postauth.category'


def dead_letter(reason: str, ref: str, raw: Union[bytes, str], stage: str = 'parse') -> str:
  """A dead-letter line: why, where from, and the raw payload itself."""
  source, _, index = ref.rpartition('#')
  return json.dumps({
      'stage': stage,
      'reason': reason,
      'source': source or ref,
      'index': index,
      'raw': raw_text(raw) if isinstance(raw, bytes) else raw,
  }, ensure_ascii=False)


class RecordParser:
  """Turns a RawRecord into an Event or a dead-letter reason."""

  def __init__(self, format_name: Optional[str] = None,
               taxonomy_files: Optional[List[str]] = None):
    self.taxonomy = Taxonomy(taxonomy_files)
    self.forced = formats.BY_NAME[format_name] if format_name else None

  def parse(self, record: RawRecord) -> Union[Event, str]:
    return self.parse_with_format(record)[1]

  def parse_with_format(self, record: RawRecord) -> Tuple[str, Union[Event, str]]:
    """(format name or '', Event or dead-letter reason)."""
    if record.obj is None and not record.error:
      record = decode(record.raw, record.ref)  # records that travelled as bytes only
    if record.error:
      return '', record.error
    fmt = self.forced or formats.detect(record.obj)
    if fmt is None:
      return '', 'unknown format'
    try:
      return fmt.name, fmt.parse(record.obj, record.ref, self.taxonomy)
    except formats.ParseError as e:
      return fmt.name, f'{fmt.name}: {e}'
    except (TypeError, AttributeError, KeyError, ValueError) as e:
      return fmt.name, f'{fmt.name}: malformed record ({type(e).__name__}: {e})'[:300]


class _ParseFn(beam.DoFn):
  """Shared counting and emitting; subclasses say where records come from."""

  def __init__(self, format_name: Optional[str], taxonomy_files: Optional[List[str]],
               with_raw: bool = False):
    self._format_name = format_name
    self._with_raw = with_raw
    self._taxonomy_files = taxonomy_files
    self.read = Metrics.counter(NAMESPACE, 'records_read')
    self.parsed = Metrics.counter(NAMESPACE, 'events_parsed')
    self.dead = Metrics.counter(NAMESPACE, 'dead_lettered')

  def setup(self):
    self._parser = RecordParser(self._format_name, self._taxonomy_files)
    self._by_format: Dict[str, Any] = {}  # counters of this DoFn instance, by name
    self._by_category: Dict[str, Any] = {}

  def _count(self, cache: Dict[str, Any], namespace: str, name: str) -> None:
    counter = cache.get(name)
    if counter is None:
      counter = cache[name] = Metrics.counter(namespace, name)
    counter.inc()

  def _emit(self, records: Iterable[RawRecord]):
    for record in records:
      self.read.inc()
      fmt, result = self._parser.parse_with_format(record)
      if isinstance(result, Event):
        self.parsed.inc()
        self._count(self._by_format, FORMAT_NAMESPACE, fmt)
        self._count(self._by_category, CATEGORY_NAMESPACE, result.category)
        yield TimestampedValue((result, record.raw) if self._with_raw else result, result.event_time)
      else:
        self.dead.inc()
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(result, record.ref, record.raw))


def read_all(path: str) -> bytes:
  """A whole file's bytes, compressed or not (split_records sniffs gzip itself)."""
  chunks = []
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    while True:
      chunk = f.read(1 << 24)
      if not chunk:
        break
      chunks.append(chunk)
  return b''.join(chunks)


class ParseFileFn(_ParseFn):
  def process(self, readable: fileio.ReadableFile):
    path = readable.metadata.path
    try:
      data = read_all(path)
    except Exception as e:  # unreadable file: one dead letter naming it
      self.read.inc()
      self.dead.inc()
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER, dead_letter(f'unreadable file: {e}'[:300], path + '#', b''))
      return
    yield from self._emit(split_records(data, path))


class ParseRecordFn(_ParseFn):
  def process(self, record: RawRecord):
    yield from self._emit([record])


class ParseFiles(beam.PTransform):
  """File glob -> timestamped Events (main) and dead-letter JSON lines (``dead_letter``)."""

  def __init__(self, pattern: str, format_name: Optional[str] = None,
               taxonomy_files: Optional[List[str]] = None):
    super().__init__()
    self._pattern = pattern
    self._fn = ParseFileFn(format_name, taxonomy_files)

  def expand(self, pbegin):
    return (
        pbegin
        | 'MatchFiles' >> fileio.MatchFiles(self._pattern)
        | 'ReadMatches' >> fileio.ReadMatches()
        | 'Reshuffle' >> beam.Reshuffle()
        | 'ParseFile' >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main='events'))


class ParseRecords(beam.PTransform):
  """RawRecords -> timestamped Events (main) and dead-letter JSON lines (``dead_letter``).

  ``with_raw``: the main output is ``(Event, raw bytes)`` pairs instead, for
  ``transforms.lateness.LateEventGate``, which dead-letters late events with their payload.
  """

  def __init__(self, format_name: Optional[str] = None,
               taxonomy_files: Optional[List[str]] = None, with_raw: bool = False):
    super().__init__()
    self._fn = ParseRecordFn(format_name, taxonomy_files, with_raw)
    self._with_raw = with_raw

  def expand(self, records):
    parse = beam.ParDo(self._fn)
    if self._with_raw:
      parse = parse.with_output_types(EVENT_WITH_RAW)
    return records | 'ParseRecord' >> parse.with_outputs(DEAD_LETTER, main='events')
