"""Detection quality of a run against labelled attacks and benign changes (`postauth evaluate`).

Pure Python: reads the findings a run wrote (JSON lines) and the generator's
``labels.json`` / ``benign.json``, and measures what an on-call reader would ask:

- per attack: detected?, rank of its best finding among all findings, severity,
  time to detect: the first matching finding's ``first_detected_at`` (the event
  time it was first emitted: the end of its first anomalous window) minus the
  attack's start; and to the end of that finding's last update;
- precision@k over the ranked findings (k = number of attacks, and 10);
- PR-AUC (average precision) over the findings as identity-window predictions;
  an attack no finding matched is a positive never retrieved;
- false alerts per 1,000 identity-days: findings overlapping no attack, over the
  identity-days of the evaluated events;
- pages: first emissions at medium or above plus severity raises to medium or
  above (a finding's ``pages``; transforms/versions.py);
- per benign change: whether it stayed silent or at low severity.

A finding *matches* a case when it is about the case's identity and its window
overlaps the case's [start, end]. Findings are ranked by score, then severity.
Findings have versions (same ``finding_id``); only the latest of each counts
(``latest_versions``), so a versions log can be evaluated too.

The tables a report is read as: ``pipeline/evaluate_tables.py``; detection over the real
samples: ``pipeline/evaluate_real.py``.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

SEVERITY_RANK = {'low': 0, 'medium': 1, 'high': 2, 'critical': 3}  # as transforms/findings.py
DAY = 86400.0


def parse_time(value) -> float:
  """ISO-8601 (``...Z``) or epoch seconds -> epoch seconds."""
  if isinstance(value, (int, float)):
    return float(value)
  text = str(value).replace('Z', '+00:00')
  t = datetime.datetime.fromisoformat(text)
  if t.tzinfo is None:
    t = t.replace(tzinfo=datetime.timezone.utc)
  return t.timestamp()


def read_json_lines(path: str) -> List[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def latest_versions(findings: Sequence[dict]) -> List[dict]:
  """The latest version of each finding (highest ``updates``, then ``occurrences``)."""
  from postauth.transforms.versions import version_rank
  best: Dict[str, dict] = {}
  for f in findings:
    fid = f.get('finding_id') or id(f)
    if fid not in best or version_rank(f) >= version_rank(best[fid]):
      best[fid] = f
  return list(best.values())


def first_detected(finding: dict) -> float:
  """When the finding was first emitted (event time); findings without versions: their end."""
  return parse_time(finding.get('first_detected_at') or finding['window_end'])


def pages_of(finding: dict) -> int:
  """Pages a finding caused: its ``pages`` (first emission and raises at medium or above);
  a finding written without versions pages once if it is at medium or above."""
  if 'pages' in finding:
    return int(finding['pages'] or 0)
  return 1 if is_page(finding) else 0


def read_cases(path: Optional[str]) -> List[dict]:
  """labels.json / benign.json: a JSON list of {identity, start, end, ...}."""
  if not path:
    return []
  with open(path) as f:
    data = json.load(f)
  if isinstance(data, dict):
    data = data.get('labels', [])
  for i, case in enumerate(data):
    missing = {'identity', 'start', 'end'} - set(case)
    if missing:
      raise ValueError(f'{path}[{i}] lacks {sorted(missing)}')
  return data


def rank_findings(findings: Iterable[dict]) -> List[dict]:
  """Highest score first; severity, identity and window break ties (deterministic)."""
  return sorted(findings, key=lambda f: (-float(f['score']), -SEVERITY_RANK.get(f.get('severity'), -1),
                                         f['identity'], str(f['window_start'])))


def matches(finding: dict, case: dict) -> bool:
  """The finding is about the case's identity (a fleet notice: among its identities) and overlaps it."""
  who = finding['identity'] == case['identity'] or (
      finding.get('kind') == 'fleet_change' and case['identity'] in (finding.get('identities') or ()))
  return (who
          and parse_time(finding['window_start']) <= parse_time(case['end'])
          and parse_time(case['start']) <= parse_time(finding['window_end']))


def case_name(case: dict, i: int) -> str:
  return case.get('scenario') or case.get('change') or f'case-{i}'


def scenario_recall(ranked: Sequence[dict], labels: Sequence[dict], window_size: float = 3600.0) -> List[Dict]:
  """Per attack: detected, rank (1-based) and severity of its best finding, time to detect.

  ``time_to_detect_s`` ends at the earliest ``first_detected_at`` of the matching findings
  (when the finding was first emitted, in event time); ``time_to_final_s`` at the end of
  that finding's latest version; ``time_to_first_window_s`` when its first anomalous window
  closed (``window_start`` + ``window_size``), the earliest a finding could be raised.
  """
  out = []
  for i, label in enumerate(labels):
    hits = [(r, f) for r, f in enumerate(ranked, 1) if matches(f, label)]
    row = {'scenario': case_name(label, i), 'identity': label['identity'], 'detected': bool(hits),
           'rank': None, 'score': None, 'severity': None, 'max_severity': None,
           'time_to_detect_s': None, 'time_to_final_s': None, 'time_to_first_window_s': None,
           'findings': len(hits), 'pages': 0}
    if hits:
      rank, best = hits[0]
      start = parse_time(label['start'])
      first = min((f for _, f in hits), key=lambda f: (first_detected(f), f['window_start']))
      first_window = min(parse_time(f['window_start']) for _, f in hits) + window_size
      row.update(rank=rank, score=round(float(best['score']), 3), severity=best.get('severity'),
                 max_severity=max((f.get('severity') for _, f in hits), key=lambda s: SEVERITY_RANK.get(s, -1)),
                 time_to_detect_s=max(0.0, first_detected(first) - start),
                 time_to_final_s=max(0.0, parse_time(first['window_end']) - start),
                 time_to_first_window_s=max(0.0, min(first_window, parse_time(first['window_end'])) - start),
                 first_finding_id=first.get('finding_id'), pages=sum(pages_of(f) for _, f in hits))
    out.append(row)
  return out


def precision_at(ranked: Sequence[dict], labels: Sequence[dict], k: int) -> Optional[float]:
  """Share of the top k findings that match an attack (None when k is 0)."""
  if k <= 0:
    return None
  top = ranked[:k]
  return sum(1 for f in top if any(matches(f, l) for l in labels)) / k


def average_precision(scores: Sequence[float], positive: Sequence[bool], missed: int = 0) -> Optional[float]:
  """Area under the precision-recall curve as average precision (scikit-learn's step rule).

  ``missed`` positives were never predicted (score -inf): they count in the recall
  denominator and are never retrieved. Equal scores are one threshold.
  """
  total = sum(1 for p in positive if p) + missed
  if total == 0:
    return None
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  ap, tp, seen, prev_recall, i = 0.0, 0, 0, 0.0, 0
  while i < len(order):
    j = i
    while j < len(order) and scores[order[j]] == scores[order[i]]:
      tp += 1 if positive[order[j]] else 0
      j += 1
    seen = j
    recall = tp / total
    ap += (recall - prev_recall) * (tp / seen)
    prev_recall, i = recall, j
  return ap


def identity_days_of_events(paths: Sequence[str]) -> Tuple[int, int, int]:
  """(identity-days, identities, days) with activity in the event files, parsed as the job parses them."""
  from postauth.pipeline.parse_report import file_records
  from postauth.domain.event import Event
  from postauth.transforms.parse import RecordParser
  parser = RecordParser(None, None)
  pairs: Set[Tuple[str, int]] = set()
  for path in paths:
    for record in file_records(path):
      for _, item in parser.parse_items(record):  # an OTLP request holds many events
        if isinstance(item.event, Event):
          pairs.add((item.event.identity, int(item.event.event_time // DAY)))
  return len(pairs), len({i for i, _ in pairs}), len({d for _, d in pairs})


def benign_outcomes(ranked: Sequence[dict], benign: Sequence[dict]) -> List[Dict]:
  """Per legitimate change: its findings' highest severity; ok if silent or low."""
  out = []
  for i, case in enumerate(benign):
    hits = [(r, f) for r, f in enumerate(ranked, 1) if matches(f, case)]
    worst = max((f.get('severity') for _, f in hits), key=lambda s: SEVERITY_RANK.get(s, -1), default=None)
    out.append({'change': case_name(case, i), 'kind': case.get('kind') or case_name(case, i),
                'identity': case['identity'], 'findings': len(hits),
                'max_severity': worst, 'best_rank': hits[0][0] if hits else None,
                'expected': case.get('expected', 'low_or_none'),
                'ok': worst is None or SEVERITY_RANK.get(worst, 0) <= SEVERITY_RANK['low']})
  return out


def is_page(finding: dict) -> bool:
  """A finding at medium or above pages a responder."""
  return SEVERITY_RANK.get(finding.get('severity'), 0) >= SEVERITY_RANK['medium']


def page_rates(ranked: Sequence[dict], labels: Sequence[dict], benign: Sequence[dict],
               identity_days: Optional[int]) -> Dict:
  """Pages (findings at medium or above) that match no attack, per 1,000 identity-days: overall,
  per benign kind (a page matching a case of that kind), and unexplained (matching no case)."""
  per_k = (lambda n: round(1000.0 * n / identity_days, 2) if identity_days else None)
  false_findings = [f for f in ranked if pages_of(f) and not any(matches(f, l) for l in labels)]
  false_pages = [f for f in false_findings for _ in range(pages_of(f))]  # one entry per page
  kinds: Dict[str, List[dict]] = {}
  for i, case in enumerate(benign):
    kinds.setdefault(case.get('kind') or case_name(case, i), []).append(case)
  by_kind = {}
  for kind, cases in sorted(kinds.items()):
    paged = [f for f in false_pages if any(matches(f, c) for c in cases)]
    by_kind[kind] = {'cases': len(cases), 'cases_paged': sum(1 for c in cases if any(matches(f, c) for f in paged)),
                     'pages': len(paged), 'pages_per_1000_identity_days': per_k(len(paged))}
  unexplained = [f for f in false_pages if not any(matches(f, c) for c in benign)]
  return {'pages': len(false_pages), 'pages_per_1000_identity_days': per_k(len(false_pages)),
          'findings_paged': len(false_findings), 'paged': [false_page(f, benign) for f in false_findings],
          'pages_all': sum(pages_of(f) for f in ranked),
          'by_kind': by_kind, 'unexplained': len(unexplained),
          'unexplained_per_1000_identity_days': per_k(len(unexplained)),
          'attacks_paged': sum(1 for l in labels if any(pages_of(f) and matches(f, l) for f in ranked))}


def false_page(finding: dict, benign: Sequence[dict]) -> Dict:
  """What a page matching no attack rested on, for whoever owns the detection: the benign kinds it
  matches, its rules, ``page_basis`` and the first reasons."""
  return {'identity': finding['identity'], 'severity': finding.get('severity'), 'pages': pages_of(finding),
          'window_start': finding.get('window_start'), 'window_end': finding.get('window_end'),
          'kinds': sorted({c.get('kind') or case_name(c, i) for i, c in enumerate(benign) if matches(finding, c)}),
          'rules': finding.get('rules', []), 'page_basis': finding.get('page_basis'),
          'reasons': [r.get('detail', '')[:300] for r in finding.get('reasons', [])[:4]]}


def evaluate(findings: Sequence[dict], labels: Sequence[dict], benign: Sequence[dict] = (),
             identity_days: Optional[int] = None, window_size: float = 3600.0) -> Dict:
  """Every metric of the module docstring as one JSON-ready dict."""
  ranked = rank_findings(latest_versions(findings))
  per_scenario = scenario_recall(ranked, labels, window_size)
  positive = [any(matches(f, l) for l in labels) for f in ranked]
  missed = sum(1 for s in per_scenario if not s['detected'])
  false_alerts = [f for f, p in zip(ranked, positive) if not p]
  by_severity = {s: sum(1 for f in false_alerts if f.get('severity') == s) for s in SEVERITY_RANK}
  ap = average_precision([float(f['score']) for f in ranked], positive, missed)
  detected = sum(1 for s in per_scenario if s['detected'])
  report = {
      'findings': len(ranked),
      'attacks': len(labels),
      'attacks_detected': detected,
      'recall': round(detected / len(labels), 4) if labels else None,
      'precision_at': {str(k): (None if p is None else round(p, 4)) for k in sorted({len(labels), 10})
                       for p in [precision_at(ranked, labels, k)]},
      'pr_auc': None if ap is None else round(ap, 4),
      'false_alerts': len(false_alerts),
      'false_alerts_by_severity': by_severity,
      'identity_days': identity_days,
      'false_alerts_per_1000_identity_days': (round(1000.0 * len(false_alerts) / identity_days, 2)
                                              if identity_days else None),
      'false_alerts_medium_or_above_per_1000_identity_days': (
          round(1000.0 * sum(n for s, n in by_severity.items() if SEVERITY_RANK[s] >= 1) / identity_days, 2)
          if identity_days else None),
      'scenarios': per_scenario,
      'benign': benign_outcomes(ranked, benign),
      'pages': page_rates(ranked, labels, benign, identity_days),
      'time_to_detect': detect_summary(per_scenario),
  }
  return report


def median(values: List[float]) -> Optional[float]:
  values = sorted(values)
  if not values:
    return None
  mid = len(values) // 2
  return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0


def detect_summary(per_scenario: Sequence[Dict]) -> Dict:
  """Median and maximum time from an attack's first event to its finding's first emission."""
  times = [s['time_to_detect_s'] for s in per_scenario if s['time_to_detect_s'] is not None]
  finals = [s['time_to_final_s'] for s in per_scenario if s.get('time_to_final_s') is not None]
  return {'detected': len(times), 'median_s': median(times), 'max_s': max(times) if times else None,
          'median_final_s': median(finals)}


def pages_over_seeds(reports: Sequence[Tuple[int, Dict]]) -> Dict:
  """Issue 12's measure over several samples: attacks paged, and pages matching no attack per
  1,000 identity-days, overall and per benign kind (each kind summed over the seeds)."""
  total = {'seeds': [s for s, _ in reports], 'identity_days': 0, 'pages': 0, 'unexplained': 0,
           'attacks': 0, 'attacks_paged': 0, 'by_kind': {}}
  for seed, r in reports:
    p = r['pages']
    total['identity_days'] += r['identity_days'] or 0
    total['pages'] += p['pages']
    total['unexplained'] += p['unexplained']
    total['attacks'] += r['attacks']
    total['attacks_paged'] += p['attacks_paged']
    total.setdefault('paged', []).extend(dict(f, seed=seed) for f in p.get('paged', []))
    for kind, v in p['by_kind'].items():
      k = total['by_kind'].setdefault(kind, {'cases': 0, 'cases_paged': 0, 'pages': 0})
      for key in k:
        k[key] += v[key]
  days = total['identity_days']
  total['pages_per_1000_identity_days'] = round(1000.0 * total['pages'] / days, 2) if days else None
  for v in total['by_kind'].values():
    v['pages_per_1000_identity_days'] = round(1000.0 * v['pages'] / days, 2) if days else None
  return total


def evaluate_files(findings: str, labels: str, benign: Optional[str] = None,
                   events: Sequence[str] = (), inventory_identity_days: Optional[int] = None,
                   window_size: float = 3600.0) -> Dict:
  """The report from files; identity-days from the events when given."""
  identity_days, detail = inventory_identity_days, {}
  if events:
    identity_days, identities, days = identity_days_of_events(events)
    detail = {'identities_active': identities, 'days': days}
  report = evaluate(read_json_lines(findings), read_cases(labels), read_cases(benign), identity_days, window_size)
  report['inputs'] = {'findings': os.path.abspath(findings), 'labels': os.path.abspath(labels),
                      'benign': benign and os.path.abspath(benign), 'event_files': len(events), **detail}
  return report
