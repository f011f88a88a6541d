"""postauth on Apache Flink: Beam's Flink job server jar (`make flink`) with an embedded cluster.

``--flink_master=[local]`` runs a Flink mini-cluster inside the job server's JVM; the Python
transforms run in this process (``--environment_type=LOOPBACK``). Each result is compared with
the FnApiRunner's on the same generated sample, as test_runners.py and test_prism.py do. No
``--flink_job_server_jar`` is passed: the CLI must find the jar itself (pipeline/flink.py).

Without the jar these tests skip, except under ``CI=true`` (where ``make test`` runs `make flink`
first), where they fail; when Maven Central answered that it does not have the jar, `make flink`
recorded that answer and they skip with it.
"""
from __future__ import annotations

import os
import re

import pytest
from apache_beam.options.pipeline_options import FlinkRunnerOptions

from postauth.pipeline import flink, launcher
from postauth.pipeline.jobs import pipeline_options
# Fixtures and helpers shared with the portable-runner, Prism and end-to-end tests.
from test_end_to_end import _assert_attacks_on_top, _detect as _detect_sorted  # noqa: F401
from test_runners import _detect, fnapi_batch  # noqa: F401
from conftest import missing_tool

# An embedded Flink cluster in the job server's JVM; the SDK harness is this process.
FLINK = ['--runner=FlinkRunner', '--flink_master=[local]', '--environment_type=LOOPBACK',
         '--parallelism=2']


@pytest.fixture(scope='module')
def flink_jar():
  path = flink.local_jar()
  if path:
    return path
  refused = flink.refusal_path()
  if os.path.isfile(refused):
    with open(refused) as f:
      pytest.skip('Flink not tested here: ' + ' '.join(f.read().split()) + ' (`make flink` asks again)')
  message = (f'no Flink job server jar at {flink.jar_path()}: run `make flink` '
             f'(mvn dependency:copy -Dartifact={flink.coordinates()}:jar)')
  missing_tool(message, 'make test fetches it first')


# -- what `make flink` fetches and where the CLI looks for it (no jar needed) --------------------
def test_flink_jar_coordinates_follow_the_installed_beam_version():
  from apache_beam.version import __version__
  assert flink.DEFAULT_FLINK_VERSION in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
  assert flink.coordinates() == \
      f'org.apache.beam:beam-runners-flink-{flink.DEFAULT_FLINK_VERSION}-job-server:{__version__}'
  assert flink.jar_path().endswith(os.path.join(
      '.flink', f'v{__version__}',
      f'beam-runners-flink-{flink.DEFAULT_FLINK_VERSION}-job-server-{__version__}.jar'))
  with open(os.path.join(flink.PROJECT_ROOT, 'Makefile')) as f:
    makefile = f.read()
  # `make flink` fetches the jar this module looks for: Beam's default Flink version, same names.
  assert re.search(r'^FLINK_VERSION \?= (\S+)$', makefile, re.M).group(1) == flink.DEFAULT_FLINK_VERSION
  assert 'FLINK_DIR := .flink/v$(BEAM_VERSION)' in makefile
  assert ('beam-runners-flink-$(FLINK_VERSION)-job-server-$(BEAM_VERSION).jar') in makefile


def test_flink_job_server_jar_given_is_kept_and_other_runners_are_left_alone(tmp_path):
  own = str(tmp_path / 'my-job-server.jar')
  options = pipeline_options(['--runner=FlinkRunner', f'--flink_job_server_jar={own}'])
  assert options.view_as(FlinkRunnerOptions).flink_job_server_jar == own
  for runner in ('FnApiRunner', 'PrismRunner', 'PortableRunner', 'DataflowRunner'):
    assert pipeline_options([f'--runner={runner}']).view_as(FlinkRunnerOptions).flink_job_server_jar is None


def test_flink_runner_gets_the_project_jar(flink_jar):
  for runner in ('FlinkRunner', 'apache_beam.runners.portability.flink_runner.FlinkRunner'):
    argv = [f'--runner={runner}', '--flink_master=[local]']
    assert pipeline_options(argv).view_as(FlinkRunnerOptions).flink_job_server_jar == flink_jar
    assert launcher.pipeline_options([], argv).view_as(FlinkRunnerOptions).flink_job_server_jar == flink_jar
  # Another Flink version than the one fetched: Beam's own download, not a mismatched jar.
  other = next(v for v in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS if v != flink.DEFAULT_FLINK_VERSION)
  if not flink.local_jar(other):
    assert pipeline_options(['--runner=FlinkRunner', f'--flink_version={other}']) \
        .view_as(FlinkRunnerOptions).flink_job_server_jar is None


# -- batch detection on an embedded Flink cluster gives the FnApiRunner's findings ----------------
def test_flink_run_gives_the_fnapi_findings(flink_jar, fnapi_batch, sample, model_dir, tmp_path):
  expected, expected_counters = fnapi_batch
  assert len(expected) >= len(sample['labels'])
  rows, counters = _detect(sample, model_dir, tmp_path / 'findings.jsonl', *FLINK)
  assert [(r['finding_id'], r['score'], r['severity']) for r in rows] == \
      [(r['finding_id'], r['score'], r['severity']) for r in expected]
  assert rows == expected  # every field: reasons, windows, inventory context
  # Beam metrics come back from Flink's accumulators through the Job API.
  assert counters['records_read'] == sample['counts']['live_events']
  for name in ('records_read', 'events_parsed', 'identity_windows', 'windows_scored', 'findings'):
    assert counters[name] == expected_counters[name], name


# -- streaming on Flink, checkpointing on -----------------------------------------------------------
def test_flink_streaming_replay_gives_the_batch_findings(flink_jar, fnapi_batch, sample, model_dir,
                                                        tmp_path):
  """The file replay (TestStream: Flink's portable streaming translator runs it) with checkpoints."""
  rows, _ = _detect_sorted(sample, model_dir, tmp_path, '--streaming', *FLINK,
                           '--checkpointing_interval=1000')
  _assert_attacks_on_top(rows, sample)
  key = lambda f: (f['finding_id'], f['score'], f['windows'], f['event_count'])
  assert sorted(map(key, rows)) == sorted(map(key, fnapi_batch[0]))
