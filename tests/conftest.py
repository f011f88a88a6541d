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
