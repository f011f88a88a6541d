"""The pipeline through Beam's portable path, and the template launcher's detached launch.

The portable tests start Beam's Python local job service in a subprocess and submit with
``PortableRunner --environment_type=LOOPBACK``: the pipeline is serialised to the Runner
API, sent over the Job API and executed through the Fn API, as on Flink and Dataflow. Every
result is compared with the FnApiRunner's on the same input.
"""
from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from postauth.pipeline import launcher
from postauth.pipeline.jobs import run, train


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def job_endpoint(tmp_path_factory):
  """Beam's Python local job service on a free port, stopped when the module ends."""
  port = _free_port()
  log = tmp_path_factory.mktemp('job_service') / 'job_service.log'
  with open(log, 'wb') as out:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'apache_beam.runners.portability.local_job_service_main',
         '--port', str(port)], stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 60
    while True:
      if proc.poll() is not None:
        pytest.fail(f'job service exited with {proc.returncode}: {log.read_text()[-2000:]}')
      try:
        socket.create_connection(('localhost', port), timeout=1).close()
        break
      except OSError:
        if time.time() > deadline:
          pytest.fail(f'job service not listening on {port} after 60 s: {log.read_text()[-2000:]}')
        time.sleep(0.2)
    yield f'localhost:{port}'
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _portable(endpoint: str):
  return ['--runner=PortableRunner', f'--job_endpoint={endpoint}', '--environment_type=LOOPBACK']


def _detect(sample, model_dir, findings, *extra):
  out = run([f'--events={sample["dir"]}/live/*', f'--inventory={sample["inventory"]}',
             f'--model-dir={model_dir}', f'--findings={findings}', *extra])
  return _rows(findings), out['counters']


def _rows(path):
  with open(path) as f:
    return sorted((json.loads(line) for line in f if line.strip()), key=lambda r: r['finding_id'])


@pytest.fixture(scope='module')
def fnapi_batch(sample, model_dir, tmp_path_factory):
  findings = tmp_path_factory.mktemp('fnapi') / 'findings.jsonl'
  return _detect(sample, model_dir, findings, '--runner=FnApiRunner')


def test_portable_run_gives_the_fnapi_findings(fnapi_batch, sample, model_dir, job_endpoint, tmp_path):
  expected, expected_counters = fnapi_batch
  assert len(expected) >= len(sample['labels'])
  rows, counters = _detect(sample, model_dir, tmp_path / 'findings.jsonl', *_portable(job_endpoint))
  assert [(r['finding_id'], r['score']) for r in rows] == \
      [(r['finding_id'], r['score']) for r in expected]
  assert rows == expected  # every field: severity, reasons, windows, inventory context
  # Beam metrics come back through the Job API too.
  assert counters['records_read'] == sample['counts']['live_events']
  for name in ('records_read', 'events_parsed', 'identity_windows', 'windows_scored', 'findings'):
    assert counters[name] == expected_counters[name], name


def _manifest(model, version=None):
  version = version or (model / 'LATEST').read_text().strip()
  return version, json.loads((model / version / 'manifest.json').read_text())


def assert_same_model(out, model, model_dir):
  """``train``'s result ``out`` and the version it wrote to ``model`` are the one in ``model_dir``."""
  from postauth.models.model import DetectionModel
  version, manifest = _manifest(pathlib.Path(model))
  expected_version, expected = _manifest(pathlib.Path(model_dir))
  # The version embeds a SHA-256 of the (sorted) training matrix and the config.
  assert out['version'] == version == expected_version
  assert manifest['cohort_windows'] == expected['cohort_windows']
  assert manifest['counts'] == expected['counts']
  # Calibrations come from the forests' scores on the training windows: equal forests.
  for name in ('calibration.json', 'profiles.json.gz'):
    assert manifest['files'][name] == expected['files'][name], name
  assert out['counters']['training_windows'] == expected['counts']['training_windows']
  DetectionModel.load(str(model))  # the artifact verifies and loads


def test_portable_training_gives_the_fnapi_model(sample, model_dir, job_endpoint, tmp_path):
  model = tmp_path / 'model'
  out = train([f'--events={sample["dir"]}/history/*', f'--inventory={sample["inventory"]}',
               f'--model-dir={model}', *_portable(job_endpoint)])
  assert_same_model(out, model, model_dir)


def test_detached_launch_builds_the_cli_pipeline(fnapi_batch, sample, model_dir, tmp_path):
  """What the Flex Template's main does: template-style names, --template_location, no wait."""
  findings = tmp_path / 'findings.jsonl'
  code = launcher.main(['--command=run', f'--events={sample["dir"]}/live/*',
                        f'--inventory={sample["inventory"]}', f'--model_dir={model_dir}',
                        f'--findings={findings}', '--runner=FnApiRunner',
                        f'--template_location={tmp_path}/job_object'])
  assert code == 0
  assert _rows(findings) == fnapi_batch[0]


def test_detached_command_runs_a_whole_postauth_command_on_a_worker(fnapi_batch, sample, model_dir,
                                                                   tmp_path):
  findings = tmp_path / 'findings.jsonl'
  argv = [f'--events={sample["dir"]}/live/*', f'--inventory={sample["inventory"]}',
          f'--model-dir={model_dir}', f'--findings={findings}']
  with beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner'])) as p:
    _ = p | beam.Create([argv]) | beam.ParDo(launcher.RunCommandFn('run'))
  assert _rows(findings) == fnapi_batch[0]


def test_detached_command_fails_the_job_when_the_command_fails(sample, tmp_path):
  argv = [f'--events={sample["dir"]}/live/*']  # no --inventory/--model-dir/--findings: exit 2
  with pytest.raises(Exception, match='postauth run exited with 2'):
    with beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner'])) as p:
      _ = p | beam.Create([argv]) | beam.ParDo(launcher.RunCommandFn('run'))
