"""The jobs as library calls: flags -> options -> build -> run -> counters.

``postauth train`` and ``postauth run`` are these two functions plus printing; the
evaluation, retraining, parse job, benchmarks and tests call them directly, so no
module needs the command line (``pipeline/cli.py``) to run a job.
"""
from __future__ import annotations

import os
from typing import List, Optional

from postauth.pipeline import quiet  # noqa: F401  (first: imports Beam without its apitools warning)

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import create_runner

from postauth.pipeline import options as opts
from postauth.pipeline import preflight, stop, summary
from postauth.pipeline.bundle_ends import shorten_bundle_ends
from postauth.pipeline.dofn_specs import introspect_dofns_once
from postauth.transforms import outputs, sink_records, sink_uris
from postauth.transforms.sinks import compact_parts


def pipeline_options(argv: List[str]) -> PipelineOptions:
  opts.refuse_bad_arguments(argv)
  options = opts.JobOptions(argv)
  std = options.view_as(StandardOptions)
  if not std.runner:
    std.runner = 'DirectRunner'
  from postauth.pipeline.prism import use_local_prism, without_timer_splits
  use_local_prism(options)  # PrismRunner / DirectRunner: the binary `make prism` built, if any
  without_timer_splits(options)
  from postauth.pipeline.flink import use_local_flink
  use_local_flink(options)  # FlinkRunner: the job server jar `make flink` fetched, if any
  if isinstance(std.runner, str):  # refused here, not as a traceback from beam.Pipeline
    try:
      create_runner(std.runner)
    except (ValueError, ImportError, AttributeError) as e:
      raise opts.OptionsError(f'--runner {std.runner}: {str(e).splitlines()[0]}') from None
  return options


def run_pipeline(build, options: PipelineOptions):
  """Builds, runs and waits; SIGINT/SIGTERM cancel the job and raise ``stop.Interrupted``."""
  shorten_bundle_ends()  # the SDK workers this process hosts (FnApiRunner, Prism's LOOPBACK)
  introspect_dofns_once()  # here and in those workers
  p = beam.Pipeline(options=options)
  build(p)
  result = None
  try:
    with stop.stop_on_signals() as watch:
      result = p.run()  # the FnApiRunner runs the whole job here, the others submit it
      watch.reclaim()
      result.wait_until_finish()
  except stop.Interrupted as e:
    e.result = result
    e.detail = stop.cancel(result)
    raise
  return result


def train(argv: List[str]) -> dict:
  from postauth.pipeline.train import build_training
  options = pipeline_options(argv)
  det = options.view_as(opts.DetectOptions)
  preflight.validate_train(options, det.model_dir, det.inventory)
  preflight.check_train(options, det.inventory)
  result = run_pipeline(lambda p: build_training(p, options, det.inventory, det.model_dir), options)
  from postauth.models.artifact import resolve_version
  return {'version': resolve_version(det.model_dir) if options.view_as(opts.TrainOptions).promote else None,
          'counters': summary.counters(result)}


def run(argv: List[str]) -> dict:
  from postauth.pipeline.detect import build_detection
  from postauth.transforms.sink_uris import suppressed_path
  options = pipeline_options(argv)
  preflight.validate_run(options)
  det = options.view_as(opts.DetectOptions)
  # Fail before submitting if an input is unreadable or the model does not verify.
  preflight.check_run(options)
  streaming = options.view_as(StandardOptions).streaming
  dead_letters = sink_uris.dead_letter_spec(options)
  ps = options.view_as(opts.PubSubSourceOptions)
  # A replay or folder watch into local files: compact the parts when it ends. Nothing an
  # earlier run wrote is deleted (a replay sets its parts aside; a watch joins them).
  files_to_local = (streaming and not (ps.subscription or ps.topic)
                    and '://' not in suppressed_path(options))
  if streaming:
    outputs.prepare_file_sinks(options)
  interrupted = None
  try:
    result = run_pipeline(lambda p: build_detection(p, options), options)
  except stop.Interrupted as e:  # compact and count what the sinks got, then report the stop
    interrupted, result = e, e.result
  if streaming:
    outputs.finish_file_sinks(options)
    if files_to_local:
      compact_parts(suppressed_path(options), key='finding_id')
  counters = _counters(result)
  if streaming:
    # The streaming DirectRunner commits counters of its first bundle only (checked with a
    # bare TestStream + counter pipeline on Beam 2.77): report what the sinks received instead.
    files = [s for s in sink_uris.sink_specs(options) if outputs.count_records(s) is not None]
    counters = {'findings': outputs.count_records(files[0])} if files else {}
    if outputs.count_records(dead_letters) is not None:
      counters['dead_lettered'] = outputs.count_records(dead_letters)
    if os.path.exists(suppressed_path(options)):
      counters['findings_suppressed'] = _count_lines(suppressed_path(options))
  first_file = next((s for s in sink_uris.sink_specs(options) if s.kind in ('jsonl', 'avro')), None)
  written = _written_findings(first_file)
  counters.update(summary.findings_accounting(counters, written, streaming))
  if interrupted is not None:
    processed = summary.render_counters(counters) or 'nothing counted yet'
    interrupted.detail = (f'{interrupted.detail}; {processed}; partial output in '
                          f'{first_file.target if first_file else "the sinks"}')
    raise interrupted
  # The findings file as read for the accounting (sorted by score), so a caller need not read it again.
  as_read = (written if first_file is not None and first_file.kind == 'jsonl' and first_file.target == det.findings
             else None)
  return {'findings': det.findings, 'dead_letters': dead_letters.target,
          'suppressed': suppressed_path(options), 'counters': counters, 'findings_read': as_read}


def _counters(result) -> dict:
  if result is None:
    return {}
  try:
    return summary.counters(result)
  except Exception:  # a cancelled job's metrics may be gone with it
    return {}


def _written_findings(spec) -> Optional[List[dict]]:
  """The findings a local file sink holds (None for other sinks or no file)."""
  if spec is None or '://' in spec.target or not os.path.exists(spec.target):
    return None
  try:
    if spec.kind == 'avro':
      rows = [sink_records.finding_from_avro(r) for r in outputs.read_avro(spec.target)]
    else:
      rows = summary.read_findings(spec.target)
  except (KeyError, ValueError):  # a sink format without postauth's finding fields
    return None
  return rows if all('finding_id' in r for r in rows) else None


def _count_lines(path: str) -> int:
  with open(path) as f:
    return sum(1 for line in f if line.strip())
