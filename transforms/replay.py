"""Replay event files as an unbounded stream with an advancing event-time watermark.

For running the streaming pipeline on files (the demo, tests, a backfill rehearsal): records
are released in event-time order, ``step`` seconds of event time at a time, and the watermark
follows them, so windows, findings and their timers fire as they would on a live stream. In
production the unbounded source is Pub/Sub or a watched bucket; everything downstream of the
source is the same.

Built as a splittable DoFn (restriction = the steps still to release, one checkpoint per
non-empty step, a ``ManualWatermarkEstimator`` set to the end of the released step) rather
than on ``TestStream``: TestStream is a testing transform that only the Python
BundleBasedDirectRunner runs (the DirectRunner refuses Prism for it, Flink and Dataflow do
not run it), and it embeds every record in the pipeline graph. This source reads the files
on the worker and runs on Prism, the FnApiRunner, Flink and Dataflow alike. The one runner
that cannot run it is the BundleBasedDirectRunner (in Beam 2.77 it fails to expand an unbounded
SDF: "ProcessKeyedElements/GroupByKey ... was not replaced as expected"); where a job lands
there (``--runner=BundleBasedDirectRunner``, or the DirectRunner with no Prism binary to
start), the same steps go through ``TestStream`` instead (``pipeline.prism.lands_on_bundle_runner``).
"""
from __future__ import annotations

import bisect
from typing import List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.testing.test_stream import TestStream
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from postauth.transforms.formats.base import MIN_TIME, ParseError, check_time, parse_time
from postauth.transforms.parse import read_all
from postauth.transforms.records import DEFAULT_LIMITS, RawRecord, ReadLimits, split_records

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


def load_replay(pattern: str, limits: ReadLimits = DEFAULT_LIMITS,
                horizon: Optional[float] = None) -> List[Tuple[float, RawRecord]]:
  """All records of the matching files with a replay time; undated ones ride with their neighbour.

  So do records dated after ``horizon`` (default: ``--max-clock-skew`` ahead of the wall clock
  now, ``limits.skew``): the replay's steps and watermark end at the newest acceptable record,
  and the parse dead-letters the record (``time_ahead_of_clock``). An old day is far behind the
  clock, as a replay's records usually are: only the future is refused. A neighbour is the
  dated record before (at a file's start, the first after; in a file with none, the earliest
  of all): never a fixed early time, from which the replay would step through empty years.
  """
  files: List[List[Tuple[float, RawRecord]]] = []
  horizon = limits.skew.horizon() if horizon is None else horizon
  for match in FileSystems.match([pattern])[0].metadata_list:
    data = read_all(match.path)
    rows = []
    for record in split_records(data, match.path, limits):
      t = record_time(record)
      rows.append((t if t <= horizon else 0.0, RawRecord(record.raw, None, record.error, record.ref)))
    files.append(rows)
  dated = [t for rows in files for t, _ in rows if t]
  earliest = min(dated) if dated else MIN_TIME
  out: List[Tuple[float, RawRecord]] = []
  for rows in files:
    last = next((t for t, _ in rows if t), earliest)
    for t, record in rows:
      last = t or last
      out.append((last, record))
  out.sort(key=lambda tr: tr[0])
  return out


DRAIN_SECONDS = 86400  # beyond any window, finding flush or lateness the jobs use


class _StepTracker(OffsetRestrictionTracker):
  """Steps are released strictly in order: checkpoints only, no dynamic splits (a runner
  splitting off later steps to run beside earlier ones would reorder the replay)."""

  def try_split(self, fraction_of_remainder):
    if fraction_of_remainder > 0:
      return None
    return super().try_split(0)


class _ReplayFn(beam.DoFn, RestrictionProvider):
  """pattern -> its records, one step of event time per checkpoint, watermark at the step's end.

  Steps ``0 .. n-1`` cover the records; step ``n`` moves the watermark a finite
  ``DRAIN_SECONDS`` past them first (windows and findings that close after the last record
  fire their event-time timers there: jumping straight to infinity, a timer set downstream
  once the watermark is already infinite never fired on the DirectRunner); then the
  restriction is done and the watermark goes to infinity. Empty steps are claimed in one go.
  """

  def __init__(self, step_seconds: int, max_delay_seconds: int, limits: ReadLimits = DEFAULT_LIMITS,
               horizon: Optional[float] = None):
    self._step, self._delay, self._limits = step_seconds, max_delay_seconds, limits
    # One horizon for every worker's copy: the steps counted by initial_restriction are the
    # steps process() releases, wherever each runs.
    self._horizon = limits.skew.horizon() if horizon is None else horizon
    self.released = Metrics.counter('postauth', 'replay_records_released')

  def _load(self, pattern: str) -> Tuple[List[Tuple[float, RawRecord]], List[float], float]:
    """(records by time, their times, start of the first step); read once per DoFn instance."""
    cached = getattr(self, '_cached', None)
    if cached is None or cached[0] != pattern:
      records = load_replay(pattern, self._limits, self._horizon)
      times = [t for t, _ in records]
      start = times[0] - times[0] % self._step if times else 0.0
      cached = self._cached = (pattern, records, times, start)
    return cached[1], cached[2], cached[3]

  def _steps(self, pattern: str) -> int:
    _, times, start = self._load(pattern)
    return int((times[-1] - start) // self._step) + 1 if times else 0

  # -- RestrictionProvider: the steps still to release (the last one is the drain step)
  def initial_restriction(self, pattern: str) -> OffsetRange:
    return OffsetRange(0, self._steps(pattern) + 1)

  def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
    return _StepTracker(restriction)

  def restriction_size(self, pattern: str, restriction: OffsetRange) -> int:
    return restriction.size()

  def split(self, pattern: str, restriction: OffsetRange):
    yield restriction  # steps are released in order: never split up front

  @beam.DoFn.unbounded_per_element()
  def process(self, pattern: str, tracker=beam.DoFn.RestrictionParam(),
              watermark=beam.DoFn.WatermarkEstimatorParam(
                  ManualWatermarkEstimator.default_provider())):
    records, times, start = self._load(pattern)
    data_steps = self._steps(pattern)
    pos = tracker.current_restriction().start
    while tracker.try_claim(pos):
      if pos >= data_steps:  # the drain step
        end = start + data_steps * self._step + DRAIN_SECONDS
        self._advance(watermark, end)
        tracker.defer_remainder()
        return
      lo = bisect.bisect_left(times, start + pos * self._step)
      hi = bisect.bisect_left(times, start + (pos + 1) * self._step)
      for t, record in records[lo:hi]:
        yield TimestampedValue(record, t)
      self.released.inc(hi - lo)
      self._advance(watermark, start + (pos + 1) * self._step - self._delay)
      if hi > lo:
        tracker.defer_remainder()  # let the runner move the watermark before the next step
        return
      pos += 1

  @staticmethod
  def _advance(watermark: ManualWatermarkEstimator, t: float) -> None:
    mark = Timestamp.of(t)
    current: Optional[Timestamp] = watermark.current_watermark()
    if current is None or mark > current:
      watermark.set_watermark(mark)


class ReplayFiles(beam.PTransform):
  """Files -> unbounded PCollection of RawRecords stamped with their event time.

  ``test_stream=True`` builds the same steps with ``TestStream`` (records embedded in the
  graph at construction), for the BundleBasedDirectRunner only.
  """

  def __init__(self, pattern: str, step_seconds: int = 300, max_delay_seconds: int = 0,
               test_stream: bool = False, limits: ReadLimits = DEFAULT_LIMITS):
    super().__init__()
    self._pattern, self._limits = pattern, limits
    self._step, self._delay, self._test_stream = step_seconds, max_delay_seconds, test_stream
    self._horizon = limits.skew.horizon()  # the wall clock at launch, for both forms of the replay
    self._fn = _ReplayFn(step_seconds, max_delay_seconds, limits, self._horizon)

  def expand(self, pbegin):
    if self._test_stream:
      return pbegin | 'ReplayStream' >> self._steps_as_test_stream()
    from postauth.transforms.fnapi_metrics import install_fnapi_metrics_fix
    install_fnapi_metrics_fix()  # a replay is hundreds of bundles on the FnApiRunner too
    return (pbegin
            | 'Pattern' >> beam.Create([self._pattern])
            | 'ReleaseSteps' >> beam.ParDo(self._fn).with_output_types(RawRecord))

  def _steps_as_test_stream(self) -> TestStream:
    records = load_replay(self._pattern, self._limits, self._horizon)
    stream = TestStream()
    if records:
      start = records[0][0] - records[0][0] % self._step
      stream.advance_watermark_to(start)
      i, t = 0, start
      while i < len(records):
        t += self._step
        batch = []
        while i < len(records) and records[i][0] < t:
          batch.append(TimestampedValue(records[i][1], records[i][0]))
          i += 1
        if batch:
          stream.add_elements(batch)
        stream.advance_watermark_to(t - self._delay)
      stream.advance_watermark_to(t + DRAIN_SECONDS)  # see _ReplayFn: a finite drain step first
    stream.advance_watermark_to_infinity()
    return stream
