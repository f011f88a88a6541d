"""`postauth retrain`: train a candidate on recent history, compare it with the live model, gate.

One batch Beam job reads the history once:

    events -> keep the last (days + holdout_days) days -> per-identity windows
      -> training windows:  [holdout_start - days, holdout_start)  -> TrainModel -> candidate version
      -> held-back windows: [holdout_start, end)                   -> inventory -> batches
           -> score with the candidate and with the current (LATEST) model -> counts

``end`` is the UTC midnight after the newest event, ``holdout_start`` is
``end - holdout_days``. Windows that straddle a boundary belong to neither
side. The candidate's first ``warmup_days`` (TrainConfig) only build profiles.
Each model scores the held-back windows against its own identity profiles and
calibration, as `postauth run` would.

The gate (``gate``), on the held-back slice:

- clean windows: held-back identity-windows that overlap no labelled case of
  their identity (all of them when no labels are given);
- alert rate: 1,000 x (clean windows scoring >= --threshold) / clean windows;
- recall: share of labelled cases inside the held-back slice that at least one
  window of that identity overlapping the case scores >= --threshold.

The candidate is promoted iff the slice has at least one clean window and,
when there is a current model,

    alert_rate(candidate) <= alert_rate(current) x (1 + max_alert_increase) + alert_slack
    recall(candidate) >= recall(current)      (only when labelled cases fall in the slice)

With ``--force`` it is promoted anyway (recorded as forced). A candidate
identical to the current version (same data and config give the same version)
is left as is. The comparison is printed as JSON and written to
``<candidate>/comparison.json`` (a record of the decision; loading a model does
not read it, so it is not in the manifest). Then versions beyond ``--keep`` are
pruned. Exit code: 0 promoted or unchanged, 3 refused by the gate, 2 errors.

The comparison is only fair when the current model did not train on the
held-back days; ``current_may_have_seen_holdout`` says when its training window
reaches into them (e.g. a model trained by hand on all history; a window ending
after the slice starts may or may not hold held-back events), in which case its
profiles may already know that slice.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from typing import Dict, List

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.models import artifact, registry
from postauth.models.model import DetectionModel
from postauth.models.train_config import TrainConfig
from postauth.pipeline.holdout import COMPARISON, build_retrain, gate, iso, read_labels
from postauth.pipeline.options import (DetectOptions, EventOptions, OptionsError, RetrainOptions,
                                       TrainOptions, WindowOptions, validate_limits,
                                       validate_window)

EXIT_REFUSED = 3
_log = logging.getLogger('postauth.retrain')


# -- the driver -------------------------------------------------------------------
def validate(options: PipelineOptions) -> None:
  e, d, r = (options.view_as(EventOptions), options.view_as(DetectOptions),
             options.view_as(RetrainOptions))
  missing = [flag for flag, value in (('--events', e.events), ('--inventory', d.inventory),
                                      ('--model-dir', d.model_dir)) if not value]
  if missing:
    raise OptionsError('postauth retrain needs ' + ', '.join(missing))
  if options.view_as(StandardOptions).streaming:
    raise OptionsError('postauth retrain is a batch job: drop --streaming')
  for flag, value in (('--days', r.days), ('--holdout-days', r.holdout_days), ('--keep', r.keep)):
    if value < 1:
      raise OptionsError(f'{flag} must be >= 1')
  if r.max_alert_increase < 0 or r.alert_slack < 0:
    raise OptionsError('--max-alert-increase and --alert-slack must be >= 0')
  validate_window(options)
  validate_limits(options)


def translate_labels_flag(argv: List[str]) -> List[str]:
  """`--labels FILE` -> `--labels-file=FILE`, so Beam never reads it as Dataflow job labels."""
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a == '--labels' and i + 1 < len(argv):
      out.append(f'--labels-file={argv[i + 1]}')
      i += 2
      continue
    out.append('--labels-file=' + a[len('--labels='):] if a.startswith('--labels=') else a)
    i += 1
  return out


def retrain(argv: List[str], run_pipeline) -> Dict:
  """Trains, evaluates, gates, promotes and prunes; returns the comparison (also written to disk)."""
  from postauth.pipeline.jobs import pipeline_options
  started = time.time()
  options = pipeline_options(translate_labels_flag(argv))
  validate(options)
  from postauth.pipeline.preflight import check_train
  check_train(options, options.view_as(DetectOptions).inventory)  # unreadable inputs: exit 2
  det, rt = options.view_as(DetectOptions), options.view_as(RetrainOptions)
  model_dir = det.model_dir
  TrainConfig.from_file(options.view_as(TrainOptions).train_config)  # fail before the job
  labels = read_labels(rt.labels_file)
  current = registry.current(model_dir)
  current_error = None
  current_manifest = None
  if current:
    try:
      current_manifest = DetectionModel.load(model_dir, current).manifest
    except artifact.ArtifactError as e:
      if not rt.force:
        raise
      current_error, current = str(e), None
      _log.warning('current model unusable (%s); --force: comparing against nothing', e)
  _log.info('[1/3] training a candidate and scoring the held-back slice with it and with %s',
            current or 'no current model')
  evaluation_path = FileSystems.join(model_dir, '.retrain', f'evaluation-{uuid.uuid4().hex[:12]}.json')
  result = run_pipeline(lambda p: build_retrain(p, options, current, labels, evaluation_path), options)
  try:
    evaluation = json.loads(artifact._read(evaluation_path))
  finally:
    if FileSystems.exists(evaluation_path):
      FileSystems.delete([evaluation_path])
  t_job = time.time() - started
  candidate = evaluation['candidate']
  cand, cur = evaluation['models']['candidate'], evaluation['models'].get('current')
  _log.info('[2/3] candidate %s: %s clean held-back windows, alert rate %s/1000, recall %s; '
            'current %s: alert rate %s/1000, recall %s (%.1fs)', candidate, cand['clean_windows'],
            cand['alert_rate_per_1000'], cand['recall'], current,
            cur and cur['alert_rate_per_1000'], cur and cur['recall'], t_job)
  labelled = evaluation['labels_in_holdout'] > 0
  passed, checks = gate(cand, cur, labelled, rt.max_alert_increase, rt.alert_slack)
  if candidate == current:
    decision = 'unchanged'
  elif passed:
    decision = 'promoted'
  elif rt.force:
    decision = 'promoted (forced)'
  else:
    decision = 'refused'
  current_window = (current_manifest or {}).get('training_window')
  comparison = {
      'decision': decision,
      'gate_passed': passed,
      'checks': checks,
      'candidate': candidate,
      'current': current,
      'current_error': current_error,
      'current_may_have_seen_holdout': bool(current_window and current_window[1] > evaluation['bounds']['holdout_start']),
      'threshold': det.threshold,
      'slices': {'train': [evaluation['bounds']['train_start'], evaluation['bounds']['holdout_start']],
                 'holdout': [evaluation['bounds']['holdout_start'], evaluation['bounds']['end']]},
      'labels_in_holdout': evaluation['labels_in_holdout'],
      'labels_outside_holdout': evaluation['labels_outside_holdout'],
      'models': evaluation['models'],
      'gate': {'max_alert_increase': rt.max_alert_increase, 'alert_slack': rt.alert_slack},
      'time': iso(time.time()),
      'seconds': {'job': round(t_job, 1)},
  }
  if decision.startswith('promoted'):
    registry.promote(model_dir, candidate, reason=f'retrain: {decision}',
                     details={'checks': checks, 'previous': current})
  comparison['pruned'] = registry.prune(model_dir, rt.keep)
  comparison['live'] = registry.current(model_dir)
  comparison['seconds']['total'] = round(time.time() - started, 1)
  with FileSystems.create(FileSystems.join(model_dir, candidate, COMPARISON),
                          compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(json.dumps(comparison, indent=1, sort_keys=True).encode())
  _log.info('[3/3] %s %s; live model %s; pruned %d versions (%.1fs)', decision, candidate,
            comparison['live'], len(comparison['pruned']), comparison['seconds']['total'])
  comparison['counters'] = _counters(result)
  return comparison


def _counters(result) -> Dict[str, int]:
  from postauth.pipeline import summary
  try:
    return summary.counters(result)
  except Exception:  # counters are a report, never a reason to fail the command
    return {}


def help_text() -> str:
  parser = argparse.ArgumentParser(
      prog='postauth retrain', add_help=False,
      description='Train a candidate on the last --days of history before the held-back '
                  '--holdout-days, score the held-back slice with it and with the current LATEST, '
                  'promote only if it is not worse (see pipeline/retrain.py for the exact gate), '
                  'keep the last --keep versions. Prints the comparison as JSON. Exit 0: promoted '
                  'or unchanged; 3: refused by the gate; 2: error. Any Beam pipeline option is '
                  'accepted as well.')
  for cls in (EventOptions, WindowOptions, TrainOptions, RetrainOptions):
    if cls is TrainOptions:
      group = parser.add_argument_group('training')
      group.add_argument('--train-config', help='JSON file of hyperparameters (docs/models.md: Training configuration).')
      group.add_argument('--inventory', help='Identity inventory CSV.')
      group.add_argument('--model-dir', help='Model directory (versions, LATEST, HISTORY.jsonl).')
      group.add_argument('--threshold', help='Calibrated score at which a window alerts (default 3.0).')
      continue
    cls._add_argparse_args(parser.add_argument_group(cls.__name__))
  return parser.format_help()
