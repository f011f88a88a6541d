"""What a finding says, from its run of overlapping anomalous windows: its id and times, its
severity in the identity's context, its reasons (one per group, best window first), what its
page rests on, and ``to_finding``, the definition of a finding version that
transforms/finding_builder.py keeps up to date window by window.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
from typing import Dict, Iterable, List, Tuple

from postauth.transforms.versions import first_version

from postauth.domain import evidence

SEVERITY_ORDER = {'low': 0, 'medium': 1, 'high': 2, 'critical': 3}


@functools.lru_cache(maxsize=1 << 12)  # a cache, not state: window bounds repeat across versions
def rfc3339(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


@functools.lru_cache(maxsize=1 << 12)  # a cache, not state: every version of a finding asks
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


def reason_items(w: Dict) -> List[Tuple[str, str, Dict]]:
  """A window's rules then reasons as (group key, detail, public form)."""
  return [(_reason_key(r), r['detail'], _public(r)) for r in list(w.get('rules', ())) + list(w['reasons'])]


def take_reasons(items: Iterable[Tuple[str, str, Dict]], seen: set, out: List) -> None:
  """Keeps each item whose group and detail are both unseen (windows walked best first)."""
  for key, detail, pub in items:
    if key not in seen and detail not in seen:
      seen.update((key, detail))
      out.append((key, detail, pub))


def _top_ten(counts: Dict[str, int]) -> Dict[str, int]:
  return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10])


def assemble(top: Dict, first: Dict, start: float, end: float, score: float, flagged: bool,
              detected: str, reasons: List[Dict], actions: Dict[str, int], resources: Dict[str, int],
              event_count: int, n_windows: int, basis: Dict[str, List[str]]) -> Dict:
  """A finding dict from its run's aggregates (``to_finding`` and ``FindingBuilder``)."""
  ctx = top['context']
  severity, severity_basis = contextual_severity(detected, ctx)
  return {
      'finding_id': finding_id(top['identity'], first['window_start'], first['window_end']),
      'kind': 'anomaly' if flagged else 'rule',
      'identity': top['identity'],
      'identity_type': ctx.get('identity_type', ''),
      'window_start': rfc3339(start),
      'window_end': rfc3339(end),
      'score': score,
      'score_components': {'isolation_forest': top['score_forest'], 'feature_rarity': top['score_rarity']},
      'severity': severity,
      'severity_basis': severity_basis,
      'model_version': top['model_version'],
      'cohort': top['cohort'],
      'reasons': reasons,
      'rules': sorted({r['rule'] for r in reasons if 'rule' in r}),
      'actions': _top_ten(actions),
      'resources': _top_ten(resources),
      'event_count': event_count,
      'windows': n_windows,
      'peak_window': [rfc3339(top['window_start']), rfc3339(top['window_end'])],
      'owner': ctx.get('owner', ''),
      'team': ctx.get('team', ''),
      'environment': ctx.get('environment', ''),
      'criticality': ctx.get('criticality', ''),
      'registered': ctx.get('registered', 'false') == 'true',
      'occurrences': 1,
      'first_detected_at': rfc3339(first['window_end']),
      'page_basis': basis,
      **first_version(severity),
  }


def to_finding(windows: List[Dict]) -> Dict:
  """The finding of a run of overlapping windows as they are so far (its first version when
  ``windows`` is the run's first window; an update when more have joined). The definition
  ``FindingBuilder`` keeps up to date window by window."""
  unique: Dict[tuple, Dict] = {}
  for w in windows:  # a window re-scored after late data replaces its earlier version
    unique[(w['window_start'], w['window_end'])] = w
  windows = sorted(unique.values(), key=lambda w: w['window_start'])
  top = max(windows, key=lambda w: (w['score'], len(w.get('rules', ())), -w['window_start']))
  panes: Dict[str, int] = {}
  for w in windows:
    panes.update(w['panes'])
  seen: set = set()
  taken: List[Tuple[str, str, Dict]] = []
  for w in sorted(windows, key=lambda w: (-w['score'], w['window_start'], w['window_end'])):
    take_reasons(reason_items(w), seen, taken)
  reasons = [pub for _, _, pub in taken]
  # Each window's severity is already its judgment (transforms/judgment.py): evidence pages,
  # shareable novelty pages unless peers share it, change alone stays low.
  actions: Dict[str, int] = {}
  resources: Dict[str, int] = {}
  for w in windows:
    for a, n in w.get('actions', {}).items():
      actions[a] = max(actions.get(a, 0), n)
    for r, n in w.get('resources', {}).items():
      resources[r] = max(resources.get(r, 0), n)
  finding = assemble(
      top, windows[0], min(w['window_start'] for w in windows), max(w['window_end'] for w in windows),
      max(w['score'] for w in windows), any(w.get('model_flagged', True) for w in windows),
      max_severity([w['severity'] for w in windows]), reasons, actions, resources, sum(panes.values()),
      len(windows), page_basis(windows))
  finding.update(evidence.pick(windows, reasons))  # events behind the top reasons, calls per action
  return finding
