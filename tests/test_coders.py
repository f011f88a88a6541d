"""WindowAggregateCoder and IdentityWindowCoder: exact round trips, and the shuffles use them."""
from __future__ import annotations

import math
import pickle
import typing

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.coders import coders
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.typehints.native_type_compatibility import convert_to_beam_type

from postauth.domain.window import WindowAggregate
from postauth.domain import evidence
from postauth.transforms.aggregate import (DeferredEvidence, WindowAggregateCoder, WindowAggregateFn, aggregate_fields,
                                           estimated_size)
from postauth.domain.event import Event
from postauth.transforms.windowing import IdentityWindow, IdentityWindowCoder, IdentityWindows

T0 = 1_800_000_000


def ev(t: float, action: str, ok: bool = True, region: str = 'us-east-1',
       ip: str = '10.0.0.1', ua: str = 'aws-cli/2.15.0 Python/3.11 Linux/6.1') -> Event:
  return Event(f'e-{t}-{action}', t, 'role/a', 'AssumedRole', 'role/a/s', 'AKIA', 'aws', 's3', action,
               'data_read' if action.startswith('Get') else 'privilege_change', f'arn:b/{action}',
               region, ip, ua, ok, '' if ok else 'AccessDenied', action.startswith('Get'), 'f#0')


def full_aggregate() -> WindowAggregate:
  """Every field populated, with fractional times, unicode, errors and several panes."""
  agg = WindowAggregate()
  for i, (action, ok) in enumerate([('GetObject', True), ('PutRolePolicy', False),
                                    ('GetObject', True), ('AttachRolePolicy', True)]):
    agg.add(ev(T0 + 0.123456789 + 700 * i, action, ok, region=['us-east-1', 'eu-west-1'][i % 2],
               ip=['10.0.0.1', '2001:db8::1', 'ec2.amazonaws.com'][i % 3],
               ua='Boto3/1.34 Python/3.11 Linux' if i else 'é-agent/1 windows'), 900)
  agg.overflow = 3
  return agg


def assert_exact(a: WindowAggregate, b: WindowAggregate) -> None:
  assert a == b
  for field in WindowAggregate.FIELDS:
    x, y = getattr(a, field), getattr(b, field)
    assert type(x) is type(y), field
    if isinstance(x, dict):
      assert list(x.items()) == list(y.items()), field  # same keys, key types and order
      assert [type(k) for k in x] == [type(k) for k in y], field


def round_trip(coder, value):
  return coder.decode(coder.encode(value))


def test_full_aggregate_round_trips_exactly():
  agg = full_aggregate()
  assert all([agg.count, agg.errors, agg.read_only, agg.overflow, agg.actions, agg.action_category,
              agg.categories, agg.resources, agg.networks, agg.agents, agg.regions, agg.panes,
              agg.identity_type])
  assert len(agg.panes) == 3 and math.modf(agg.first_time)[0] != 0
  back = round_trip(WindowAggregateCoder(), agg)
  assert_exact(agg, back)
  assert back.first_time == T0 + 0.123456789 and all(type(k) is int for k in back.panes)
  # The decoded aggregate is a live accumulator: merging into it works like the original.
  assert_exact(back.merge(full_aggregate()), full_aggregate().merge(full_aggregate()))


def test_empty_aggregate_keeps_its_infinite_times():
  back = round_trip(WindowAggregateCoder(), WindowAggregate())
  assert_exact(WindowAggregate(), back)
  assert back.first_time == math.inf and back.last_time == -math.inf


def test_values_orjson_cannot_hold_fall_back_to_pickle_exactly():
  odd = full_aggregate()
  odd.regions[None] = 1  # a non-str key
  big = full_aggregate()
  big.count = 1 << 70  # beyond 64 bits
  numpy_count = full_aggregate()
  numpy_count.errors = np.int64(2)
  nan_time = full_aggregate()
  nan_time.first_time = math.nan
  for agg in (odd, big, numpy_count):
    assert_exact(agg, round_trip(WindowAggregateCoder(), agg))
  assert math.isnan(round_trip(WindowAggregateCoder(), nan_time).first_time)
  assert WindowAggregateCoder().encode(full_aggregate())[:1] == b'E'  # the usual case: orjson, framed
  assert WindowAggregateCoder().encode(odd)[:1] == pickle.dumps(None, protocol=pickle.HIGHEST_PROTOCOL)[:1]


def _pane(k: int) -> WindowAggregate:
  agg = WindowAggregate()
  for i in range(6):
    agg.add(ev(T0 + 900 * k + 100 * i, ['GetObject', 'PutRolePolicy', 'ListKeys'][(i + k) % 3], i % 4 != 1,
               ip=f'10.0.{k}.{i}'), 900)
  return agg


def test_a_decoded_sample_is_read_only_when_asked_and_windows_over_it_match_eager_ones():
  coder = WindowAggregateCoder()
  decoded = [coder.decode(coder.encode(_pane(k))) for k in range(4)]
  window, lazy, eager = WindowAggregate(), WindowAggregate(), WindowAggregate()
  for k, pane in enumerate(decoded):
    window.merge(pane, lazy=True)
    lazy.merge(_pane(k), lazy=True)
    eager.merge(_pane(k))
  parts = window._evidence_parts
  assert len(parts) == 4 and all(p.__class__ is DeferredEvidence and p._store is None for p in parts)
  assert estimated_size(window) == estimated_size(lazy)  # sized from the key counts alone
  assert_exact(window, eager)  # reading the sample decodes and merges the parts in pane order
  assert list(window.evidence.items()) == list(eager.evidence.items())
  assert all(p._store is not None for p in parts)
  # A pane shared by two windows decodes once; merging copies, so the pane's store stays as it was.
  again = WindowAggregate().merge(decoded[0], lazy=True)
  assert again._evidence_parts[0] is parts[0] and again.evidence == _pane(0).evidence
  assert parts[0].store() == _pane(0).evidence


def test_an_untouched_decoded_aggregate_encodes_to_the_same_bytes_and_pickles():
  coder = WindowAggregateCoder()
  encoded = coder.encode(full_aggregate())
  back = coder.decode(encoded)
  assert coder.encode(back) == encoded  # the sample's bytes go out as they came, undecoded
  assert back._evidence_parts[0]._store is None
  assert_exact(pickle.loads(pickle.dumps(back, protocol=pickle.HIGHEST_PROTOCOL)), full_aggregate())
  empty = coder.decode(coder.encode(WindowAggregate()))
  assert empty._evidence_parts == [] and empty.evidence == {}


def test_an_encoding_from_before_the_frame_still_decodes():
  """Streaming state written by an earlier version holds one orjson list, the sample inside it."""
  agg = full_aggregate()
  fields = aggregate_fields(agg, 0)
  fields[16] = evidence.encode(agg.evidence)
  old = orjson.dumps(fields)
  assert old[:1] == b'['
  assert_exact(coder_decode(old), agg)
  w = IdentityWindow('arn:aws:iam::1:role/x', T0 - 3600.0, float(T0), agg)
  old_window = orjson.dumps([w.identity, w.window_start, w.window_end, w.firing] + fields)
  assert IdentityWindowCoder().decode(old_window) == w


def coder_decode(encoded: bytes) -> WindowAggregate:
  return WindowAggregateCoder().decode(encoded)


def test_identity_window_round_trips_alone_and_nested_in_the_history_shuffle_coder():
  w = IdentityWindow('arn:aws:iam::1:role/ü', T0 - 3600.0, float(T0), full_aggregate())
  back = round_trip(IdentityWindowCoder(), w)
  assert type(back) is IdentityWindow and back == w
  assert type(back.window_start) is float
  assert_exact(w.agg, back.agg)
  # The shape TrackHistory shuffles: (identity, (window, context)).
  hint = typing.Tuple[str, typing.Tuple[IdentityWindow, typing.Any]]
  coder = beam.coders.registry.get_coder(convert_to_beam_type(hint))
  kv = ('arn:aws:iam::1:role/ü', (w, {'registered': 'false', 'owner': None, 'services': ['s3']}))
  assert coder.decode(coder.encode(kv)) == kv
  assert isinstance(coder, coders.TupleCoder) and isinstance(
      coder.coders()[1].coders()[0], IdentityWindowCoder)


def test_registry_and_combine_fn_use_the_compact_coders():
  assert isinstance(beam.coders.registry.get_coder(WindowAggregate), WindowAggregateCoder)
  assert isinstance(beam.coders.registry.get_coder(IdentityWindow), IdentityWindowCoder)
  assert isinstance(WindowAggregateFn().get_accumulator_coder(), WindowAggregateCoder)
  assert not WindowAggregateCoder().is_deterministic()  # aggregates are values, never keys


def test_windowing_outputs_are_typed_for_the_coders():
  for bounded in (True, False):
    p = TestPipeline()
    events = p | beam.Create([ev(T0 + 1.5, 'GetObject')])
    if not bounded:
      events.is_bounded = False
    windows = events | IdentityWindows(3600, 900)
    assert windows.element_type is IdentityWindow
    # Every aggregate the windowing step hands on (to a shuffle or the next step) is typed.
    typed = {node.full_label.split('/')[-1]: pc.element_type
             for node in _nodes(p._root_transform()) for pc in node.outputs.values()
             if node.full_label.split('/')[-1] in ('AggregatePanes', 'PaneToWindows', 'MergePanes')}
    assert len(typed) == (3 if bounded else 2)
    if bounded:  # the bounded MergePanes slides the panes into IdentityWindows itself
      assert typed.pop('MergePanes') is IdentityWindow
    # an aggregate, or a list of them (pane parts, one element per identity)
    assert all(t.tuple_types[1] in (WindowAggregate, beam.typehints.List[WindowAggregate])
               for t in typed.values()), typed

def _nodes(node):
  yield node
  for part in node.parts:
    yield from _nodes(part)



def test_batch_window_shuffles_never_pickle_an_aggregate(monkeypatch):
  """The bounded windowing step and a typed per-identity shuffle, with pickling of aggregates forbidden.

  (Beam also encodes sampled elements of every PCollection to estimate sizes: those, too, must
  find the compact coder, so the windowing step's outputs must all be typed.)
  """
  from apache_beam.testing.util import assert_that, equal_to

  def refuse(self, protocol):
    raise AssertionError('a WindowAggregate was pickled')

  monkeypatch.setattr(WindowAggregate, '__reduce_ex__', refuse, raising=False)
  encoded = []
  real_encode = WindowAggregateCoder.encode
  monkeypatch.setattr(WindowAggregateCoder, 'encode',
                      lambda self, v: encoded.append(1) or real_encode(self, v))
  events = [ev(T0 + 60.5 * i, ['GetObject', 'PutRolePolicy'][i % 2]) for i in range(40)]
  with beam.Pipeline(runner='DirectRunner') as p:
    per_identity = (p | beam.Create(events)
                    | IdentityWindows(3600, 900)
                    | beam.Map(lambda w: (w.identity, w)).with_output_types(
                        typing.Tuple[str, IdentityWindow])
                    | beam.GroupByKey())
    assert_that(per_identity | beam.FlatMap(
        lambda kv: [(w.window_end - T0, w.agg.count) for w in kv[1]]),
                equal_to([(900.0, 15), (1800.0, 30), (2700.0, 40), (3600.0, 40), (4500.0, 25),
                          (5400.0, 10)]))
  assert encoded  # the shuffles went through the compact coder


def test_history_shuffle_is_typed_for_the_identity_window_coder():
  from postauth.transforms.history import TrackHistory
  p = TestPipeline()
  windows = (p | beam.Create([ev(T0 + 1.5, 'GetObject')]) | IdentityWindows(3600, 900)
             | beam.Map(lambda w: (w, {'registered': 'true'})))
  _ = windows | 'History' >> TrackHistory(None)
  keyed = [pc for node in _nodes(p._root_transform()) for pc in node.outputs.values()
           if node.full_label == 'History/KeyByIdentity']
  coder = beam.coders.registry.get_coder(keyed[0].element_type)
  assert isinstance(coder.coders()[1].coders()[0], IdentityWindowCoder)


def test_size_estimates_are_near_the_encoding_and_encode_nothing(monkeypatch):
  """Beam sizes sampled elements of every PCollection: the estimates must not encode (that cost
  more than the steps making the windows) and must stay near the real size."""
  from postauth.models.profile import IdentityProfile
  from postauth.transforms.window_context import WindowInContext, WindowInContextCoder
  agg = full_aggregate()  # and a day's busy window: many calls, resources, a few networks
  for i in range(120):
    agg.add(ev(T0 + 20.0 * i, ['GetObject', 'PutObject', 'ListBucket', 'GetSecretValue'][i % 4] + str(i % 9),
               ip=f'10.0.{i % 3}.{i}'), 900)
  window = IdentityWindow('role/a', T0, T0 + 3600.0, agg)
  in_context = WindowInContext(window, {'registered': 'true', 'team': 'data'},
                               IdentityProfile().update(agg, T0 + 3600.0), 3)
  sizes = {'aggregate': len(WindowAggregateCoder().encode(agg)),
           'window': len(IdentityWindowCoder().encode(window)),
           'in_context': len(WindowInContextCoder().encode(in_context))}
  back = WindowInContextCoder().decode(WindowInContextCoder().encode(in_context))
  assert back[0] == window and back[1:2] == in_context[1:2] and back.history_days == 3
  assert pickle.dumps(back.history) == pickle.dumps(in_context.history)

  def refuse(*_):
    raise AssertionError('an estimate encoded')

  for cls in (WindowAggregateCoder, IdentityWindowCoder, WindowInContextCoder):
    monkeypatch.setattr(cls, 'encode', refuse)
  monkeypatch.setattr('pickle.dumps', refuse)
  estimates = {'aggregate': WindowAggregateCoder().estimate_size(agg),
               'window': IdentityWindowCoder().estimate_size(window),
               'in_context': WindowInContextCoder().estimate_size(in_context)}
  for name, size in sizes.items():
    assert size / 2 <= estimates[name] <= size * 2, (name, estimates[name], size)
  assert beam.coders.registry.get_coder(WindowInContext).__class__ is WindowInContextCoder


def test_a_batch_of_windows_is_sized_from_one_window_in_n_and_sums_near_the_measure(monkeypatch):
  """Beam sizes a batched element (an identity's windows) item by item; the coders measure one
  window in ``MEASURE_EVERY`` and give the others the mean, so the sum stays near the measure."""
  from apache_beam.coders.coders import ListCoder, TupleCoder, StrUtf8Coder
  from postauth.transforms import windowing
  from postauth.transforms.sampled_size import MEASURE_EVERY
  windows = []
  for n in range(160):
    agg = WindowAggregate()
    for i in range(1 + (n % 7) * 5):  # sizes vary from window to window
      agg.add(ev(T0 + 10.0 * i, f'Get{i % 11}', ip=f'10.1.{i % 4}.{n}'), 900)
    windows.append(IdentityWindow('role/a', T0, T0 + 3600.0, agg))
  truth = sum(windowing.estimated_window_size(w) for w in windows)
  measured = []
  real = windowing.estimated_window_size
  monkeypatch.setattr(windowing, 'estimated_window_size', lambda w: measured.append(w) or real(w))
  coder = IdentityWindowCoder()
  batch = TupleCoder([StrUtf8Coder(), ListCoder(coder)]).get_impl()
  size, _ = batch.get_estimated_size_and_observables(('role/a', windows))
  assert len(measured) == len(windows) // MEASURE_EVERY
  assert 0.8 * truth <= size <= 1.2 * truth, (size, truth)
  shipped = pickle.loads(pickle.dumps(coder))  # as Beam ships it: equal, counting afresh
  assert shipped == coder == IdentityWindowCoder() and hash(shipped) == hash(IdentityWindowCoder())
  assert shipped.estimate_size(windows[1]) == real(windows[1])
