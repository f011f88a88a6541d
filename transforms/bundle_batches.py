"""Elements gathered per bundle and key, so a stateful step reads and writes its state once per
batch, not once per element.

Python Beam pays per element at every keyed step, and on Prism, Flink and Dataflow per state
access. ``BatchPerBundle`` buffers a bundle's elements by key and emits one
``(key, [elements])`` per key when the bundle finishes (or a batch fills), stamped with the
earliest timestamp of its elements (never later than any of them, so a downstream DoFn may
re-stamp each element with its own time) or with ``stamp``, in the global window. The input must be in the
global window (the sources' output is, before the event-time windows).

Keys come from the elements (``key_of``), or, for a step whose state is not about the
elements' identity (``key_of=None``), from ``spread`` keys taken in turn per batch: a
bundle's elements go to one key, the next batch to the next, so no identity, however busy,
makes a hot key.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

MAX_BATCH = 500  # elements per emitted batch: bounds a batch's encoded size


class BatchPerBundle(beam.DoFn):
  """element -> (key, [elements of the bundle with that key]), one per key and bundle (or per
  ``max_batch`` elements)."""

  def __init__(self, key_of: Optional[Callable[[Any], Any]] = None, spread: int = 1,
               max_batch: int = MAX_BATCH, stamp: Optional[Timestamp] = None):
    self._key_of, self._spread, self._max, self._stamp = key_of, spread, max_batch, stamp

  def setup(self):
    self._turn = random.randrange(self._spread)  # workers start apart

  def start_bundle(self):
    self._batches: Dict[Any, Tuple[Timestamp, List]] = {}
    self._turn = (self._turn + 1) % self._spread

  def process(self, element, ts=beam.DoFn.TimestampParam):
    key = self._turn if self._key_of is None else self._key_of(element)
    first, items = self._batches.get(key, (MAX_TIMESTAMP, None))
    if items is None:
      items = []
    first = min(first, ts)
    items.append(element)
    self._batches[key] = (first, items)
    if len(items) >= self._max:
      del self._batches[key]
      if self._key_of is None:
        self._turn = (self._turn + 1) % self._spread
      yield TimestampedValue((key, items), first if self._stamp is None else self._stamp)

  def finish_bundle(self):
    batches, self._batches = self._batches, {}
    for key, (first, items) in batches.items():
      yield WindowedValue((key, items), first if self._stamp is None else self._stamp, [GlobalWindow()])
