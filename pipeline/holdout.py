"""The held-back comparison behind `postauth retrain`: slices, evaluation, the gate.

The retrain job's history splits at ``holdout_start`` into training windows and
held-back windows (``slice_bounds``, ``_SplitWindows``); the held-back windows are
scored in batches by the candidate and by the current model (``EvaluateBatch``),
merged into counts (``_MergeEvaluation``), summarised (``summarize``) and judged
(``gate``). ``pipeline/retrain.py`` is the driver and documents the rule.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

from postauth.models.model import DetectionModel
from postauth.models.train_config import TrainConfig
from postauth.pipeline.options import (DetectOptions, EventOptions, OptionsError, RetrainOptions,
                                       TrainOptions, WindowOptions)
from postauth.pipeline.train import TrainModel
from postauth.transforms.inventory import EnrichWindows, ReadInventory, start_up_inventory
from postauth.transforms.parse import ParseFiles
from postauth.transforms.records import ReadLimits
from postauth.transforms.sinks import WriteJsonLines
from postauth.transforms.windowing import IdentityWindows

DAY = 86400
HOLDOUT = 'holdout'
COMPARISON = 'comparison.json'
_log = logging.getLogger('postauth.retrain')
SCORE_BINS = np.round(np.arange(0.0, 12.01, 0.1), 1)  # histogram edges of held-back scores


# -- labels -----------------------------------------------------------------------
def _time(value, where: str) -> float:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  try:
    t = datetime.datetime.fromisoformat(str(value).replace('Z', '+00:00'))
  except ValueError as e:
    raise OptionsError(f'{where}: not an ISO-8601 time or epoch seconds: {value!r}') from e
  return (t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)).timestamp()


def read_labels(path: Optional[str]) -> List[Dict]:
  """Labelled cases [{"identity", "start", "end", ...}] with times as epoch seconds."""
  if not path:
    return []
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      data = json.loads(f.read())
  except Exception as e:
    raise OptionsError(f'--labels {path}: {e}') from e
  if isinstance(data, dict):
    data = data.get('labels')
  if not isinstance(data, list):
    raise OptionsError(f'--labels {path}: expected a JSON list of {{"identity", "start", "end"}}')
  out = []
  for i, case in enumerate(data):
    where = f'--labels {path}[{i}]'
    if not isinstance(case, dict) or not all(case.get(k) not in (None, '') for k in ('identity', 'start', 'end')):
      raise OptionsError(f'{where}: needs "identity", "start" and "end"')
    start, end = _time(case['start'], where), _time(case['end'], where)
    if end < start:
      raise OptionsError(f'{where}: end before start')
    out.append({'identity': str(case['identity']), 'start': start, 'end': end,
                'name': str(case.get('scenario') or case.get('name') or i)})
  return out


def _overlaps(window_start: float, window_end: float, case: Dict) -> bool:
  return window_start <= case['end'] and case['start'] < window_end


# -- the slices -------------------------------------------------------------------
class _Newest(beam.CombineFn):
  def create_accumulator(self):
    return float('-inf')

  def add_input(self, acc, event):
    return max(acc, event.event_time)

  def merge_accumulators(self, accs):
    return max(accs)

  def extract_output(self, acc):
    return acc


def slice_bounds(newest: float, days: int, holdout_days: int) -> Dict[str, float]:
  if not math.isfinite(newest):
    raise ValueError('no events in --events: nothing to retrain on')
  end = (math.floor(newest / DAY) + 1) * DAY
  holdout_start = end - holdout_days * DAY
  bounds = {'train_start': holdout_start - days * DAY, 'holdout_start': holdout_start, 'end': end}
  _log.info('newest event %s: training on %s .. %s, holding back %s .. %s', iso(newest),
            iso(bounds['train_start']), iso(holdout_start), iso(holdout_start), iso(end))
  return bounds


class _SplitWindows(beam.DoFn):
  """Windows -> training (main) or held-back (tagged); boundary-straddling windows are dropped."""

  def __init__(self):
    self.train = Metrics.counter('postauth', 'retrain_training_windows')
    self.holdout = Metrics.counter('postauth', 'retrain_holdout_windows')
    self.straddling = Metrics.counter('postauth', 'retrain_boundary_windows_dropped')

  def process(self, w, bounds):
    if w.window_start >= bounds['holdout_start']:
      self.holdout.inc()
      yield beam.pvalue.TaggedOutput(HOLDOUT, w)
    elif w.window_start >= bounds['train_start'] and w.window_end <= bounds['holdout_start']:
      self.train.inc()
      yield w
    else:
      self.straddling.inc()


# -- evaluation -------------------------------------------------------------------
def _empty_stats() -> Dict:
  return {'windows': 0, 'labelled_windows': 0, 'clean_windows': 0, 'clean_alerts': 0, 'alerts': 0,
          'label_max_score': {}, 'clean_histogram': [0] * len(SCORE_BINS), 'scored_by': {}}


def _merge_stats(a: Dict, b: Dict) -> Dict:
  out = _empty_stats()
  for k in ('windows', 'labelled_windows', 'clean_windows', 'clean_alerts', 'alerts'):
    out[k] = a[k] + b[k]
  out['clean_histogram'] = [x + y for x, y in zip(a['clean_histogram'], b['clean_histogram'])]
  for d in (a, b):
    for k, v in d['label_max_score'].items():
      out['label_max_score'][k] = max(out['label_max_score'].get(k, float('-inf')), v)
    for k, v in d['scored_by'].items():
      out['scored_by'][k] = out['scored_by'].get(k, 0) + v
  return out


class EvaluateBatch(beam.DoFn):
  """A batch of held-back (window, context) -> (model role, counts) for candidate and current.

  Both models score the same windows with their own profiles and the most
  specific cohort each has (``DetectionModel.cohort_for`` on the inventory
  context). The candidate's name arrives as a side input once it is saved, so
  it is loaded on first use, not in ``setup``.
  """

  def __init__(self, model_dir: str, current: Optional[str], threshold: float, labels: List[Dict]):
    self._model_dir = model_dir
    self._current = current
    self._threshold = threshold
    self._labels = labels

  def setup(self):
    self._models: Dict[str, DetectionModel] = {}
    self._by_identity: Dict[str, List[Tuple[int, Dict]]] = {}
    for i, case in enumerate(self._labels):
      self._by_identity.setdefault(case['identity'], []).append((i, case))

  def _model(self, version: str) -> DetectionModel:
    if version not in self._models:
      self._models[version] = DetectionModel.load(self._model_dir, version)
    return self._models[version]

  def process(self, batch, candidate: str):
    windows = [w for w, _ in batch]
    contexts = [c for _, c in batch]
    cases = [[i for i, case in self._by_identity.get(w.identity, ())
              if _overlaps(w.window_start, w.window_end, case)] for w in windows]
    for role, version in (('candidate', candidate), ('current', self._current)):
      if not version:
        continue
      model = self._model(version)
      scores, _, _ = model.score(windows, contexts)
      stats = _empty_stats()
      stats['windows'] = len(windows)
      for i, score in enumerate(scores.tolist()):
        cohort = model.cohort_for(contexts[i])
        stats['scored_by'][cohort] = stats['scored_by'].get(cohort, 0) + 1
        stats['alerts'] += score >= self._threshold
        if cases[i]:
          stats['labelled_windows'] += 1
          for j in cases[i]:
            key = str(j)
            stats['label_max_score'][key] = max(stats['label_max_score'].get(key, float('-inf')), score)
        else:
          stats['clean_windows'] += 1
          stats['clean_alerts'] += score >= self._threshold
          stats['clean_histogram'][int(np.searchsorted(SCORE_BINS, score, side='right')) - 1] += 1
      yield role, stats


class _MergeEvaluation(beam.CombineFn):
  def create_accumulator(self):
    return {}

  def add_input(self, acc, element):
    role, stats = element
    acc[role] = _merge_stats(acc.get(role, _empty_stats()), stats)
    return acc

  def merge_accumulators(self, accs):
    out = {}
    for acc in accs:
      for role, stats in acc.items():
        out[role] = _merge_stats(out.get(role, _empty_stats()), stats)
    return out

  def extract_output(self, acc):
    return acc


def summarize(stats: Dict, labels: List[Dict], in_holdout: Sequence[int], threshold: float) -> Dict:
  """Counts of one model on the held-back slice -> alert rate, recall, score quantiles."""
  clean = stats['clean_windows']
  hist = np.asarray(stats['clean_histogram'], dtype=float)
  cdf = np.cumsum(hist) / max(hist.sum(), 1)
  quantiles = {name: float(SCORE_BINS[min(int(np.searchsorted(cdf, q)), len(SCORE_BINS) - 1)])
               for name, q in (('p50', 0.5), ('p99', 0.99), ('p99.9', 0.999))} if clean else {}
  detected = [labels[i]['name'] for i in in_holdout
              if stats['label_max_score'].get(str(i), float('-inf')) >= threshold]
  missed = [labels[i]['name'] for i in in_holdout if labels[i]['name'] not in detected]
  return {
      'windows': stats['windows'],
      'clean_windows': clean,
      'labelled_windows': stats['labelled_windows'],
      'clean_alerts': stats['clean_alerts'],
      'alert_rate_per_1000': round(1000.0 * stats['clean_alerts'] / clean, 4) if clean else None,
      'recall': round(len(detected) / len(in_holdout), 4) if in_holdout else None,
      'labels_detected': detected,
      'labels_missed': missed,
      'label_scores': {labels[i]['name']: round(stats['label_max_score'][str(i)], 3)
                       for i in in_holdout if str(i) in stats['label_max_score']},
      'clean_score_quantiles_bin_0.1': quantiles,
      'scored_by': dict(sorted(stats['scored_by'].items())),
  }


def gate(candidate: Dict, current: Optional[Dict], labelled: bool, max_alert_increase: float,
         alert_slack: float) -> Tuple[bool, List[Dict]]:
  """(promote?, the checks with their values): the rule in the module docstring."""
  checks = [{'check': 'held-back slice has clean windows', 'candidate': candidate['clean_windows'],
             'passed': candidate['clean_windows'] > 0}]
  if current is None:
    checks.append({'check': 'no current model to compare with', 'passed': True})
  else:
    limit = None
    if current['alert_rate_per_1000'] is not None:
      limit = round(current['alert_rate_per_1000'] * (1 + max_alert_increase) + alert_slack, 4)
    rate = candidate['alert_rate_per_1000']
    checks.append({'check': 'alert rate per 1,000 clean held-back windows <= current x '
                            f'{1 + max_alert_increase:g} + {alert_slack:g}',
                   'candidate': rate, 'current': current['alert_rate_per_1000'], 'limit': limit,
                   'passed': rate is not None and limit is not None and rate <= limit})
    if labelled:
      checks.append({'check': 'recall of labelled held-back cases >= current',
                     'candidate': candidate['recall'], 'current': current['recall'],
                     'passed': candidate['recall'] >= current['recall']})
  return all(c['passed'] for c in checks), checks


class _WriteEvaluation(beam.DoFn):
  """The merged counts -> one JSON file the driver reads (workers cannot return values)."""

  def __init__(self, path: str, current: Optional[str], labels: List[Dict], threshold: float):
    self._path, self._current, self._labels, self._threshold = path, current, labels, threshold

  def process(self, merged, candidate: str, bounds: Dict):
    in_holdout = [i for i, case in enumerate(self._labels)
                  if case['start'] < bounds['end'] and case['end'] >= bounds['holdout_start']]
    out = {'candidate': candidate, 'current': self._current,
           'bounds': {k: iso(v) for k, v in bounds.items()},
           'labels_in_holdout': len(in_holdout),
           'labels_outside_holdout': len(self._labels) - len(in_holdout),
           'models': {role: summarize(merged.get(role, _empty_stats()), self._labels, in_holdout,
                                      self._threshold)
                      for role in ('candidate', 'current') if role == 'candidate' or self._current}}
    with FileSystems.create(self._path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      f.write(json.dumps(out, indent=1, sort_keys=True).encode())
    yield out


def build_retrain(p: beam.Pipeline, options: PipelineOptions, current: Optional[str],
                  labels: List[Dict], evaluation_path: str) -> Dict[str, beam.PCollection]:
  ev, win, det, tr, rt = (options.view_as(EventOptions), options.view_as(WindowOptions),
                          options.view_as(DetectOptions), options.view_as(TrainOptions),
                          options.view_as(RetrainOptions))
  config = TrainConfig.from_file(tr.train_config)
  parsed = p | 'ParseHistory' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files,
                                            ReadLimits.from_options(options))
  bounds = (parsed.events
            | 'NewestEvent' >> beam.CombineGlobally(_Newest()).without_defaults()
            | 'SliceBounds' >> beam.Map(slice_bounds, rt.days, rt.holdout_days))
  bounds_side = beam.pvalue.AsSingleton(bounds)
  windows = (parsed.events
             | 'RecentEvents' >> beam.Filter(lambda e, b: e.event_time >= b['train_start'], bounds_side)
             | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period, evidence=False)
             | 'GlobalWindow' >> beam.WindowInto(window.GlobalWindows())
             | 'SplitWindows' >> beam.ParDo(_SplitWindows(), bounds_side).with_outputs(
                 HOLDOUT, main='train'))
  inventory = p | 'ReadInventory' >> ReadInventory(det.inventory)
  candidate = windows.train | 'TrainCandidate' >> TrainModel(inventory, det.model_dir, config,
                                                             promote=False)
  evaluation = (windows[HOLDOUT]
                | 'Enrich' >> EnrichWindows(start_up_inventory(p, det.inventory, bounded=True))
                | 'BatchHeldBack' >> beam.BatchElements(min_batch_size=64, max_batch_size=4096)
                | 'ScoreBothModels' >> beam.ParDo(
                    EvaluateBatch(det.model_dir, current, det.threshold, labels),
                    beam.pvalue.AsSingleton(candidate))
                | 'MergeCounts' >> beam.CombineGlobally(_MergeEvaluation())
                | 'WriteEvaluation' >> beam.ParDo(
                    _WriteEvaluation(evaluation_path, current, labels, det.threshold),
                    beam.pvalue.AsSingleton(candidate), bounds_side))
  dead_path = ev.dead_letters or FileSystems.join(det.model_dir, 'retrain-dead-letter.jsonl')
  parsed.dead_letter | 'WriteDeadLetters' >> WriteJsonLines(dead_path, streaming=False)
  return {'candidate': candidate, 'evaluation': evaluation, 'dead_letter': parsed.dead_letter}


def iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
