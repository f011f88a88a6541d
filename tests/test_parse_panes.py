"""Batch parse straight into panes: the same windows as from events, every record counted.

``ParseFiles(pane_seconds=...)`` aggregates a file's events into (identity, pane) parts where
it parses them; ``IdentityWindows`` merges a pane's parts across files and slides them into
windows. Scoring keys streaming windows by (identity type, shard), shards sized by cohort.
"""
from __future__ import annotations

import apache_beam as beam
import orjson
from apache_beam.testing.util import assert_that, equal_to

from postauth.transforms import score
from postauth.transforms.parse import DEAD_LETTER, ParseFiles
from postauth.transforms.windowing import IdentityWindows, is_pane_parts
from test_parse_job import _ct

T0 = '2026-11-05T10:{:02d}:{:02d}Z'


def _records(n, minute0, who):
  return [_ct(eventID=f'{who}-{minute0}-{i}', eventTime=T0.format(minute0 + i % 40, i % 60),
              userIdentity={'type': 'AssumedRole', 'arn': f'arn:aws:sts::1:assumed-role/{who}/s',
                            'sessionContext': {'sessionIssuer': {'arn': f'arn:aws:iam::1:role/{who}'}}},
              eventName=('GetObject', 'PutObject', 'ListBuckets')[i % 3])
          for i in range(n)]


def _write(tmp_path):
  # pane 10:15 of identity a spans both files; one line of b.jsonl is not JSON
  (tmp_path / 'a.jsonl').write_bytes(b'\n'.join(orjson.dumps(r) for r in _records(30, 0, 'a')))
  (tmp_path / 'b.jsonl').write_bytes(b'\n'.join(orjson.dumps(r) for r in _records(30, 18, 'a')
                                                + _records(5, 2, 'b')) + b'\n{not json\n')
  return f'{tmp_path}/*.jsonl'


def _window(w):
  return (w.identity, w.window_start, w.window_end, w.agg.count, tuple(sorted(w.agg.actions.items())),
          tuple(sorted(w.agg.panes.items())), len(w.agg.evidence))


def test_pane_parts_give_the_windows_events_give_and_count_every_record(tmp_path):
  pattern = _write(tmp_path)
  p = beam.Pipeline(runner='FnApiRunner')
  from_events = (p | 'Events' >> ParseFiles(pattern)).events | 'W1' >> IdentityWindows(3600, 900)
  parts = p | 'Panes' >> ParseFiles(pattern, pane_seconds=900)
  assert is_pane_parts(parts.events)
  from_panes = parts.events | 'W2' >> IdentityWindows(3600, 900)
  a = from_events | 'A' >> beam.Map(_window)
  b = from_panes | 'B' >> beam.Map(_window)
  both = ((a | 'KA' >> beam.Map(lambda w: ('x', w)), b | 'KB' >> beam.Map(lambda w: ('x', w)))
          | beam.CoGroupByKey() | beam.Map(lambda kv: sorted(kv[1][0]) == sorted(kv[1][1]) and len(kv[1][0])))
  # a: 10:00-10:47, 4 panes in 7 windows; b: 10:02-10:06, 1 pane in 4 windows
  assert_that(both, equal_to([11]), label='same windows')
  assert_that(parts[DEAD_LETTER] | beam.combiners.Count.Globally(), equal_to([1]), label='dead letter')
  # one element per identity and file (a in both files, b in one), holding its pane parts
  assert_that(parts.events | 'PartsPerElement' >> beam.Map(lambda kv: (kv[0][-1], len(kv[1]))),
              equal_to([('a', 2), ('a', 3), ('b', 1)]), label='parts per identity and file')
  result = p.run()
  result.wait_until_finish()
  counters = {}
  for c in result.metrics().query()['counters']:  # one per step: both parses add up
    counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
  # both parses count: each record read once per parse
  assert counters['records_read'] == 2 * 66
  assert counters['events_parsed'] == 2 * 65 and counters['dead_lettered'] == 2
  # a: 10:00, 10:15 in file a and 10:15, 10:30, 10:45 in file b; b: 10:00
  assert counters['pane_parts'] == 6


def test_cohort_shards_grow_with_the_cohort(monkeypatch):
  assert [score.shards_for(n) for n in (0, 1, 256, 257, 10_000)] == [1, 1, 1, 2, 40]

  class Fleet:
    identities = {'workload_identity': 1000, 'ci_job': 10}

  class Model:
    fleet = Fleet()

  monkeypatch.setattr(score, 'acquire_model', lambda *a: Model())
  fn = score.KeyByCohortShard('unused')
  fn.setup()

  class W:
    def __init__(self, identity, kind):
      self.window = type('IW', (), {'identity': identity})()
      self.context = {'identity_type': kind}

  keys = {kind: {next(fn.process(W(f'id-{i}', kind)))[0][1] for i in range(400)}
          for kind in ('workload_identity', 'ci_job', 'unknown')}
  assert keys == {'workload_identity': {0, 1, 2, 3}, 'ci_job': {0}, 'unknown': {0}}
  fixed = score.KeyByCohortShard('unused', shards=3)
  fixed.setup()
  assert {next(fixed.process(W(f'id-{i}', 'ci_job')))[0][1] for i in range(50)} == {0, 1, 2}
