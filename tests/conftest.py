"""Shared fixtures: a small generated sample and a model trained on it, built once per session."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')

def missing_tool(message: str, provided_by: str = 'make test builds it first') -> None:
  """A tool the tests need is absent: skip with how to get it, but fail under CI=true, where
  ``make test`` provides every tool before the tests run."""
  if os.environ.get('CI', '').lower() == 'true':
    pytest.fail(f'{message} (CI=true: {provided_by})')
  pytest.skip(message)


@pytest.fixture(scope='session')
def prism_binary():
  """The Prism binary `make prism` builds (pipeline/prism.py finds it); skips without it, fails
  under CI=true."""
  from postauth.pipeline import prism
  path = prism.local_binary()
  if path is None:
    missing_tool(f'no Prism binary at {prism.binary_path()}: run `make prism` (it builds Beam\'s '
                 'Prism from the Go module source for the pinned apache-beam version, patched)')
  return path



@pytest.fixture(autouse=True, scope='session')
def _project_prism_for_plain_pipelines():
  """A test's plain ``beam.Pipeline()`` (the DirectRunner, which tries Prism first) runs Prism
  from the project's binary, as postauth's own jobs do (``pipeline/prism.py``).

  Why: Beam keeps one Prism job server per process, made with the options of the first
  pipeline that starts one. Without a location, offline, that first server points at Beam's
  download and its pipeline falls back to another runner; every later pipeline naming the
  binary with ``--prism_location`` then got that server and failed, so a test passed or failed
  by which tests ran before it in the same process."""
  from apache_beam.runners.portability import prism_runner
  from postauth.pipeline.prism import local_binary
  binary = local_binary()
  if binary is None:
    yield
    return
  original = prism_runner.PrismJobServer.__init__

  def init(self, options):
    original(self, options)
    self._path = self._path or binary

  prism_runner.PrismJobServer.__init__ = init
  try:
    yield
  finally:
    prism_runner.PrismJobServer.__init__ = original


def streaming_options():
  """PipelineOptions of a streaming job (TestStream pipelines)."""
  from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
  o = PipelineOptions()
  o.view_as(StandardOptions).streaming = True
  return o


def terminate(proc, grace: float = 20.0) -> None:
  """Stops a job started as a subprocess: SIGTERM, then SIGKILL after ``grace`` seconds."""
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(grace)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def require_compiled_modules() -> None:
  """Skips where `make compiled` built no C extension in this tree (fails under CI=true)."""
  from postauth.pipeline import compiled
  if not compiled.extensions():
    missing_tool('no compiled modules in this tree', provided_by='`make compiled` builds them')


def shared_data(*parts: str) -> str:
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f'real sample {path} is absent (../shared/data is provided beside the project)')
  return path


@pytest.fixture(scope='session')
def sample(tmp_path_factory):
  from postauth.pipeline.generate import generate
  out = str(tmp_path_factory.mktemp('sample'))
  counts = generate(out, identities=60, days=4, seed=11)
  with open(os.path.join(out, 'labels.json')) as f:
    labels = json.load(f)
  with open(os.path.join(out, 'benign.json')) as f:
    benign = json.load(f)
  return {'dir': out, 'counts': counts, 'labels': labels, 'benign': benign,
          'inventory': os.path.join(out, 'inventory.csv')}


@pytest.fixture(scope='session')
def model_dir(sample, tmp_path_factory):
  from postauth.pipeline.jobs import train
  model = str(tmp_path_factory.mktemp('model'))
  out = train([f'--events={sample["dir"]}/history/*', f'--inventory={sample["inventory"]}',
               f'--model-dir={model}', '--runner=FnApiRunner'])
  assert out['version']
  return model


def pytest_configure(config):
  """A module edited after `make compiled` would be tested as its old compiled copy: refuse."""
  from postauth.pipeline import compiled
  stale = compiled.stale()
  if stale:
    pytest.exit(compiled.stale_message(stale), returncode=2)
