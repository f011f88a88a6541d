"""The file replay: a runner-independent unbounded source (SDF) whose watermark never passes a
record it has not released yet. Checked with zero allowed lateness: a record the watermark had
already passed would be dropped by its window, so every window's count must be exact."""
from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from postauth.pipeline import prism
from postauth.pipeline.jobs import pipeline_options
from postauth.transforms.replay import ReplayFiles
from conftest import missing_tool

T0 = 1_780_000_000 - 1_780_000_000 % 3600  # an hour boundary
# 3 files, records out of order across and within files, gaps of empty steps between bursts
TIMES = [T0 + s for s in (5, 70, 290, 310, 1190, 1210, 4000, 4001, 4002, 7300, 65, 3601, 250)]


def _write(tmp_path) -> str:
  for i in range(3):
    with open(tmp_path / f'part-{i}.jsonl', 'w') as f:
      for j, t in enumerate(TIMES[i::3]):
        f.write(json.dumps({'event_time': t, 'event_id': f'{i}-{j}'}) + '\n')
  return str(tmp_path / 'part-*.jsonl')


def _expected():
  counts = {}
  for t in TIMES:
    start = t - t % 600
    counts[start] = counts.get(start, 0) + 1
  return sorted(counts.items())


def _run(pattern: str, argv, test_stream: bool = False):
  options = PipelineOptions(argv)
  options.view_as(StandardOptions).streaming = True
  with beam.Pipeline(options=options) as p:
    counts = (p
              | ReplayFiles(pattern, step_seconds=300, test_stream=test_stream)
              | beam.WindowInto(window.FixedWindows(600), allowed_lateness=0)
              | beam.Map(lambda r: ('all', 1))
              | beam.CombinePerKey(sum)
              | beam.ParDo(_WithWindowStart()))
    assert_that(counts, equal_to(_expected()))


class _WithWindowStart(beam.DoFn):
  def process(self, kv, w=beam.DoFn.WindowParam):
    yield int(w.start), kv[1]


def test_replay_on_the_fnapi_runner_counts_every_record(tmp_path):
  # (the FnApiRunner does not drop late data: this checks the SDF runs there, not its watermark)
  _run(_write(tmp_path), ["--runner=FnApiRunner"])


def test_replay_on_prism_loses_no_record(tmp_path):
  if prism.local_binary() is None:
    missing_tool(f'no Prism binary at {prism.binary_path()}: run `make prism`')
  _run(_write(tmp_path), ['--runner=PrismRunner', f'--prism_location={prism.local_binary()}'])


def test_replay_as_test_stream_on_the_bundle_runner_loses_no_record(tmp_path):
  _run(_write(tmp_path), ['--runner=BundleBasedDirectRunner'], test_stream=True)


@pytest.mark.parametrize('argv,expected', [
    (['--runner=BundleBasedDirectRunner'], True),
    (['--runner=FnApiRunner'], False),
    (['--runner=PrismRunner'], False),
    (['--runner=DirectRunner', '--prism_location=/opt/prism'], False),
])
def test_the_replay_takes_test_stream_only_where_the_job_lands_on_the_bundle_runner(argv, expected):
  assert prism.lands_on_bundle_runner(pipeline_options(argv)) is expected


def test_the_direct_runner_replays_on_prism_when_the_binary_is_there(monkeypatch):
  monkeypatch.setattr(prism, 'local_binary', lambda: '/opt/prism/prism')
  assert prism.lands_on_bundle_runner(PipelineOptions(['--runner=DirectRunner'])) is False
  monkeypatch.setattr(prism, 'local_binary', lambda: None)
  assert prism.lands_on_bundle_runner(PipelineOptions(['--runner=DirectRunner'])) is True


def test_prism_runs_without_runner_splits_of_timer_bundles():
  """A Prism-starting runner gets the experiment that keeps Prism from splitting a stateful
  bundle between its timers (their output would land behind the watermark); others do not."""
  from apache_beam.options.pipeline_options import DebugOptions
  from postauth.pipeline.jobs import pipeline_options
  for runner, expected in (('PrismRunner', True), ('DirectRunner', True), ('FnApiRunner', False)):
    experiments = pipeline_options([f'--runner={runner}']).view_as(DebugOptions).experiments or []
    assert (prism.NO_RUNNER_SPLITS in experiments) is expected, runner
  options = pipeline_options(['--runner=PrismRunner', f'--experiments={prism.NO_RUNNER_SPLITS}'])
  assert options.view_as(DebugOptions).experiments.count(prism.NO_RUNNER_SPLITS) == 1
