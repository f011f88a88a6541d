"""Anomalous windows -> findings: overlapping windows of one identity become one finding.

Sliding windows overlap, so one burst of activity makes several consecutive
windows anomalous. A stateful DoFn per identity keeps the open run of
overlapping anomalous windows and emits its finding as soon as the run's first
window closes (the watermark passes it), then an update under the same
``finding_id`` for each later window that joins the run, in event-time order
(an event-time timer at each window's end), so batch and streaming emit the
same versions. Paging within minutes of the first bad window instead of when
the run ends (issue 16); ``transforms/versions.py`` says what a version carries,
transforms/finding_content.py what a finding says, transforms/finding_builder.py how each
version is kept up to date as windows join.
On bounded input the same step runs as a plain loop per identity instead of
state and timers (transforms/timer_walk.py: Beam's state-cache commits were most
of the batch job's CPU). (Sessions windows express the same merge, but the streaming DirectRunner fired
and re-merged them more than once; explicit state and a timer behave the same
on every runner.)
"""
from __future__ import annotations

import functools
import hashlib
from typing import Dict, Iterable, List, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue

from postauth.transforms.earliest_pending import EarliestPending
from postauth.transforms.timer_walk import at_ms, in_global_window, per_identity, timer_ms
from postauth.transforms.versions import first_version, higher, version_flags
from postauth.transforms.finding_builder import FindingBuilder
# what a finding says, defined beside to_finding; imported from here by callers of this module
from postauth.transforms.finding_content import contextual_severity, finding_id, rfc3339, to_finding  # noqa: F401

from postauth.domain import evidence
from postauth.transforms.packed import PackedStateCoder


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


def _view(run: Dict) -> FindingBuilder:
  """The run's finding builder (made from its windows for a run kept in state without one)."""
  view = run.get('view')
  if view is None:
    view = run['view'] = FindingBuilder(run['windows'])
  return view


def _run_end(run: Dict) -> float:
  return _view(run).end


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
    self._due: Dict[float, int] = {}
    self.findings = Metrics.counter('postauth', 'findings')
    self.updates = Metrics.counter('postauth', 'finding_updates')
    self.rollovers = Metrics.counter('postauth', 'finding_rollovers')

  def _expiry(self, run: Dict) -> float:
    return _run_end(run) + self._size + self._lateness

  def step(self, now: int, waiting: List[Dict]):
    """(versions to emit, windows still waiting, next timer in ms or None)."""
    at = [(self._due_ms(w['window_end']), w) for w in waiting]
    due = sorted((w for t, w in at if t <= now), key=lambda w: (w['window_end'], w['window_start']))
    rest = [w for t, w in at if t > now]
    runs, out = self.runs, []
    for end in sorted({w['window_end'] for w in due}):
      touched = []
      for w in (w for w in due if w['window_end'] == end):
        run = self._place(runs, w)
        _view(run).put(w)  # a re-scored window replaces its version
        if not any(run is t for t in touched):
          touched.append(run)
      for run in touched:
        out.append(TimestampedValue(self._version(run), _stamp(end)))
    self.runs = [r for r in runs if timer_ms(self._expiry(r)) > now]
    nxt = [t for t, _ in at if t > now] + [timer_ms(self._expiry(r)) for r in self.runs]
    return out, rest, min(nxt) if nxt else None

  def _due_ms(self, window_end: float) -> int:
    """The timer time of a window ending at ``window_end``, remembered: the batch walk asks again
    for every window still waiting at each tick."""
    ms = self._due.get(window_end)
    if ms is None:
      if len(self._due) > 4096:
        self._due.clear()
      ms = self._due[window_end] = timer_ms(_stamp(window_end))
    return ms

  def _place(self, runs: List[Dict], w: Dict) -> Dict:
    """The run ``w`` joins: the one holding its earlier version, else the first it overlaps and
    fits in (span and cap); else a new run, continuing the latest one it overlaps (a rollover)."""
    key, first = (w['window_start'], w['window_end']), lambda r: _view(r).start
    over = [r for r in runs if key in r['windows']] or [
        r for r in runs if w['window_start'] < _run_end(r) and first(r) < w['window_end']]
    run = next((r for r in over if key in r['windows'] or (len(r['windows']) < MAX_RUN_WINDOWS and max(
        _run_end(r), w['window_end']) - min(first(r), w['window_start']) <= self._rollover)), None)
    if run is None:
      view = FindingBuilder()
      run = {'windows': view.windows, 'view': view, 'finding_id': None, 'first_detected_at': None, 'versions': 0,
             'severity': None, 'continues': over[-1]['finding_id'] if over else None}
      self.rollovers.inc(int(bool(over)))
      runs.append(run)
    return run

  def _version(self, run: Dict) -> Dict:
    """The run's finding as of now: the first version, or an update under the same id."""
    f = _view(run).finding()
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


def _due(window: Dict) -> int:
  return timer_ms(_stamp(window['window_end']))


def _first_due(windows: Iterable[Dict]) -> int:
  return min(_due(w) for w in windows)


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

  PENDING = BagStateSpec('pending', PackedStateCoder())
  RUNS = ReadModifyWriteStateSpec('runs', PackedStateCoder())
  TICK = TimerSpec('tick', TimeDomain.WATERMARK)

  def __init__(self, *merger_args):  # _RunMerger's: window size, allowed lateness, rollover
    self._args = merger_args

  def setup(self):
    self._merger = _RunMerger(*self._args)
    self._earliest = EarliestPending(_due)

  def start_bundle(self):
    self._earliest.start_bundle()

  def process(self, kv, pending=beam.DoFn.StateParam(PENDING), tick=beam.DoFn.TimerParam(TICK)):
    tick.set(at_ms(self._earliest.add(kv[0], pending, kv[1])))

  @on_timer(TICK)
  def tick(self, fired=beam.DoFn.TimestampParam, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING),
           runs_state=beam.DoFn.StateParam(RUNS), tick=beam.DoFn.TimerParam(TICK)):
    self._merger.runs = runs_state.read() or []
    out, rest, nxt = self._merger.step(fired.micros // 1000, list(pending.read()))
    self._earliest.rewrite(key, pending, rest)
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
  """Scored-window dicts -> one finding dict per identity and run of overlapping windows.

  ``grouped`` (bounded input): (identity, [(timer ms, scored-window dict)]) per identity in, as
  ``ScoreWindows(grouped=True)`` gives them: walked without a shuffle."""

  def __init__(self, window_size_seconds: int, allowed_lateness: int = 0,
               rollover_seconds: float = RUN_ROLLOVER_SECONDS, grouped: bool = False):
    super().__init__()
    self._args = (window_size_seconds, allowed_lateness, rollover_seconds)
    self._grouped = grouped

  def expand(self, scored):
    globally = scored if self._grouped else in_global_window(scored, 'GlobalWindow', self._args[1])
    return per_identity(globally, functools.partial(_new_merger, *self._args), _walk_start,
                        _MergeRunsFn(*self._args), 'WalkRuns', 'MergeRuns', grouped=self._grouped)
