"""Raw records -> canonical Events, with every failure dead-lettered.

``ParseFiles`` reads and parses whole files (batch, backfill); ``ParseRecords``
parses records that arrive one by one (streaming). Both share ``RecordParser``,
so a record is parsed the same way whichever path it took.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from postauth.transforms import formats
from postauth.transforms.clock import TIME_AHEAD, ahead_reason, split_reason
from postauth.domain.event import Event
from postauth.domain.window import WindowAggregate
from postauth.transforms import aggregate as _aggregate  # noqa: F401  (registers WindowAggregateCoder)
from postauth.domain.redact import redact_payload, redact_text
from postauth.transforms.formats.base import Item
from postauth.transforms.records import (DEFAULT_LIMITS, OTLP_MAX_BYTES, OTLP_PREFIXES, RawRecord, ReadLimits,
                                         decode, raw_text, split_records)
from postauth.domain.taxonomy import Taxonomy
from postauth.transforms.windowing import PANE_PARTS  # one element per identity and file here

DEAD_LETTER = 'dead_letter'
EVENT_WITH_RAW = Tuple[Event, bytes]  # an event and the record it was parsed from
NAMESPACE = 'postauth'
# Parsed events per format and per category; counter names are the format and
# category names (dynamic, so a new format or taxonomy category needs no change).
FORMAT_NAMESPACE = 'postauth.format'
CATEGORY_NAMESPACE = 'postauth.category'
# Records skipped (not events, not bad input), by reason.
SKIP_NAMESPACE = 'postauth.skipped'


# A dead letter keeps its payload whole up to this size; a larger one keeps its first
# TRUNCATED_RAW_BYTES with the whole payload's size and SHA-256 (to find it at the source), so a
# dead letter always fits a dead-letter sink (Pub/Sub takes 10 MB a message, BigQuery 10 MB a row).
DEAD_LETTER_RAW_BYTES = 1 << 20
TRUNCATED_RAW_BYTES = 64 << 10


def dead_letter(reason: str, ref: str, raw: Union[bytes, str], stage: str = 'parse',
                keep_bytes: int = DEAD_LETTER_RAW_BYTES, detail: str = '') -> str:
  """A dead-letter line: why, where from, and the raw payload, its secrets redacted.

  Every dead letter is made here (parse, late events, sinks), so every one is bounded and
  redacted (``domain/redact.py``) the same way. A payload over ``keep_bytes`` (the parse
  step passes ``--max-record-bytes``) keeps a prefix, its size and its SHA-256, also in
  ``reason`` (all an Avro or BigQuery dead-letter row has). ``detail`` (JSON lines only, as
  for late events) says more where ``reason`` is a fixed name (``time_ahead_of_clock``).
  """
  source, _, index = ref.rpartition('#')
  doc = {'stage': stage, 'reason': reason, 'source': source or ref, 'index': index}
  if detail:
    doc['detail'] = detail
  payload = raw if isinstance(raw, bytes) else raw.encode('utf-8', errors='surrogatepass')
  keep = min(keep_bytes, DEAD_LETTER_RAW_BYTES)
  if len(payload) <= keep:
    doc['raw'] = redact_payload(raw)
  else:
    digest, cut = hashlib.sha256(payload).hexdigest(), min(keep, TRUNCATED_RAW_BYTES)
    doc['reason'] = f'{reason} (payload of {len(payload)} bytes, sha256 {digest}; its first {cut} kept)'
    doc.update(raw=redact_text(raw_text(payload[:cut])), raw_bytes=len(payload), raw_sha256=digest,
               raw_truncated=True)
  return json.dumps(doc, ensure_ascii=False)


class RecordParser:
  """Turns a RawRecord into Events, skip reasons or dead-letter reasons.

  Most records hold one event; an OTLP request holds many spans, each its own item. A
  record that is not JSON is offered to the formats that read binary messages (OTLP
  protobuf from the collector's Pub/Sub exporter) before it is dead-lettered.
  """

  def __init__(self, format_name: Optional[str] = None,
               taxonomy_files: Optional[List[str]] = None, limits: ReadLimits = DEFAULT_LIMITS):
    self.taxonomy = Taxonomy(taxonomy_files)
    self.forced = formats.BY_NAME[format_name] if format_name else None
    self.limits = limits

  def parse(self, record: RawRecord) -> Union[Event, str]:
    return self.parse_with_format(record)[1]

  def parse_with_format(self, record: RawRecord) -> Tuple[str, Union[Event, str]]:
    """(format name or '', first Event or the first reason): for one-event records."""
    fmt, first = '', None
    for fmt, item in self.parse_items(record):
      if item.event is not None:
        return fmt, item.event
      first = first or item.reason
    return fmt, first or 'no events'

  def parse_items(self, record: RawRecord) -> Iterator[Tuple[str, Item]]:
    """(format name or '', Item) for every outcome of the record; never raises.

    An event dated more than ``--max-clock-skew`` ahead of the wall clock (``limits.skew``,
    read once per record) is not an event: its item is a dead letter ``time_ahead_of_clock``
    with the detail after the name (``clock.split_reason``), whoever parses.
    """
    skew = self.limits.skew
    horizon = skew.horizon()
    for fmt, item in self._items(record):
      if item.event is not None:
        ahead = skew.ahead(item.event.event_time, horizon=horizon)
        if ahead:
          item = item._replace(event=None, reason=ahead_reason(ahead))
      yield fmt, item

  def _items(self, record: RawRecord) -> Iterator[Tuple[str, Item]]:
    if record.obj is None and not record.error:  # records that travelled as bytes only
      limit = OTLP_MAX_BYTES if record.raw.startswith(OTLP_PREFIXES) else self.limits.max_record_bytes
      if len(record.raw) > limit and record.raw[:64].lstrip()[:1] in (b'{', b'['):
        record = RawRecord(record.raw, None, f'record of {len(record.raw)} bytes exceeds {limit}', record.ref)
      else:
        record = decode(record.raw, record.ref)
    if record.error:
      if split_reason(record.error)[0] == TIME_AHEAD:  # a source found its time ahead of the clock
        yield '', Item(None, record.error, False, record.raw, record.ref)
        return
      binary = self._binary(record)
      if binary is not None:
        yield from binary
        return
      yield '', Item(None, record.error, False, record.raw, record.ref)
      return
    fmt = self.forced or formats.detect(record.obj)
    if fmt is None:
      yield '', Item(None, 'unknown format', False, record.raw, record.ref)
      return
    many = getattr(fmt, 'parse_many', None)
    if many is not None:
      try:
        for item in many(record.obj, record.ref, self.taxonomy):
          yield fmt.name, item
      except formats.ParseError as e:
        yield fmt.name, Item(None, f'{fmt.name}: {e}', False, record.raw, record.ref)
      except (TypeError, AttributeError, KeyError, ValueError) as e:
        yield fmt.name, Item(None, f'{fmt.name}: malformed record ({type(e).__name__}: {e})'[:300],
                             False, record.raw, record.ref)
      return
    yield fmt.name, self._one(fmt, record)

  def _one(self, fmt, record: RawRecord) -> Item:
    try:
      return Item(fmt.parse(record.obj, record.ref, self.taxonomy), '', False, record.raw, record.ref)
    except formats.Skip as e:
      return Item(None, f'{fmt.name}: {e}', True, record.raw, record.ref)
    except formats.ParseError as e:
      return Item(None, f'{fmt.name}: {e}', False, record.raw, record.ref)
    except (TypeError, AttributeError, KeyError, ValueError) as e:
      return Item(None, f'{fmt.name}: malformed record ({type(e).__name__}: {e})'[:300], False,
                  record.raw, record.ref)

  def _binary(self, record: RawRecord) -> Optional[Iterator[Tuple[str, Item]]]:
    """Items of a binary message a format recognises, or None."""
    candidates = [self.forced] if self.forced else formats.FORMATS
    for fmt in candidates:
      reader = getattr(fmt, 'parse_bytes', None)
      items = reader(record.raw, record.ref, self.taxonomy) if reader else None
      if items is not None:
        return ((fmt.name, item) for item in items)
    return None


class _ParseFn(beam.DoFn):
  """Shared counting and emitting; subclasses say where records come from.

  Counters: ``records_read = events_parsed + dead_lettered + skipped``, a record being
  one log record (one span of an OTLP request; a request that cannot be read is one). An
  event dated more than ``--max-clock-skew`` ahead of the wall clock, or a record a source
  marked so, is a dead letter ``time_ahead_of_clock``, counted in ``dead_lettered`` and again
  in ``time_ahead_of_clock`` (``transforms/clock.py``): it never leaves the parse as an event.
  """

  def __init__(self, format_name: Optional[str], taxonomy_files: Optional[List[str]],
               with_raw: bool = False, limits: ReadLimits = DEFAULT_LIMITS):
    self._format_name = format_name
    self._with_raw = with_raw
    self._taxonomy_files = taxonomy_files
    self._limits = limits
    self.read = Metrics.counter(NAMESPACE, 'records_read')
    self.parsed = Metrics.counter(NAMESPACE, 'events_parsed')
    self.dead = Metrics.counter(NAMESPACE, 'dead_lettered')
    self.skipped = Metrics.counter(NAMESPACE, 'skipped')
    self.ahead = Metrics.counter(NAMESPACE, TIME_AHEAD)

  def setup(self):
    self._parser = RecordParser(self._format_name, self._taxonomy_files, self._limits)
    self._by_format: Dict[str, Any] = {}  # counters of this DoFn instance, by name
    self._by_category: Dict[str, Any] = {}
    self._by_skip: Dict[str, Any] = {}

  def _count(self, cache: Dict[str, Any], namespace: str, name: str, n: int = 1) -> None:
    counter = cache.get(name)
    if counter is None:
      counter = cache[name] = Metrics.counter(namespace, name)
    counter.inc(n)

  def _outcomes(self, records: Iterable[RawRecord]) -> Iterator[Any]:
    """Each parsed Event (with its raw record if ``with_raw``) and each dead letter as a
    tagged output (a tagged output among ``records`` passes as it is); counts every record.

    Counts are kept in plain ints and added to the counters once per call (a whole file),
    not once per record; ``finally`` adds them even if the caller stops early.
    """
    read = parsed = dead = ahead = 0
    by_format: Dict[str, int] = {}
    by_category: Dict[str, int] = {}
    try:
      for record in records:
        if record.__class__ is beam.pvalue.TaggedOutput:
          yield record
          continue
        for fmt, item in self._parser.parse_items(record):
          read += 1
          event = item.event
          if event is not None:
            parsed += 1
            by_format[fmt] = by_format.get(fmt, 0) + 1
            by_category[event.category] = by_category.get(event.category, 0) + 1
            yield (event, item.raw) if self._with_raw else event
          elif item.skipped:
            self.skipped.inc()
            self._count(self._by_skip, SKIP_NAMESPACE, item.reason[:120])
          else:
            dead += 1
            reason, detail = split_reason(item.reason)
            if reason == TIME_AHEAD:
              ahead += 1
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                reason, item.ref, item.raw, keep_bytes=self._limits.max_record_bytes, detail=detail))
    finally:
      for counter, n in ((self.read, read), (self.parsed, parsed), (self.dead, dead), (self.ahead, ahead)):
        if n:
          counter.inc(n)
      for cache, namespace, counts in ((self._by_format, FORMAT_NAMESPACE, by_format),
                                       (self._by_category, CATEGORY_NAMESPACE, by_category)):
        for name, n in counts.items():
          self._count(cache, namespace, name, n)

  def _emit(self, records: Iterable[RawRecord]):
    with_raw = self._with_raw
    for out in self._outcomes(records):
      if out.__class__ is beam.pvalue.TaggedOutput:
        yield out
      else:
        yield TimestampedValue(out, (out[0] if with_raw else out).event_time)


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
  """A matched file (its ``FileMetadata``) -> its events; a directory's entry is skipped, as
  ``fileio.ReadMatches`` does (the file is read here, so that step is not needed)."""

  def _file_records(self, matched: FileMetadata) -> Iterator[Any]:
    """The file's RawRecords, or one dead letter (a tagged output) if it cannot be read."""
    path = matched.path
    if path.endswith(('/', '\\')):
      return
    try:
      data = read_all(path)
    except Exception as e:  # unreadable file: one dead letter naming it
      self.read.inc()
      self.dead.inc()
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER, dead_letter(f'unreadable file: {e}'[:300], path + '#', b''))
      return
    yield from split_records(data, path, self._limits)

  def process(self, matched: FileMetadata):
    yield from self._emit(self._file_records(matched))


class ParseFileToPanesFn(ParseFileFn):
  """A whole file -> (identity, [its pane aggregates]) per identity it holds events of, one
  aggregate per 15 min pane.

  The batch detection job needs panes, not events: aggregating while parsing means no event
  ever becomes a Beam element (no per-event output, key, shuffle or combine), and the raw
  payloads stay here. Events are added to their pane in file order, as the pane combine did
  within a file's bundle; a pane that spans files comes out once per file, and the windowing
  step merges those parts (``transforms/windowing.py``). Counters and dead letters are those
  of ``ParseFileFn``: ``records_read = events_parsed + dead_lettered + skipped``.
  """

  def __init__(self, format_name: Optional[str], taxonomy_files: Optional[List[str]],
               period: int, evidence: bool = True, limits: ReadLimits = DEFAULT_LIMITS):
    super().__init__(format_name, taxonomy_files, limits=limits)
    self._period, self._evidence = period, evidence
    self.panes = Metrics.counter(NAMESPACE, 'pane_parts')

  def process(self, matched: FileMetadata):
    period, evidence = self._period, self._evidence
    panes: Dict[Tuple[str, int], WindowAggregate] = {}
    for out in self._outcomes(self._file_records(matched)):
      if out.__class__ is beam.pvalue.TaggedOutput:
        yield out
        continue
      key = (out.identity, int(out.event_time // period) * period)
      agg = panes.get(key)
      if agg is None:
        agg = panes[key] = WindowAggregate()
      agg.add(out, period, evidence)
    self.panes.inc(len(panes))
    by_identity: Dict[str, List[WindowAggregate]] = {}
    for (identity, _), agg in panes.items():
      by_identity.setdefault(identity, []).append(agg)
    yield from by_identity.items()  # one element per identity: a file's panes shuffle together


class ParseRecordFn(_ParseFn):
  def process(self, record: RawRecord):
    yield from self._emit([record])


class ParseFiles(beam.PTransform):
  """File glob -> timestamped Events (main) and dead-letter JSON lines (``dead_letter``).

  ``pane_seconds``: the main output is ``(identity, [WindowAggregate])`` pane parts instead
  (``PANE_PARTS``, see ``ParseFileToPanesFn``), for ``transforms.windowing.IdentityWindows``
  on bounded input; ``evidence`` says whether the panes keep their evidence sample.
  """

  def __init__(self, pattern: str, format_name: Optional[str] = None,
               taxonomy_files: Optional[List[str]] = None, limits: ReadLimits = DEFAULT_LIMITS,
               pane_seconds: Optional[int] = None, evidence: bool = True):
    super().__init__()
    self._pattern = pattern
    self._panes = bool(pane_seconds)
    self._fn = (ParseFileToPanesFn(format_name, taxonomy_files, pane_seconds, evidence, limits)
                if pane_seconds else ParseFileFn(format_name, taxonomy_files, limits=limits))

  def expand(self, pbegin):
    parse = beam.ParDo(self._fn)
    if self._panes:
      parse = parse.with_output_types(PANE_PARTS)
    pattern = self._pattern
    return (
        pbegin  # fileio.MatchFiles less its Create: an Impulse needs no reshuffle for one pattern
        | 'Impulse' >> beam.Impulse()
        | 'Pattern' >> beam.Map(lambda _: pattern)
        | 'MatchFiles' >> fileio.MatchAll()
        | 'Reshuffle' >> beam.Reshuffle()
        | 'ParseFile' >> parse.with_outputs(DEAD_LETTER, main='events'))


class ParseRecords(beam.PTransform):
  """RawRecords -> timestamped Events (main) and dead-letter JSON lines (``dead_letter``).

  ``with_raw``: the main output is ``(Event, raw bytes)`` pairs instead, for
  ``transforms.lateness.LateEventGate``, which dead-letters late events with their payload.
  """

  def __init__(self, format_name: Optional[str] = None,
               taxonomy_files: Optional[List[str]] = None, with_raw: bool = False,
               limits: ReadLimits = DEFAULT_LIMITS):
    super().__init__()
    self._fn = ParseRecordFn(format_name, taxonomy_files, with_raw, limits)
    self._with_raw = with_raw

  def expand(self, records):
    parse = beam.ParDo(self._fn)
    if self._with_raw:
      parse = parse.with_output_types(EVENT_WITH_RAW)
    return records | 'ParseRecord' >> parse.with_outputs(DEAD_LETTER, main='events')
