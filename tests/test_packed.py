"""PackedCoder: exact round trips, safe on worker threads, smaller than Beam's default, and used
by the batch groupings that carry finding versions; PackedStateCoder: the streaming state that
grows with an identity's windows, reading what PickleCoder wrote before."""
from __future__ import annotations

import math
import pickle
import threading

import apache_beam as beam
from apache_beam.coders import PickleCoder, coders
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from postauth.transforms.packed import ZSTD_MAGIC, Packed, PackedCoder, PackedStateCoder
from postauth.transforms.sinks import GatherWholeFiles
from postauth.transforms.timer_walk import GroupWithTimestamps


def finding(i: int) -> dict:
  """A finding-shaped value: nested dicts and lists, repeated evidence, every JSON-ish type and
  some that JSON could not hold exactly (tuples, int keys, sets, infinities)."""
  evidence = [{'event_id': f'e-{i}-{k}', 'action': 's3:GetObject', 'resource': f'arn:aws:s3:::bucket/{k}',
               'source_ip': '10.0.0.1', 'user_agent': 'aws-cli/2.15 Python/3.11 Linux', 'time': 1.8e9 + k / 7,
               'success': k % 3 != 0, 'error_code': None} for k in range(40)]
  return {'finding_id': f'f{i}', 'identity': 'role/ci', 'severity': 'high', 'score': 0.731 + i,
          'evidence': evidence, 'window': (1.8e9, 1.8e9 + 3600.0), 'panes': {1800000000: 3, 1800000900: 5},
          'networks': {'10.0.0.0/24'}, 'first': -math.inf, 'note': 'é ✓', 'updates': i}


def test_round_trips_exactly_with_the_same_types():
  coder = PackedCoder()
  for value in (finding(0), finding(3), None, '', 'a line', (1, 'x'), [], {}, 2 ** 80, -0.0):
    back = coder.decode(coder.encode(value))
    assert back == value and type(back) is type(value)
  back = coder.decode(coder.encode(finding(1)))
  assert type(back['window']) is tuple and type(back['networks']) is set
  assert list(back['panes']) == [1800000000, 1800000900]


def test_is_smaller_than_beams_default_encoding():
  value = finding(2)
  packed = len(PackedCoder().encode(value))
  default = len(coders.FastPrimitivesCoder().encode(value))
  assert packed * 3 < default, (packed, default)


def test_size_estimates_encode_one_value_in_n_and_sum_near_the_truth():
  """Beam sizes sampled elements with ``estimate_size``; by default that is a full encode."""
  from postauth.transforms.sampled_size import MEASURE_EVERY
  coder = PackedCoder()
  values = [finding(i) for i in range(160)]
  for i in range(0, 160, 3):  # sizes vary: some findings carry much more evidence
    values[i]['evidence'] = values[i]['evidence'] * 4
  truth = sum(len(coder.encode(v)) for v in values)
  encodes = []
  real_encode = PackedCoder.encode
  coder.encode = lambda v: encodes.append(v) or real_encode(coder, v)
  estimate = sum(coder.estimate_size(v) for v in values)
  assert len(encodes) == len(values) // MEASURE_EVERY
  assert 0.7 * truth <= estimate <= 1.3 * truth, (estimate, truth)


def test_survives_pickling_and_concurrent_threads():
  coder = pickle.loads(pickle.dumps(PackedCoder()))  # as Beam ships it to a worker
  assert coder == PackedCoder() and not coder.is_deterministic()
  errors = []

  def work(n):
    try:
      for i in range(200):
        value = finding(n * 1000 + i)
        assert coder.decode(coder.encode(value)) == value
    except Exception as e:  # pragma: no cover - reported below
      errors.append(e)

  threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors


def test_registry_maps_the_hint_to_the_coder():
  assert isinstance(beam.coders.registry.get_coder(Packed), PackedCoder)


def _outputs(p, label_suffix):
  found = []

  def walk(node):
    if node.full_label.endswith(label_suffix):
      found.extend(node.outputs.values())
    for part in node.parts:
      walk(part)

  walk(p._root_transform())
  return found


def test_batch_groupings_of_findings_and_file_lines_are_packed():
  p = TestPipeline()
  findings = p | 'Findings' >> beam.Create([finding(i) for i in range(3)])
  _ = findings | 'Group' >> GroupWithTimestamps(lambda f: f['identity'])
  lines = p | 'Lines' >> beam.Create(['{"a": 1}'])
  _ = {'out.jsonl': lines} | 'Files' >> GatherWholeFiles({'out.jsonl': lambda ls: {}})
  for suffix in ('Group/KeyWithTimestamp', 'Files/Key0', 'Files/Seed'):
    (pc,) = _outputs(p, suffix)
    value_coder = beam.coders.registry.get_coder(pc.element_type).coders()[1]
    assert isinstance(value_coder, PackedCoder), (suffix, value_coder)  # a bundle's list, packed


def test_grouped_findings_come_back_equal():
  values = [finding(i) for i in range(5)]
  with beam.Pipeline(runner='FnApiRunner') as p:
    grouped = (p | beam.Create(values)
               | GroupWithTimestamps(lambda f: f['identity'])
               | beam.FlatMap(lambda kv: [e for batch in kv[1] for _, e in batch]))
    assert_that(grouped, equal_to(values))


def test_a_bundles_versions_carry_their_shared_records_once():
  """Versions of a finding share their evidence records (domain/evidence_pool.py): grouped as
  one list per key and bundle, the records are pickled once, not once per version."""
  first = finding(0)
  versions = [(1000 * n, dict(first, updates=n, evidence=first['evidence'][:20 + n])) for n in range(10)]
  coder = PackedCoder()
  together = len(coder.encode(versions))
  apart = sum(len(coder.encode(v)) for v in versions)
  assert together < apart / 4, (together, apart)
  back = coder.decode(coder.encode(versions))
  assert back == versions
  assert back[0][1]['evidence'][0] is back[1][1]['evidence'][0]  # shared again, as made


# -- keyed state: packed, and what PickleCoder wrote before still reads ---------------------------
def test_state_coder_reads_cells_and_bags_pickle_coder_wrote_and_packs_what_it_writes():
  old, new = PickleCoder(), PackedStateCoder()
  for value in (finding(0), None, '', (1, 'x'), {'runs': [finding(1), finding(2)]}):
    assert new.decode(old.encode(value)) == value  # a cell written before
    bag_element = old.get_impl().encode_nested(value)  # a bag's element: length-prefixed
    assert new.get_impl().decode_nested(bag_element) == value
    packed = new.encode(value)
    assert packed.startswith(ZSTD_MAGIC) and new.decode(packed) == value
    assert new.get_impl().decode_nested(new.get_impl().encode_nested(value)) == value
  big = [finding(i) for i in range(8)]
  assert len(new.encode(big)) * 4 < len(old.encode(big))


def test_streaming_state_of_windows_findings_and_histories_is_packed():
  """The state that grows with an identity's windows: each read and write of it crosses the
  runner's state API whole (Prism, Dataflow, Flink)."""
  from postauth.transforms.agent_join import _AttributeOnceFn
  from postauth.transforms.corroborate import _CorroborateFn
  from postauth.transforms.findings import _MergeRunsFn
  from postauth.transforms.history import TrackHistoryFn
  from postauth.transforms.history_cell import IdentityStateCoder, decode_state, encode_state
  from postauth.transforms.triage import _DedupFn
  specs = [_MergeRunsFn.PENDING, _MergeRunsFn.RUNS, TrackHistoryFn.PENDING, _DedupFn.PENDING,
           _DedupFn.REPORTED, _CorroborateFn.PENDING, _AttributeOnceFn.SEEN]
  assert all(isinstance(s.coder, PackedStateCoder) for s in specs), [s.name for s in specs]
  assert isinstance(TrackHistoryFn.HISTORY.coder, IdentityStateCoder)
  cell = encode_state(None, {(0.0, 3600.0): finding(0)})
  assert cell.startswith(ZSTD_MAGIC) and decode_state(cell).firings == {(0.0, 3600.0): finding(0)}
