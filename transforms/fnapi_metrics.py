"""A fix for reading metrics of long-running jobs on the FnApiRunner.

Used by every source whose stage runs many bundles (the folder watch, the file replay,
the Pub/Sub splittable reader).
"""
from __future__ import annotations


def install_fnapi_metrics_fix() -> None:
  """The FnApiRunner keeps each stage's metrics as a lazy ``consolidate`` generator wrapping the
  previous one (``fn_runner.py``: ``consolidate_monitoring_infos(chain(new, old))``), so a job
  whose stage runs ~1,000 bundles -- a watch polling for a few minutes -- ends in
  ``RecursionError`` when its metrics are read. Materialising each step keeps the depth at one.
  Affects the FnApiRunner only (Prism, Flink and Dataflow aggregate metrics themselves)."""
  from apache_beam.metrics import monitoring_infos
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  if getattr(fn_runner.consolidate_monitoring_infos, 'postauth_fix', False):
    return

  def consolidate(metrics, key=monitoring_infos.to_key):
    return list(monitoring_infos.consolidate(metrics, key))

  consolidate.postauth_fix = True
  fn_runner.consolidate_monitoring_infos = consolidate
