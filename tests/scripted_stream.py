"""An unbounded source that plays a script of (elements, watermark) steps, on any Fn API runner.

TestStream runs only on the BundleBasedDirectRunner; this splittable DoFn runs on Prism too,
so tests can deliver events after the watermark passed them (late data) where users run.
"""
from __future__ import annotations

import time
from typing import List, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

Step = Tuple[Sequence[Tuple[object, float]], float]  # ((value, event time), ...), watermark after


class _InOrder(OffsetRestrictionTracker):
  def try_split(self, fraction_of_remainder):
    return None if fraction_of_remainder > 0 else super().try_split(0)


class _PlayFn(beam.DoFn, RestrictionProvider):
  def __init__(self, steps: List[Step], pace: float):
    self._steps, self._pace = steps, pace

  def initial_restriction(self, _):
    return OffsetRange(0, len(self._steps))

  def create_tracker(self, restriction):
    return _InOrder(restriction)

  def restriction_size(self, _, restriction):
    return restriction.size()

  def split(self, _, restriction):
    yield restriction

  @beam.DoFn.unbounded_per_element()
  def process(self, _, tracker=beam.DoFn.RestrictionParam(),
              watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
    pos = tracker.current_restriction().start
    if not tracker.try_claim(pos):
      return
    if pos and self._pace:
      time.sleep(self._pace)  # events arrive over time: the job keeps up, as with a live source
    elements, mark = self._steps[pos]
    for value, t in elements:
      yield TimestampedValue(value, t)
    current = watermark.current_watermark()
    if current is None or Timestamp.of(mark) > current:
      watermark.set_watermark(Timestamp.of(mark))
    tracker.defer_remainder()  # the runner moves the watermark before the next step


class ScriptedStream(beam.PTransform):
  """Plays ``steps`` in order: each step's elements stamped with their time, then its watermark;
  ``pace`` seconds of wall time between steps (0: as fast as the runner takes them)."""

  def __init__(self, steps: List[Step], pace: float = 0.0):
    super().__init__()
    self._steps, self._pace = steps, pace

  def expand(self, pbegin):
    return pbegin | 'Script' >> beam.Create([None]) | 'Play' >> beam.ParDo(_PlayFn(self._steps, self._pace))
