"""Size estimates for Beam's byte metrics, answered from a sample of the values.

Beam sizes sampled elements of every PCollection, fused or not, and a batched element (an
identity's windows, a scoring batch) is sized item by item: on a day's batch run, ~36k
estimates for its 15k windows, most of them for elements no runner encodes. A coder serves one
PCollection, whose values are alike, and Beam sums the sizes into its metrics, where a mean
keeps the sum near the truth: so one value in ``MEASURE_EVERY`` is measured and the others are
given the mean of those measured.
"""
from __future__ import annotations

from typing import Any

import apache_beam as beam

MEASURE_EVERY = 16


class SampledSizeCoder(beam.coders.Coder):
  """A coder whose ``estimate_size`` is its ``measured_size`` for the first value and every
  ``MEASURE_EVERY``-th, and the mean of the measured sizes for the others.

  Counts are unlocked: a lost update between threads costs accuracy, never correctness. Equal to
  any coder of its class, and pickled without its counts: they are no part of how it encodes.
  """

  def __init__(self):
    self._seen = 0
    self._measured = 0
    self._bytes = 0

  def measured_size(self, value: Any) -> int:
    raise NotImplementedError

  def estimate_size(self, value: Any) -> int:
    self._seen += 1
    if self._measured and (self._seen - 1) % MEASURE_EVERY:
      return self._bytes // self._measured
    size = self.measured_size(value)
    self._measured += 1
    self._bytes += size
    return size

  def __getstate__(self):
    return {}

  def __setstate__(self, state):
    self.__init__()

  def __eq__(self, other):
    return type(self) is type(other)

  def __hash__(self):
    return hash(type(self))
