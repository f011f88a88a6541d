"""Stateful steps on events touch their state once per batch (a bundle's events per key), not
once per event, and a busy identity makes no hot key."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
import numpy as np
import pytest

from postauth.transforms.bundle_batches import BatchPerBundle
from postauth.transforms.dedup_events import DUPLICATE, DropDuplicateEvents
from postauth.transforms.lateness import LATE, LateEventGate
from scripted_stream import ScriptedStream
from test_lateness import T0, ev, pair


def _counter(result, name):
  found = result.metrics().query(MetricsFilter().with_name(name))['counters']
  return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in found)


def test_a_bundle_goes_to_one_key_in_turn_and_batches_are_capped():
  fn = BatchPerBundle(spread=4, max_batch=3)
  fn.setup()
  keys = []
  for bundle in (range(5), range(2)):
    fn.start_bundle()
    out = [x.value for e in bundle for x in fn.process(e, ts=0)] + [x.value for x in fn.finish_bundle()]
    assert sorted(e for _, items in out for e in items) == list(bundle)
    assert all(len(items) <= 3 for _, items in out)
    keys.append([k for k, _ in out])
  first, second = keys
  assert len(first) == 2 and first[1] == (first[0] + 1) % 4  # a full batch moves to the next key
  assert second == [(first[1] + 1) % 4]  # the next bundle: the next key


def test_batches_keyed_by_element_keep_the_earliest_time():
  fn = BatchPerBundle(key_of=lambda e: e % 2)
  fn.setup()
  fn.start_bundle()
  for t, e in ((30, 1), (10, 3), (20, 2)):
    assert list(fn.process(e, ts=t)) == []
  out = {wv.value[0]: (wv.value[1], int(wv.timestamp)) for wv in fn.finish_bundle()}
  assert out == {1: ([1, 3], 10), 0: ([2], 20)}


def _run_on_prism(build):
  from test_history_refire import _options, _prism_argv
  p = beam.Pipeline(options=_options(_prism_argv()))
  build(p)
  result = p.run()
  result.wait_until_finish()
  return result


def test_the_gate_reads_its_state_once_per_batch_and_a_hot_identity_spreads_over_shards(tmp_path):
  """330 events, 300 of one identity (all on one shard before), in two steps of the source, on
  Prism: a handful of gate batches, not 330 state reads (late events: tests/test_lateness.py)."""
  hot = [pair('role/hot', T0 + i) for i in range(300)]
  cold = [pair(f'role/c{i}', T0 + i) for i in range(30)]
  as_steps = lambda xs: [(x.value, x.timestamp) for x in xs]
  steps = [(as_steps(hot[:150] + cold[:15]), T0), (as_steps(hot[150:] + cold[15:]), T0 + 300)]

  def build(p):
    gated = p | ScriptedStream(steps) | LateEventGate(900, 3600)
    assert_that(gated['events'] | beam.Map(lambda e: e.event_id),
                equal_to([x.value[0].event_id for x in hot + cold]), label='OnTime')
    assert_that(gated[LATE], equal_to([]), label='NoneLate')

  result = _run_on_prism(build)
  assert _counter(result, 'events_on_time') == 330
  assert 2 <= _counter(result, 'gate_batches') <= 6  # per bundle (Prism may split a step), not per event


def test_dedup_reads_its_state_once_per_identity_hour_batch_and_drops_copies_across_bundles():
  start = T0 - T0 % 3600  # an hour: four 15-minute panes
  events = [ev('role/a', start + 35 * i) for i in range(100)] + [ev('role/b', start + 1000 + i) for i in range(50)]
  copies = [ev('role/a', start + 35 * i) for i in range(0, 100, 10)]  # redelivered in a later step
  steps = [([(e, e.event_time) for e in events], start), ([(e, e.event_time) for e in copies], start + 1800)]

  def build(p):
    out = p | ScriptedStream(steps) | DropDuplicateEvents(3600)
    assert_that(out['events'] | beam.Map(lambda e: e.event_id), equal_to([e.event_id for e in events]),
                label='Unique')
    assert_that(out[DUPLICATE], equal_to([e.raw_ref for e in copies]), label='Copies')

  result = _run_on_prism(build)
  # per step and bundle, one batch per (identity, hour): a's events span the hour's four panes
  # and are one batch, b's another, then a's 10 copies one more (a runner may split a bundle):
  # not 160 state reads, nor one batch per pane (4 + 2 + 4)
  assert 3 <= _counter(result, 'dedup_batches') <= 6


class _Bag:
  """A bag state cell as a runner keeps it: each value through the state's coder."""

  def __init__(self, coder):
    self.coder, self.data = coder, []

  def read(self):
    return [self.coder.decode(x) for x in self.data]

  def add(self, value):
    self.data.append(self.coder.encode(value))

  def clear(self):
    self.data = []


class _Timer:
  def __init__(self):
    self.at = []

  def set(self, ts):
    self.at.append(ts)


@pytest.mark.parametrize('search_from', [1, 10 ** 6], ids=['binary-search', 'set'])
def test_dedup_state_holds_each_id_once_as_8_bytes_and_passes_the_first_copy_in_order(monkeypatch, search_from):
  from postauth.transforms import dedup_events
  from postauth.transforms.dedup_events import _DropDuplicatesFn, id_digests
  monkeypatch.setattr(dedup_events, '_SEARCH_FROM', search_from)
  fn, cell, timer = _DropDuplicatesFn(3600, 900), _Bag(_DropDuplicatesFn.SEEN.coder), _Timer()
  def event(i, ref=None):
    e = ev('role/a', T0 + i)._replace(event_id=f'id-{i}')
    return e._replace(raw_ref=ref) if ref else e

  first = [event(i) for i in (3, 1, 2)]
  again = event(1, 'pubsub:s#again')
  batch = [first[0], first[1], again, first[2]]  # a copy inside the batch, after its first

  def run(items):
    out = list(fn.process((('role/a', T0), items), seen=cell, expire=timer))
    return ([x.value.raw_ref for x in out if not isinstance(x, beam.pvalue.TaggedOutput)],
            [x.value for x in out if isinstance(x, beam.pvalue.TaggedOutput)])

  assert run(batch) == ([e.raw_ref for e in first], ['pubsub:s#again'])
  assert len(timer.at) == 1  # set once, when the key's state is created
  stored = cell.read()
  assert [len(chunk) for chunk in stored] == [8 * 3]
  held = np.frombuffer(stored[0], '<u8')
  assert list(held) == sorted(id_digests(['id-1', 'id-2', 'id-3']).tolist())  # sorted, unique

  later = event(5)
  assert run([first[2], later]) == ([later.raw_ref], [first[2].raw_ref])  # a copy across batches
  assert [len(chunk) for chunk in cell.read()] == [8 * 3, 8] and len(timer.at) == 1  # only the new id
  assert run([first[0]]) == ([], [first[0].raw_ref])
  assert len(cell.read()) == 2  # nothing new: nothing written
  # batch after batch of new ids: the bag is written back as one chunk before it grows past
  # _COMPACT_AT chunks, and a copy of any earlier id is still found
  from postauth.transforms.dedup_events import _COMPACT_AT
  for i in range(10, 30):
    copies = [event(i - 1 if i > 10 else 5, f'pubsub:s#copy{i}'), event(1, f'pubsub:s#old{i}')]
    assert run([event(i)] + copies) == ([event(i).raw_ref], [f'pubsub:s#copy{i}', f'pubsub:s#old{i}'])
    assert len(cell.read()) <= _COMPACT_AT
  held = np.frombuffer(b''.join(cell.read()), '<u8')
  assert sorted(held.tolist()) == sorted(id_digests([f'id-{i}' for i in (1, 2, 3, 5, *range(10, 30))]).tolist())
