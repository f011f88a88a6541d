"""Beam's Flink job server jar, as `make flink` fetches it from Maven Central.

``--runner=FlinkRunner`` without ``--flink_job_server_jar`` makes Beam download
``org.apache.beam:beam-runners-flink-<flink>-job-server:<beam>`` itself on first use. `make flink`
fetches the same jar for the pinned apache-beam version with Maven into
``.flink/v<beam>/`` beside this package; when it is there and no jar was given, the pipeline
options point Beam at it. When Maven Central answers that it does not have the jar, `make flink`
writes what it asked for and the answer to ``.flink/v<beam>/refused-<flink>.txt``.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, StandardOptions
from apache_beam.version import __version__ as BEAM_VERSION

_LOG = logging.getLogger('postauth')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Beam's default Flink version for this SDK (the last of FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS);
# `make flink FLINK_VERSION=1.20` fetches another one.
DEFAULT_FLINK_VERSION = FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS[-1]


def folder() -> str:
  return os.path.join(PROJECT_ROOT, '.flink', f'v{BEAM_VERSION}')


def coordinates(flink_version: str = DEFAULT_FLINK_VERSION) -> str:
  return f'org.apache.beam:beam-runners-flink-{flink_version}-job-server:{BEAM_VERSION}'


def jar_path(flink_version: str = DEFAULT_FLINK_VERSION) -> str:
  """Where `make flink` puts the job server jar for the installed apache-beam version."""
  return os.path.join(folder(), f'beam-runners-flink-{flink_version}-job-server-{BEAM_VERSION}.jar')


def refusal_path(flink_version: str = DEFAULT_FLINK_VERSION) -> str:
  """The record `make flink` leaves when Maven Central answered that it has no such jar."""
  return os.path.join(folder(), f'refused-{flink_version}.txt')


def local_jar(flink_version: str = DEFAULT_FLINK_VERSION) -> Optional[str]:
  path = jar_path(flink_version)
  return path if os.path.isfile(path) and os.path.getsize(path) > 0 else None


def use_local_flink(options: PipelineOptions) -> Optional[str]:
  """Sets ``flink_job_server_jar`` to the project's jar for ``--runner=FlinkRunner``.

  Only when no jar was given and `make flink` fetched the jar for ``--flink_version``.
  Returns the jar used, if any.
  """
  runner = options.view_as(StandardOptions).runner
  name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ''
  if name.rsplit('.', 1)[-1] != 'FlinkRunner':
    return None
  flink = options.view_as(FlinkRunnerOptions)
  if flink.flink_job_server_jar:
    return None
  path = local_jar(flink.flink_version or DEFAULT_FLINK_VERSION)
  if path:
    flink.flink_job_server_jar = path
    _LOG.info('FlinkRunner: job server from %s (fetched by `make flink`)', path)
  return path
