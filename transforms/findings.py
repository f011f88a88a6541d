"""Anomalous windows -> findings: overlapping windows of one identity become one finding.

Sliding windows overlap, so one burst of activity makes several consecutive
windows anomalous. A stateful DoFn per identity collects a run of overlapping
anomalous windows and emits it as one finding when an event-time timer says the
run can no longer grow: once the watermark passes the last window's end plus
one window size, no window overlapping it can still arrive. (Sessions windows
express the same merge, but the streaming DirectRunner fired and re-merged them
more than once, emitting partial and duplicated findings; explicit state and a
timer emit each run exactly once on every runner.)
"""
from __future__ import annotations

import datetime
import hashlib
import typing
from typing import Dict, Iterable, List, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration

from transforms import evidence

SEVERITY_ORDER = {'low': 0, 'medium': 1, 'high': 2, 'critical': 3}


def rfc3339(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def finding_id(identity: str, start: float, end: float) -> str:
  """Deterministic: the same activity span of the same identity gets the same id."""
  return hashlib.sha256(f'{identity}|{start:.0f}|{end:.0f}'.encode()).hexdigest()[:24]


SEVERITIES = ('low', 'medium', 'high', 'critical')
RAISING_CRITICALITY = ('critical', 'high')
LOWERING_CRITICALITY = ('low',)
LOWER_ENVIRONMENTS = ('dev', 'development', 'test', 'testing', 'sandbox', 'lab')


def max_severity(levels: Iterable[str]) -> str:
  levels = [l for l in levels if l in SEVERITY_ORDER]
  return max(levels, key=SEVERITY_ORDER.get) if levels else 'low'


def contextual_severity(detected: str, context: Dict) -> Tuple[str, Dict[str, str]]:
  """The detectors' severity moved one step up for critical identities, one down for
  low-criticality or dev/test/sandbox ones: the same anomaly matters more on a
  prod payment key than on a sandbox bot. Context orders pages; it never makes one
  or takes one away: evidence below medium stays below (a high-criticality identity's
  routine oddity is not a page), evidence at medium or above stays at medium or above
  (an attack on a sandbox key still pages). Returns the level and how it was reached."""
  level = SEVERITY_ORDER[detected]
  basis = {'detected': detected}
  criticality = (context.get('criticality') or '').lower()
  environment = (context.get('environment') or '').lower()
  if criticality in RAISING_CRITICALITY:
    level += 1
    basis['criticality'] = f'+1 ({criticality})'
  elif criticality in LOWERING_CRITICALITY:
    level -= 1
    basis['criticality'] = f'-1 ({criticality})'
  if environment in LOWER_ENVIRONMENTS:
    level -= 1
    basis['environment'] = f'-1 ({environment})'
  page = SEVERITY_ORDER['medium']
  bounded = max(page, level) if SEVERITY_ORDER[detected] >= page else min(page - 1, level)
  if bounded != level:
    basis['bounded'] = 'evidence decides whether it pages; context only orders pages'
  return SEVERITIES[max(0, min(bounded, len(SEVERITIES) - 1))], basis


# Features that say the same thing to a responder: a finding keeps the first (rarest, from its
# highest-scoring window) of each group, not three lines about the same new resources.
REASON_GROUPS = {
    'novel_resources': 'new resources', 'novel_family_share': 'new resources',
    'novel_resource_families': 'new resources',
    'novel_action_share': 'new actions', 'novel_sensitive_actions': 'new actions',
    'novel_high_impact_events': 'new actions', 'novel_rare_actions': 'new actions',
}


def _reason_key(r: Dict) -> str:
  key = r.get('rule') or r.get('feature', '')
  return REASON_GROUPS.get(key, key)


def _public(r: Dict) -> Dict:
  if 'rule' in r:
    return {k: r[k] for k in ('rule', 'detail', 'severity', 'actions') if k in r}
  return {k: r[k] for k in ('feature', 'value', 'baseline', 'detail', 'actions') if k in r}


def to_finding(windows: List[Dict]) -> Dict:
  unique: Dict[tuple, Dict] = {}
  for w in windows:  # a window re-scored after late data replaces its earlier version
    unique[(w['window_start'], w['window_end'])] = w
  windows = sorted(unique.values(), key=lambda w: w['window_start'])
  top = max(windows, key=lambda w: (w['score'], len(w.get('rules', ())), -w['window_start']))
  start = min(w['window_start'] for w in windows)
  end = max(w['window_end'] for w in windows)
  panes: Dict[str, int] = {}
  for w in windows:
    panes.update(w['panes'])
  reasons, seen = [], set()
  for w in sorted(windows, key=lambda w: (-w['score'], w['window_start'], w['window_end'])):
    for r in list(w.get('rules', ())) + list(w['reasons']):
      key = _reason_key(r)
      if key not in seen and r['detail'] not in seen:
        seen.update((key, r['detail']))
        reasons.append(_public(r))
  ctx = top['context']
  detected = max_severity([w['severity'] for w in windows if w.get('model_flagged', True)] +
                          [r['severity'] for r in reasons if 'rule' in r])
  severity, basis = contextual_severity(detected, ctx)
  actions: Dict[str, int] = {}
  resources: Dict[str, int] = {}
  for w in windows:
    for a, n in w.get('actions', {}).items():
      actions[a] = max(actions.get(a, 0), n)
    for r, n in w.get('resources', {}).items():
      resources[r] = max(resources.get(r, 0), n)
  finding = {
      'finding_id': finding_id(top['identity'], start, end),
      'kind': 'anomaly' if any(w.get('model_flagged', True) for w in windows) else 'rule',
      'identity': top['identity'],
      'identity_type': ctx.get('identity_type', ''),
      'window_start': rfc3339(start),
      'window_end': rfc3339(end),
      'score': max(w['score'] for w in windows),
      'score_components': {'isolation_forest': top['score_forest'], 'feature_rarity': top['score_rarity']},
      'severity': severity,
      'severity_basis': basis,
      'model_version': top['model_version'],
      'cohort': top['cohort'],
      'reasons': reasons,
      'rules': sorted({r['rule'] for r in reasons if 'rule' in r}),
      'actions': dict(sorted(actions.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
      'resources': dict(sorted(resources.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
      'event_count': sum(panes.values()),
      'windows': len(windows),
      'peak_window': [rfc3339(top['window_start']), rfc3339(top['window_end'])],
      'owner': ctx.get('owner', ''),
      'team': ctx.get('team', ''),
      'environment': ctx.get('environment', ''),
      'criticality': ctx.get('criticality', ''),
      'registered': ctx.get('registered', 'false') == 'true',
      'occurrences': 1,
  }
  finding.update(evidence.pick(windows, reasons))  # events behind the top reasons, calls per action
  return finding


def unregistered_finding(window, context: Dict) -> Dict:
  """A shadow NHI: active in telemetry, absent from the inventory (once per identity and day)."""
  agg = window.agg
  day = rfc3339(window.window_end - 1)[:10]
  top = sorted(agg.actions, key=lambda a: (-agg.actions[a], a))[:5]
  severity, basis = contextual_severity('medium', context)
  finding = {
      'finding_id': hashlib.sha256(f'{window.identity}|unregistered|{day}'.encode()).hexdigest()[:24],
      'kind': 'rule',
      'identity': window.identity,
      'identity_type': context.get('identity_type', ''),
      'window_start': rfc3339(window.window_start),
      'window_end': rfc3339(window.window_end),
      'score': 0.0,
      'score_components': {},
      'severity': severity,
      'severity_basis': basis,
      'model_version': '',
      'cohort': '',
      'reasons': [{'rule': 'unregistered_identity', 'severity': 'medium', 'actions': top,
                   'detail': f'identity is not in the inventory (no owner, no declared scope); '
                             f'first seen on {day} with {agg.count} calls: '
                             + ', '.join(f'{a} x{agg.actions[a]}' for a in top)}],
      'rules': ['unregistered_identity'],
      'actions': {a: agg.actions[a] for a in top},
      'resources': dict(sorted(agg.resources.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
      'event_count': agg.count,
      'windows': 1,
      'peak_window': [rfc3339(window.window_start), rfc3339(window.window_end)],
      'owner': '', 'team': '', 'environment': '', 'criticality': '',
      'registered': False,
      'occurrences': 1,
  }
  finding.update(evidence.from_aggregate(agg, finding['reasons'], window.window_start, window.window_end))
  return finding


def split_runs(windows: List[Dict]) -> List[List[Dict]]:
  """Groups windows into runs where each window overlaps the run so far."""
  runs: List[List[Dict]] = []
  end = float('-inf')
  for w in sorted(windows, key=lambda w: (w['window_start'], w['window_end'])):
    if not runs or w['window_start'] >= end:
      runs.append([])
      end = float('-inf')
    runs[-1].append(w)
    end = max(end, w['window_end'])
  return runs


def _run_end(run: List[Dict]) -> float:
  return max(w['window_end'] for w in run)


class _MergeRunsFn(beam.DoFn):
  """(identity, scored window) -> one finding per run of overlapping windows.

  Windows may arrive in any order (batch) or in watermark order (streaming); a
  run is emitted when the watermark passes its last end plus one window size.
  """

  PENDING = BagStateSpec('pending', PickleCoder())
  FLUSH = TimerSpec('flush', TimeDomain.WATERMARK)

  def __init__(self, window_size: int):
    self._size = window_size
    self.findings = Metrics.counter('postauth', 'findings')

  def process(self, kv, pending=beam.DoFn.StateParam(PENDING),
              flush=beam.DoFn.TimerParam(FLUSH)):
    _, scored = kv
    pending.add(scored)
    runs = split_runs(list(pending.read()))
    flush.set(min(_run_end(r) for r in runs) + self._size)

  @on_timer(FLUSH)
  def emit(self, fired=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
           flush=beam.DoFn.TimerParam(FLUSH)):
    runs = split_runs(list(pending.read()))
    pending.clear()
    later = []
    for run in runs:
      if _run_end(run) + self._size <= fired:
        self.findings.inc()
        yield to_finding(run)
      else:
        later.append(run)
    for run in later:
      for w in run:
        pending.add(w)
    if later:
      flush.set(min(_run_end(r) for r in later) + self._size)


class MergeOverlappingWindows(beam.PTransform):
  """Scored-window dicts -> one finding dict per identity and run of overlapping windows."""

  def __init__(self, window_size_seconds: int, allowed_lateness: int = 0):
    super().__init__()
    self._size = window_size_seconds
    self._lateness = allowed_lateness

  def expand(self, scored):
    return (scored
            | 'GlobalWindow' >> beam.WindowInto(
                window.GlobalWindows(), allowed_lateness=Duration(seconds=self._lateness))
            | 'KeyByIdentity' >> beam.Map(lambda w: (w['identity'], w)).with_output_types(
                typing.Tuple[str, typing.Any])
            | 'MergeRuns' >> beam.ParDo(_MergeRunsFn(self._size)))
