"""postauth on Beam's Prism runner, the binary `make prism` builds (what the DirectRunner runs first).

Each result is compared with the FnApiRunner's on the same generated sample, as the portable
tests in test_runners.py do. No ``--prism_location`` is passed: the CLI must find the binary
itself (pipeline/prism.py). Without the binary these tests skip, except under ``CI=true``
(where ``make test`` builds it first), where they fail.
"""
from __future__ import annotations

import os

import pytest
from apache_beam.options.pipeline_options import PrismRunnerOptions

from postauth.pipeline import launcher, prism
from postauth.pipeline.jobs import pipeline_options, train
# Fixtures and helpers shared with the portable-runner and end-to-end tests.
from test_end_to_end import _assert_attacks_on_top, _detect as _detect_sorted  # noqa: F401
from test_runners import _detect, assert_same_model, fnapi_batch  # noqa: F401


# -- the binary is found without --prism_location -------------------------------------------------
@pytest.mark.parametrize('runner', ['PrismRunner', 'DirectRunner', None,
                                    'apache_beam.runners.portability.prism_runner.PrismRunner'])
def test_prism_runners_get_the_project_binary(prism_binary, runner):
  argv = [f'--runner={runner}'] if runner else []
  assert pipeline_options(argv).view_as(PrismRunnerOptions).prism_location == prism_binary
  # The Flex Template / Airflow entry point builds its options the same way.
  assert launcher.pipeline_options([], argv).view_as(PrismRunnerOptions).prism_location == prism_binary


def test_prism_location_given_is_kept_and_other_runners_are_left_alone(prism_binary, tmp_path):
  own = str(tmp_path / 'my-prism')
  options = pipeline_options(['--runner=PrismRunner', f'--prism_location={own}'])
  assert options.view_as(PrismRunnerOptions).prism_location == own
  for runner in ('FnApiRunner', 'BundleBasedDirectRunner', 'PortableRunner', 'DataflowRunner'):
    assert pipeline_options([f'--runner={runner}']).view_as(PrismRunnerOptions).prism_location is None


def test_prism_binary_path_follows_the_installed_beam_version():
  from apache_beam.version import __version__
  assert prism.binary_path().endswith(os.path.join('.prism', f'v{__version__}', 'prism'))
  with open(os.path.join(prism.PROJECT_ROOT, 'setup.py')) as f:
    assert f"'apache-beam=={__version__}'" in f.read()  # what `make prism` builds


# -- batch run and train on Prism give the FnApiRunner's findings and model -----------------------
def test_prism_run_gives_the_fnapi_findings(prism_binary, fnapi_batch, sample, model_dir, tmp_path):
  expected, expected_counters = fnapi_batch
  assert len(expected) >= len(sample['labels'])
  rows, counters = _detect(sample, model_dir, tmp_path / 'findings.jsonl', '--runner=PrismRunner')
  assert [(r['finding_id'], r['score'], r['severity']) for r in rows] == \
      [(r['finding_id'], r['score'], r['severity']) for r in expected]
  # Every field, the explanations' words included: ties between equal counts are broken by
  # name, so the order Prism delivers a window's events in changes nothing.
  assert rows == expected
  # Beam metrics come back from Prism through the Job API.
  assert counters['records_read'] == sample['counts']['live_events']
  for name in ('records_read', 'events_parsed', 'identity_windows', 'windows_scored',
               'windows_anomalous', 'windows_rule_fired', 'findings'):
    assert counters[name] == expected_counters[name], name


def test_prism_training_gives_the_fnapi_model(prism_binary, sample, model_dir, tmp_path):
  model = tmp_path / 'model'
  out = train([f'--events={sample["dir"]}/history/*', f'--inventory={sample["inventory"]}',
               f'--model-dir={model}', '--runner=PrismRunner'])
  assert_same_model(out, model, model_dir)


# -- streaming on Prism ------------------------------------------------------------------------------
def test_prism_streaming_replay_gives_the_batch_findings(prism_binary, fnapi_batch, sample, model_dir,
                                                        tmp_path):
  """The file replay (a splittable DoFn with an advancing watermark) as a streaming job on Prism:
  what `postauth run --streaming --events ...` and the demo run on the DirectRunner."""
  rows, _ = _detect_sorted(sample, model_dir, tmp_path, '--streaming', '--runner=PrismRunner')
  _assert_attacks_on_top(rows, sample)
  key = lambda f: (f['finding_id'], f['score'], f['windows'], f['event_count'])
  assert sorted(map(key, rows)) == sorted(map(key, fnapi_batch[0]))
