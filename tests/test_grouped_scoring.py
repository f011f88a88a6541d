"""Batch scoring per identity: an identity's windows, scored as one list where its history walked
them and merged into findings without a shuffle, give the versions the per-window path gives."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue

from postauth.models import registry
from postauth.models.profile import IdentityProfile
from postauth.transforms.findings import MergeOverlappingWindows
from postauth.transforms.rules import RuleConfig
from postauth.transforms.score import ScoreWindows
from postauth.transforms.window_context import WindowInContext
from postauth.transforms.windowing import EPSILON
from test_identity_context import ctx, ev, window
from test_registry import _save
from test_windowing import T0

H, PERIOD = 3600, 900


def _in_context(identity: str, end: float, scope: str) -> WindowInContext:
  context = dict(ctx(identity=identity, expected_services=scope), identity_type='api_key')
  events = [ev(identity, end - 60 * k, action=f'Get{k % 3}') for k in range(1, 1 + int(end // PERIOD) % 4)]
  return WindowInContext(window(identity, end, events), context, IdentityProfile(), 10_000)


def _windows():
  """Three identities: one run of six overlapping windows, two runs apart, and windows no rule
  flags (in scope); given out of time order, as a shuffle would."""
  ends = {'id-a': [T0 + H + k * PERIOD for k in range(6)],
          'id-b': [T0 + H, T0 + H + PERIOD, T0 + 6 * H, T0 + 6 * H + PERIOD],
          'id-c': [T0 + 2 * H + k * PERIOD for k in range(3)]}
  return [_in_context(i, e, 's3' if i == 'id-c' else 'nothing') for i, es in ends.items() for e in reversed(es)]


def _version(f):
  return f['finding_id'], f['updates'], f['severity'], f['windows'], f['score'], tuple(f['rules'])


@pytest.mark.parametrize('threshold', [0.0, 1e9], ids=['model-flags-all', 'rules-only'])
def test_grouped_batch_scoring_and_merge_give_the_per_window_versions(tmp_path, threshold):
  models = str(tmp_path / 'models')
  registry.promote(models, _save(models, 1))
  wics = _windows()
  by_identity = {}
  for w in sorted(wics, key=lambda w: w.window.window_end):  # the walk's fold order
    by_identity.setdefault(w.window.identity, []).append(w)

  def score(grouped):
    return ScoreWindows(models, threshold=threshold, window_period=PERIOD, rules=RuleConfig(), grouped=grouped)

  with beam.Pipeline() as p:
    per_window = (p | 'Windows' >> beam.Create(
                      [TimestampedValue(w, w.window.window_end - EPSILON) for w in wics])
                  | 'Score' >> score(False) | 'Merge' >> MergeOverlappingWindows(H))
    grouped = (p | 'Identities' >> beam.Create(sorted(by_identity.items()))
               | 'ScoreGrouped' >> score(True) | 'MergeGrouped' >> MergeOverlappingWindows(H, grouped=True))
    both = ((per_window | 'A' >> beam.Map(lambda f: ('per_window', _version(f))),
             grouped | 'B' >> beam.Map(lambda f: ('grouped', _version(f))))
            | beam.Flatten())
    assert_that(both, _same_versions)


def _same_versions(pairs):
  """Both paths emit the same versions: a finding per run (id-a one, id-b two, id-c one when the
  model flags its in-scope windows), and updates within a run."""
  a = sorted(v for path, v in pairs if path == 'per_window')
  b = sorted(v for path, v in pairs if path == 'grouped')
  assert a == b, (a, b)
  assert len({v[0] for v in a}) >= 3 and max(v[1] for v in a) >= 2, a


def test_batch_finding_versions_meet_no_flatten_before_a_step(sample, model_dir):
  """Every Flatten that finding versions reach on their way to the sinks feeds a grouping
  directly: a Flatten before a step is a stage boundary of its own, which every version would
  cross encoded in Beam's default coder (~5% of a day's CPU). (Allow-listed findings, the
  ``suppressed`` outputs, are flattened before their file's step.)"""
  from apache_beam.options.pipeline_options import PipelineOptions
  from postauth.pipeline import preflight
  from postauth.pipeline.detect import build_detection
  options = PipelineOptions([f'--inventory={sample["inventory"]}', f'--model-dir={model_dir}',
                             f'--events={sample["dir"]}/live/*', '--findings=/tmp/unused/findings.jsonl'])
  preflight.validate_run(options)
  p = beam.Pipeline(runner='FnApiRunner', options=options)
  build_detection(p, options)
  producer, consumers, flattens = {}, {}, []

  class Visit(beam.pipeline.PipelineVisitor):
    def visit_transform(self, node):
      for tag, out in node.outputs.items():
        if tag != 'suppressed':
          producer[out] = node.full_label
      for pc in node.inputs:
        consumers.setdefault(pc, []).append(node)
      if isinstance(node.transform, beam.Flatten):
        flattens.append(node)

  p.visit(Visit())
  version_steps = ('MergeOverlapping/', 'AskPeers/', 'Suppress')
  checked = 0
  for node in flattens:
    if not any(producer.get(pc, '').startswith(version_steps) for pc in node.inputs):
      continue
    checked += 1
    after = [c.transform for out in node.outputs.values() for c in consumers.get(out, [])]
    assert after and all(isinstance(t, beam.GroupByKey) for t in after), (node.full_label, after)
  assert checked, 'no flatten of finding versions found: the check checks nothing'



def test_bounded_scoring_fills_batches_of_the_fixed_size(tmp_path):
  """Batches are filled up to ``max_batch_size`` windows from the first on (Beam's adaptive sizing
  started at 64 and fitted a regression of batch times after every batch); a grouped batch never
  splits an identity's list."""
  from apache_beam.metrics.metric import MetricsFilter
  models = str(tmp_path / 'models')
  registry.promote(models, _save(models, 1))
  by_identity = {i: [_in_context(i, T0 + H + k * PERIOD, 'nothing') for k in range(50)]
                 for i in ('id-a', 'id-b', 'id-c')}
  wics = [w for ws in by_identity.values() for w in ws]

  def batches(grouped, size, elements):
    p = beam.Pipeline(runner='FnApiRunner')
    _ = (p | beam.Create(elements, reshuffle=False)
         | ScoreWindows(models, threshold=0.0, window_period=PERIOD, rules=RuleConfig(), grouped=grouped,
                        max_batch_size=size))
    result = p.run()
    result.wait_until_finish()
    d = result.metrics().query(MetricsFilter().with_name('score_batch_size'))['distributions'][0].committed
    return d.count, d.sum, d.max

  assert batches(False, 4096, wics) == (1, 150, 150)
  assert batches(True, 4096, sorted(by_identity.items())) == (1, 150, 150)
  assert batches(False, 100, wics) == (2, 150, 100)
  assert batches(True, 100, sorted(by_identity.items())) == (2, 150, 100)  # two lists, then one
