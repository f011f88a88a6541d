"""Beam's Prism runner from the binary `make prism` builds.

Since Beam 2.68 the DirectRunner first tries Prism, and ``--runner=PrismRunner`` asks for it;
without ``--prism_location`` Beam downloads a release zip from GitHub. `make prism` builds the
same runner from source for the pinned apache-beam version, with the project's patches
(``tools/prism/``: a busy loop at each bundle's end), into ``.prism/v<version>/prism`` beside
this package; when that binary exists and no ``--prism_location`` was given, the pipeline
options point Beam at it.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, PrismRunnerOptions, StandardOptions
from apache_beam.version import __version__ as BEAM_VERSION

_LOG = logging.getLogger('postauth')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runners that start Prism: PrismRunner itself, and the DirectRunner's first attempt.
PRISM_RUNNERS = ('PrismRunner', 'DirectRunner')


def binary_path() -> str:
  """Where `make prism` puts the binary for the installed apache-beam version."""
  return os.path.join(PROJECT_ROOT, '.prism', f'v{BEAM_VERSION}', 'prism')


def local_binary() -> Optional[str]:
  path = binary_path()
  return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


# Prism may split a slow bundle of a stateful stage between its timers; the timers in the
# residual lose their watermark hold, and their output (a window's history, a finding's next
# version) then reaches later steps behind the watermark, so a run sometimes lacks a window
# (apache/beam#35771, open in 2.77). This experiment turns Prism's runner-initiated splits off;
# the project's splittable DoFns checkpoint themselves and do not need them.
NO_RUNNER_SPLITS = 'prism_disable_sdf_split'


def _runner_name(options: PipelineOptions) -> str:
  runner = options.view_as(StandardOptions).runner
  name = runner if isinstance(runner, str) else type(runner).__name__ if runner else 'DirectRunner'
  return name.rsplit('.', 1)[-1]


def without_timer_splits(options: PipelineOptions) -> bool:
  """Adds ``NO_RUNNER_SPLITS`` to the experiments of a Prism-starting runner (a downloaded
  Prism as well as the project's); returns whether it did."""
  if _runner_name(options) not in PRISM_RUNNERS:
    return False
  debug = options.view_as(DebugOptions)
  if NO_RUNNER_SPLITS not in (debug.experiments or []):
    debug.add_experiment(NO_RUNNER_SPLITS)
  return True


def use_local_prism(options: PipelineOptions) -> Optional[str]:
  """Sets ``prism_location`` to the project's binary for a Prism-starting runner.

  Only when the runner is PrismRunner or DirectRunner (by name or class path), no
  ``--prism_location`` was given, and the binary exists. Returns the binary used, if any.
  """
  name = _runner_name(options)
  if name not in PRISM_RUNNERS:
    return None
  prism = options.view_as(PrismRunnerOptions)
  if prism.prism_location:
    return None
  path = local_binary()
  if path:
    prism.prism_location = path
    _LOG.info('%s: Prism runs from %s (built by `make prism`)%s', name, path,
              '' if name == 'PrismRunner' else ' where the DirectRunner picks Prism')
  return path


def lands_on_bundle_runner(options: PipelineOptions) -> bool:
  """Whether a streaming job will run on the Python BundleBasedDirectRunner: asked for by name,
  or the DirectRunner with neither ``--prism_location`` nor the project's binary (offline, its
  Prism download fails and it falls back; online it would download Prism, but a graph built
  for Prism cannot fall back, so the file replay takes the path that runs on both)."""
  name = _runner_name(options)
  if name == 'BundleBasedDirectRunner':
    return True
  if name != 'DirectRunner':
    return False
  return not (options.view_as(PrismRunnerOptions).prism_location or local_binary())
