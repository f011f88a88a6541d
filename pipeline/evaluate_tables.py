"""The evaluation's reports as markdown tables: what the README and ``docs/`` show.

Renders the dicts ``pipeline/evaluate.py`` computes (one run's report, the pages over
several seeds) and ``pipeline/evaluate_real.py`` (one row per real sample); computes nothing.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from postauth.pipeline.evaluate import SEVERITY_RANK


def _duration(seconds: Optional[float]) -> str:
  """Seconds as a reader reads a delay: minutes, or hours and minutes."""
  if seconds is None:
    return '-'
  minutes = int(round(seconds / 60.0))
  return f'{minutes // 60} h {minutes % 60:02d} min' if minutes >= 60 else f'{minutes} min'


def to_markdown(report: Dict, title: str = '') -> str:
  """The report as the README's tables."""
  lines = [f'**{title}**', ''] if title else []
  wall = report.get('wall_clock') or {}
  lines += ['| attack scenario | detected | rank | severity | score | time to detect (first_detected_at) | '
            'first anomalous window closed | finding\'s last update | pages |'
            + (' wall-clock delay to the sink |' if wall else ''),
            '| --- | --- | --- | --- | --- | --- | --- | --- | --- |' + (' --- |' if wall else '')]
  for s in report['scenarios']:
    delay = wall.get(s['scenario'])
    lines.append(f'| {s["scenario"]} | {"yes" if s["detected"] else "**no**"} | {s["rank"] or "-"} | '
                 f'{s["severity"] or "-"} | {"-" if s["score"] is None else s["score"]} | '
                 f'{_duration(s["time_to_detect_s"])} | {_duration(s["time_to_first_window_s"])} | '
                 f'{_duration(s.get("time_to_final_s"))} | '
                 f'{s.get("pages", "-")} |' + ((f' {delay:.1f} s |' if delay is not None else ' - |') if wall else ''))
  t = report.get('time_to_detect') or {}
  first = (report.get('sink_delay') or {}).get('first_versions') or {}
  if first.get('n'):
    lines += ['', f'Wall-clock delay from the message that closes a finding\'s first window to its first '
              f'version on the sink: median {first["median_s"]:.1f} s, max {first["max_s"]:.1f} s '
              f'({first["n"]} findings).']
  if t.get('detected'):
    lines += ['', f'Time from an attack\'s first event to its finding\'s first emission (event time): '
                  f'median {_duration(t["median_s"])}, at most {_duration(t["max_s"])} '
                  f'(to the last update: median {_duration(t["median_final_s"])}).']
  if report['benign']:
    lines += ['', '| benign change (kind) | cases | cases with findings | highest severity | best rank | '
              'all low or silent |', '| --- | --- | --- | --- | --- | --- |']
    kinds: Dict[str, List[Dict]] = {}
    for b in report['benign']:
      kinds.setdefault(b.get('kind') or b['change'], []).append(b)
    for kind, cases in kinds.items():
      worst = max((b['max_severity'] for b in cases if b['max_severity']),
                  key=lambda x: SEVERITY_RANK.get(x, -1), default=None)
      best = min((b['best_rank'] for b in cases if b['best_rank']), default=None)
      lines.append(f'| {kind} | {len(cases)} | {sum(1 for b in cases if b["findings"])} | {worst or "-"} | '
                   f'{best or "-"} | {"yes" if all(b["ok"] for b in cases) else "**no**"} |')
  p = report['precision_at']
  lines += ['', '| metric | value |', '| --- | --- |',
            f'| attacks detected | {report["attacks_detected"]}/{report["attacks"]} |']
  lines += [f'| precision@{k} | {v} |' for k, v in p.items()]
  lines += [f'| PR-AUC (average precision over findings) | {report["pr_auc"]} |',
            f'| findings | {report["findings"]} ({report["false_alerts"]} overlap no attack: '
            + ', '.join(f'{n} {s}' for s, n in report['false_alerts_by_severity'].items() if n) + ') |',
            f'| identity-days evaluated | {report["identity_days"] if report["identity_days"] else "-"} |',
            f'| false alerts per 1,000 identity-days (any severity) | '
            f'{report["false_alerts_per_1000_identity_days"] if report["identity_days"] else "-"} |',
            f'| false alerts per 1,000 identity-days (medium or above) | '
            f'{report["false_alerts_medium_or_above_per_1000_identity_days"] if report["identity_days"] else "-"} |']
  return '\n'.join(lines) + '\n'


def pages_markdown(total: Dict, per_seed: Sequence[Tuple[int, Dict]]) -> str:
  """The README's pages tables: per seed, and per benign kind over all seeds."""
  lines = ['| seed | identity-days | attacks paged | pages matching no attack | per 1,000 identity-days | '
           'matching no benign case either |', '| --- | --- | --- | --- | --- | --- |']
  for seed, r in per_seed:
    p = r['pages']
    lines.append(f'| {seed} | {r["identity_days"]} | {p["attacks_paged"]}/{r["attacks"]} | {p["pages"]} | '
                 f'{p["pages_per_1000_identity_days"]} | {p["unexplained"]} |')
  lines.append(f'| **all** | {total["identity_days"]} | {total["attacks_paged"]}/{total["attacks"]} | '
               f'{total["pages"]} | **{total["pages_per_1000_identity_days"]}** | {total["unexplained"]} |')
  lines += ['', '| benign kind | cases | cases paged | pages | per 1,000 identity-days |',
            '| --- | --- | --- | --- | --- |']
  for kind, v in sorted(total['by_kind'].items()):
    lines.append(f'| {kind} | {v["cases"]} | {v["cases_paged"]} | {v["pages"]} | '
                 f'{v["pages_per_1000_identity_days"]} |')
  paged = total.get('paged') or []
  if paged:
    lines += ['', 'Pages matching no attack, what they rested on:', '',
              '| seed | identity | severity | benign kinds | rules | page basis (evidence / shareable) | first reason |',
              '| --- | --- | --- | --- | --- | --- | --- |']
    for f in paged:
      basis = f.get('page_basis') or {}
      reason = (f['reasons'] or [''])[0].replace('|', '/')[:160]
      lines.append(f'| {f.get("seed", "")} | {f["identity"].rsplit("/", 1)[-1]} | {f["severity"]} | '
                   f'{", ".join(f["kinds"]) or "-"} | {", ".join(f["rules"]) or "-"} | '
                   f'{", ".join(basis.get("evidence", [])) or "-"} / {", ".join(basis.get("shareable", [])) or "-"} | '
                   f'{reason} |')
  return '\n'.join(lines) + '\n'


def real_markdown(rows: Sequence[Dict]) -> str:
  """One row per real sample (``evaluate_real.evaluate_real``)."""
  lines = ['| set | records | parsed | findings (low/medium/high/critical) | model-flagged | rules fired | '
           'identities flagged | labelled attacker flagged |',
           '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    sev = '/'.join(str(r['by_severity'][s]) for s in SEVERITY_RANK)
    rules = ', '.join(f'{k} {v}' for k, v in r['rules'].items()) or '-'
    lab = (f'{r["labelled_attacker_flagged"]}/{r["labelled_attacker_identities"]}'
           if 'labelled_attacker_identities' in r else '-')
    lines.append(f'| {r["set"]} | {r["records"]} | {r["parsed"]} | {r["findings"]} ({sev}) | {r["model_flagged"]} | '
                 f'{rules} | {r["identities_flagged"]} | {lab} |')
  return '\n'.join(lines) + '\n'
