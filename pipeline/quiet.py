"""Imports Apache Beam without its "apitools not found" warning.

Why: ``import apache_beam`` imports Beam's BigQuery IO, whose client package logs
``WARNING:root:apitools not found, and bigquery client libraries are not available``
when ``apache-beam[gcp]`` is not installed. postauth needs the GCP extra only for
BigQuery (inventory or sink); every other user saw that line on every command.
The record is dropped by a filter on the root logger (nothing else is), and the
import does not leave Python's default ``WARNING:root:`` handler behind (which
``logging.warning`` installs when no handler exists yet), so the CLI's own logging
format still applies. A BigQuery sink or inventory without the extra still fails
with Beam's own error when it is used.

Import this module before ``apache_beam`` (``pipeline/cli.py`` and
``pipeline/launcher.py`` do, first thing).
"""
from __future__ import annotations

import logging
import sys

APITOOLS_WARNING = 'apitools not found'


def drop_apitools_warning(record: logging.LogRecord) -> bool:
  """False for Beam's import-time apitools warning, True for every other record."""
  return not str(record.msg).startswith(APITOOLS_WARNING)


def import_beam_quietly() -> None:
  root = logging.getLogger()
  if drop_apitools_warning not in root.filters:
    root.addFilter(drop_apitools_warning)
  if 'apache_beam' in sys.modules:
    return
  # With no handler, logging.warning() would call basicConfig() and fix the root format
  # before the CLI configures it; a temporary stderr handler keeps other import-time
  # warnings visible and is removed afterwards.
  placeholder = None
  if not root.handlers:
    placeholder = logging.StreamHandler()
    placeholder.setFormatter(logging.Formatter('%(levelname)s %(name)s: %(message)s'))
    root.addHandler(placeholder)
  try:
    import apache_beam  # noqa: F401
  finally:
    if placeholder is not None:
      root.removeHandler(placeholder)


import_beam_quietly()
