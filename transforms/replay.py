"""Replay event files as an unbounded stream with an advancing event-time watermark.

For running the streaming pipeline locally (DirectRunner) on files: records are
released in event-time order, a step at a time, and the watermark follows them.
In production the unbounded source is Pub/Sub; everything downstream of the
source is the same.
"""
from __future__ import annotations

from typing import List, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from transforms.formats.base import MIN_TIME, ParseError, check_time, parse_time
from transforms.parse import read_all
from transforms.records import RawRecord, split_records

_TIME_FIELDS = ('eventTime', '@timestamp', 'timestamp', 'time', 'stageTimestamp',
                'requestReceivedTimestamp', 'receiveTimestamp')


def record_time(record: RawRecord) -> float:
  """Best-effort event time used only to order the replay (the parser decides for real)."""
  obj = record.obj or {}
  try:
    return check_time(obj.get('event_time'))  # canonical events (JSON lines, Avro files)
  except ParseError:
    pass
  ocsf_ms = obj.get('time')
  if 'class_uid' in obj and isinstance(ocsf_ms, (int, float)) and not isinstance(ocsf_ms, bool):
    try:
      return check_time(ocsf_ms / 1000.0)  # OCSF: epoch milliseconds
    except ParseError:
      pass
  if 'resourceSpans' in obj:  # an OTLP/JSON request (a collector batch): its earliest span
    return _otlp_start(obj)
  detail = obj.get('detail') if isinstance(obj.get('detail'), dict) else {}
  for source in (obj, detail):
    for field in _TIME_FIELDS:
      try:
        return parse_time(source.get(field))
      except ParseError:
        continue
  return 0.0


def _otlp_start(obj: dict) -> float:
  starts = []
  for block in obj.get('resourceSpans') or ():
    for scope in (block.get('scopeSpans') or ()) if isinstance(block, dict) else ():
      for span in (scope.get('spans') or ()) if isinstance(scope, dict) else ():
        try:
          starts.append(check_time(int(span.get('startTimeUnixNano')) / 1e9))
        except (ParseError, TypeError, ValueError, AttributeError):
          continue
  return min(starts) if starts else 0.0


def load_replay(pattern: str) -> List[Tuple[float, RawRecord]]:
  """All records of the matching files with a replay time; undated ones ride with their neighbour."""
  out: List[Tuple[float, RawRecord]] = []
  for match in FileSystems.match([pattern])[0].metadata_list:
    data = read_all(match.path)
    last = MIN_TIME
    for record in split_records(data, match.path):
      t = record_time(record)
      if t:
        last = t
      out.append((t or last, RawRecord(record.raw, None, record.error, record.ref)))
  out.sort(key=lambda tr: tr[0])
  return out


DRAIN_SECONDS = 86400  # beyond any window, finding flush or lateness the jobs use


class ReplayFiles(beam.PTransform):
  """Files -> unbounded PCollection of RawRecords stamped with their event time."""

  def __init__(self, pattern: str, step_seconds: int = 300, max_delay_seconds: int = 0):
    super().__init__()
    self._pattern = pattern
    self._step = step_seconds
    self._delay = max_delay_seconds

  def expand(self, pbegin):
    records = load_replay(self._pattern)
    stream = TestStream()
    if records:
      start = records[0][0] - records[0][0] % self._step
      stream.advance_watermark_to(start)
      i = 0
      t = start
      while i < len(records):
        t += self._step
        batch = []
        while i < len(records) and records[i][0] < t:
          batch.append(TimestampedValue(records[i][1], records[i][0]))
          i += 1
        if batch:
          stream.add_elements(batch)
        stream.advance_watermark_to(t - self._delay)
      # A finite step past the data first: windows and findings that close after the last
      # record fire their event-time timers here. Jumping straight to infinity, a timer set
      # downstream once the watermark is already infinite never fired on the DirectRunner
      # (a finding whose run ended after the last record was lost; the batch job had it).
      stream.advance_watermark_to(t + DRAIN_SECONDS)
    stream.advance_watermark_to_infinity()
    return pbegin | 'ReplayStream' >> stream
