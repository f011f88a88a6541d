"""Anomalous windows -> findings: overlapping windows of one identity become one finding.

Sliding windows overlap, so one burst of activity makes several consecutive
windows anomalous. Re-windowing the anomalous windows into ``Sessions`` with a
gap of one window size merges exactly the windows that overlap (their ends are
less than a window size apart), in batch and streaming alike.
"""
from __future__ import annotations

import datetime
import hashlib
from typing import Dict, Iterable, List

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Duration

SEVERITY_ORDER = {'low': 0, 'medium': 1, 'high': 2, 'critical': 3}


def rfc3339(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def finding_id(identity: str, start: float, end: float) -> str:
  """Deterministic: the same activity span of the same identity gets the same id."""
  return hashlib.sha256(f'{identity}|{start:.0f}|{end:.0f}'.encode()).hexdigest()[:24]


class MergeWindowsFn(beam.CombineFn):
  """Folds overlapping scored windows into one: widest span, top score, all reasons."""

  def create_accumulator(self) -> List[Dict]:
    return []

  def add_input(self, acc: List[Dict], element: Dict) -> List[Dict]:
    acc.append(element)
    return acc

  def merge_accumulators(self, accs: Iterable[List[Dict]]) -> List[Dict]:
    return [e for a in accs for e in a]

  def extract_output(self, acc: List[Dict]) -> Dict:
    return to_finding(acc)


def to_finding(windows: List[Dict]) -> Dict:
  windows = sorted(windows, key=lambda w: (w['window_start'], -w['score']))
  top = max(windows, key=lambda w: (w['score'], -w['window_start']))
  start = min(w['window_start'] for w in windows)
  end = max(w['window_end'] for w in windows)
  panes: Dict[str, int] = {}
  for w in windows:
    panes.update(w['panes'])
  reasons, seen = [], set()
  for w in sorted(windows, key=lambda w: -w['score']):
    for r in w['reasons']:
      if r['feature'] not in seen and r['detail'] not in seen:
        seen.update((r['feature'], r['detail']))
        reasons.append({k: r[k] for k in ('feature', 'value', 'baseline', 'detail')})
  ctx = top['context']
  return {
      'finding_id': finding_id(top['identity'], start, end),
      'identity': top['identity'],
      'identity_type': ctx.get('identity_type', ''),
      'window_start': rfc3339(start),
      'window_end': rfc3339(end),
      'score': top['score'],
      'score_components': {'isolation_forest': top['score_forest'], 'feature_rarity': top['score_rarity']},
      'severity': top['severity'],
      'model_version': top['model_version'],
      'cohort': top['cohort'],
      'reasons': reasons,
      'event_count': sum(panes.values()),
      'windows': len(windows),
      'peak_window': [rfc3339(top['window_start']), rfc3339(top['window_end'])],
      'owner': ctx.get('owner', ''),
      'team': ctx.get('team', ''),
      'environment': ctx.get('environment', ''),
      'criticality': ctx.get('criticality', ''),
      'registered': ctx.get('registered', 'false') == 'true',
  }


class MergeOverlappingWindows(beam.PTransform):
  """Scored-window dicts -> one finding dict per identity and run of overlapping windows."""

  def __init__(self, window_size_seconds: int, allowed_lateness: int = 0):
    super().__init__()
    self._size = window_size_seconds
    self._lateness = allowed_lateness

  def expand(self, scored):
    count = Metrics.counter('postauth', 'findings')

    def emit(kv):
      count.inc()
      return kv[1]

    return (scored
            | 'RunsOfWindows' >> beam.WindowInto(
                window.Sessions(self._size), allowed_lateness=Duration(seconds=self._lateness))
            | 'KeyByIdentity' >> beam.Map(lambda w: (w['identity'], w))
            | 'MergeRuns' >> beam.CombinePerKey(MergeWindowsFn())
            | 'Findings' >> beam.Map(emit))
