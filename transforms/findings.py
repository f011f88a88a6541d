"""Anomalous windows -> findings: overlapping windows of one identity become one finding.

Sliding windows overlap, so one burst of activity makes several consecutive
windows anomalous. A stateful DoFn per identity keeps the open run of
overlapping anomalous windows and emits its finding as soon as the run's first
window closes (the watermark passes it), then an update under the same
``finding_id`` for each later window that joins the run, in event-time order
(an event-time timer at each window's end), so batch and streaming emit the
same versions. Paging within minutes of the first bad window instead of when
the run ends (issue 16); ``transforms/versions.py`` says what a version carries.
On bounded input the same step runs as a plain loop per identity instead of
state and timers (transforms/timer_walk.py: Beam's state-cache commits were most
of the batch job's CPU). (Sessions windows express the same merge, but the streaming DirectRunner fired
and re-merged them more than once; explicit state and a timer behave the same
on every runner.)
"""
from __future__ import annotations

import datetime
import functools
import hashlib
from typing import Dict, Iterable, List, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration

from postauth.transforms.timer_walk import at_ms, per_identity, timer_ms
from postauth.transforms.versions import first_version, higher, version_flags

from postauth.domain import evidence

SEVERITY_ORDER = {'low': 0, 'medium': 1, 'high': 2, 'critical': 3}


def rfc3339(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def finding_id(identity: str, start: float, end: float) -> str:
  """Deterministic and stable through updates: the identity and its run's first window."""
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


def page_basis(windows: List[Dict]) -> Dict[str, List[str]]:
  """What the finding's page rests on, over its windows: ``evidence`` no rollout explains,
  ``shareable`` novelty of its paging windows without evidence (peers may share it), and
  ``change`` that is routine. A finding whose ``evidence`` is empty pages only on novelty
  its peers could share (transforms/corroborate.py)."""
  ev, share, change = set(), set(), set()
  for w in windows:
    j = w.get('judgment') or {}
    ev.update(j.get('evidence', ()))
    change.update(j.get('change', ()))
    if SEVERITY_ORDER.get(w.get('severity'), 0) >= SEVERITY_ORDER['medium'] and not j.get('evidence'):
      share.update(j.get('shareable', ()))
  return {'evidence': sorted(ev), 'shareable': sorted(share), 'change': sorted(change)[:6]}


def to_finding(windows: List[Dict]) -> Dict:
  """The finding of a run of overlapping windows as they are so far (its first version when
  ``windows`` is the run's first window; an update when more have joined)."""
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
  # Each window's severity is already its judgment (transforms/judgment.py): evidence pages,
  # shareable novelty pages unless peers share it, change alone stays low.
  detected = max_severity([w['severity'] for w in windows])
  severity, basis = contextual_severity(detected, ctx)
  actions: Dict[str, int] = {}
  resources: Dict[str, int] = {}
  for w in windows:
    for a, n in w.get('actions', {}).items():
      actions[a] = max(actions.get(a, 0), n)
    for r, n in w.get('resources', {}).items():
      resources[r] = max(resources.get(r, 0), n)
  first = windows[0]  # the earliest window: its end is when the finding was first emitted
  finding = {
      'finding_id': finding_id(top['identity'], first['window_start'], first['window_end']),
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
      'first_detected_at': rfc3339(first['window_end']),
      'page_basis': page_basis(windows),
      **first_version(severity),
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
      'first_detected_at': rfc3339(window.window_end),
      'page_basis': {'evidence': ['unregistered_identity'], 'shareable': [], 'change': []},
      **first_version(severity),
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


def _run_end(run: Dict) -> float:
  return max(e for _, e in run['windows'])


def _stamp(ts: float) -> float:
  """A scored window's element time: just before its end (as ScoreWindows stamps it)."""
  return ts - 1e-6


# A run rolls over into a new finding (new ``finding_id``, ``continues``: the one before) once its
# span would pass a day or it holds MAX_RUN_WINDOWS windows: a week-long anomaly otherwise kept 672
# windows in one run (~3 MB of state rewritten per window, each version's work growing with the
# run). A day is what a responder reads as one finding; the cap holds whatever the window period.
RUN_ROLLOVER_SECONDS = 86400
MAX_RUN_WINDOWS = 96  # a day of 15-minute periods


class _RunMerger:
  """The merge at one timer time, on plain values: scored windows due by ``now`` join the open
  run they overlap, in event-time order, and each run they touch emits its finding's version.
  Invariant: a run spans at most ``rollover_seconds`` and holds at most MAX_RUN_WINDOWS windows.
  Held in state by the streaming DoFn, in local variables by the batch walk."""

  def __init__(self, window_size: int, allowed_lateness: int = 0,
               rollover_seconds: float = RUN_ROLLOVER_SECONDS):
    self._size, self._lateness, self._rollover = window_size, allowed_lateness, rollover_seconds
    self.runs: List[Dict] = []
    self.findings = Metrics.counter('postauth', 'findings')
    self.updates = Metrics.counter('postauth', 'finding_updates')
    self.rollovers = Metrics.counter('postauth', 'finding_rollovers')

  def _expiry(self, run: Dict) -> float:
    return _run_end(run) + self._size + self._lateness

  def step(self, now: int, waiting: List[Dict]):
    """(versions to emit, windows still waiting, next timer in ms or None)."""
    due = sorted((w for w in waiting if timer_ms(_stamp(w['window_end'])) <= now),
                 key=lambda w: (w['window_end'], w['window_start']))
    rest = [w for w in waiting if timer_ms(_stamp(w['window_end'])) > now]
    runs, out = self.runs, []
    for end in sorted({w['window_end'] for w in due}):
      touched = []
      for w in (w for w in due if w['window_end'] == end):
        run = self._place(runs, w)
        run['windows'][(w['window_start'], w['window_end'])] = w  # a re-scored window replaces its version
        if not any(run is t for t in touched):
          touched.append(run)
      for run in touched:
        out.append(TimestampedValue(self._version(run), _stamp(end)))
    self.runs = [r for r in runs if timer_ms(self._expiry(r)) > now]
    nxt = [timer_ms(_stamp(w['window_end'])) for w in rest] + [timer_ms(self._expiry(r)) for r in self.runs]
    return out, rest, min(nxt) if nxt else None

  def _place(self, runs: List[Dict], w: Dict) -> Dict:
    """The run ``w`` joins: the one holding its earlier version, else the first it overlaps and
    fits in (span and cap); else a new run, continuing the latest one it overlaps (a rollover)."""
    key, first = (w['window_start'], w['window_end']), lambda r: min(s for s, _ in r['windows'])
    over = [r for r in runs if key in r['windows']] or [
        r for r in runs if w['window_start'] < _run_end(r) and first(r) < w['window_end']]
    run = next((r for r in over if key in r['windows'] or (len(r['windows']) < MAX_RUN_WINDOWS and max(
        _run_end(r), w['window_end']) - min(first(r), w['window_start']) <= self._rollover)), None)
    if run is None:
      run = {'windows': {}, 'finding_id': None, 'first_detected_at': None, 'versions': 0,
             'severity': None, 'continues': over[-1]['finding_id'] if over else None}
      self.rollovers.inc(int(bool(over)))
      runs.append(run)
    return run

  def _version(self, run: Dict) -> Dict:
    """The run's finding as of now: the first version, or an update under the same id."""
    f = to_finding(list(run['windows'].values()))
    if run['finding_id'] is None:
      run['finding_id'], run['first_detected_at'] = f['finding_id'], f['first_detected_at']
      self.findings.inc()
    else:
      self.updates.inc()
    severity = higher(run['severity'], f['severity']) if run['severity'] else f['severity']
    flags = version_flags(run['severity'], severity)
    run['pages'] = run.get('pages', 0) + int(flags['page'])
    f.update(finding_id=run['finding_id'], first_detected_at=run['first_detected_at'],
             updates=run['versions'], severity=severity, pages=run['pages'], **flags)
    if run.get('continues'):
      f['continues'] = run['continues']  # the finding this run rolled over from
    run['versions'] += 1
    run['severity'] = severity
    return f


def _first_due(windows: Iterable[Dict]) -> int:
  return min(timer_ms(_stamp(w['window_end'])) for w in windows)


class _MergeRunsFn(beam.DoFn):
  """Streaming: (identity, scored window) -> a finding at its run's first window, then one
  update per later window.

  Windows wait in ``pending`` until the watermark passes them (a timer at the
  earliest), then join the open run they overlap, in event-time order, so batch
  (any arrival order) and streaming emit the same versions. A run stays open
  until no window can overlap it any more, late ones included (its last end plus
  one window size plus the allowed lateness): a late window within the lateness
  updates the finding already emitted, under the same ``finding_id``. A run past a
  day rolls over into a new finding: no run holds more than a day of windows.
  """

  PENDING = BagStateSpec('pending', PickleCoder())
  RUNS = ReadModifyWriteStateSpec('runs', PickleCoder())
  TICK = TimerSpec('tick', TimeDomain.WATERMARK)

  def __init__(self, *merger_args):  # _RunMerger's: window size, allowed lateness, rollover
    self._args = merger_args

  def setup(self):
    self._merger = _RunMerger(*self._args)

  def process(self, kv, pending=beam.DoFn.StateParam(PENDING), tick=beam.DoFn.TimerParam(TICK)):
    pending.add(kv[1])
    tick.set(at_ms(_first_due(pending.read())))

  @on_timer(TICK)
  def tick(self, fired=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
           runs_state=beam.DoFn.StateParam(RUNS), tick=beam.DoFn.TimerParam(TICK)):
    self._merger.runs = runs_state.read() or []
    out, rest, nxt = self._merger.step(fired.micros // 1000, list(pending.read()))
    pending.clear()
    for w in rest:
      pending.add(w)
    runs = self._merger.runs
    runs_state.write(runs) if runs else runs_state.clear()
    if nxt is not None:
      tick.set(at_ms(nxt))
    yield from out


def _new_merger(*merger_args):
  return _RunMerger(*merger_args).step


def _walk_start(stamped: List[Tuple[int, Dict]]) -> Tuple[List[Dict], int]:
  """Batch: the scored windows waiting, and the first tick (the earliest window's)."""
  windows = [w for _, w in stamped]
  return windows, _first_due(windows)


class MergeOverlappingWindows(beam.PTransform):
  """Scored-window dicts -> one finding dict per identity and run of overlapping windows."""

  def __init__(self, window_size_seconds: int, allowed_lateness: int = 0,
               rollover_seconds: float = RUN_ROLLOVER_SECONDS):
    super().__init__()
    self._args = (window_size_seconds, allowed_lateness, rollover_seconds)

  def expand(self, scored):
    globally = scored | 'GlobalWindow' >> beam.WindowInto(
        window.GlobalWindows(), allowed_lateness=Duration(seconds=self._args[1]))
    return per_identity(globally, functools.partial(_new_merger, *self._args), _walk_start,
                        _MergeRunsFn(*self._args), 'WalkRuns', 'MergeRuns')
