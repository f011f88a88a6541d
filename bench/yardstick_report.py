"""The yardstick bench's report: its tables in markdown and the summary over fleets (bench/yardstick.py).

Renders and sums what ``bench/yardstick.py`` measured per fleet; runs nothing.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Dict, Optional, Sequence

if TYPE_CHECKING:  # the bench's per-fleet record
  from yardstick import Fleet

KINDS = ('new_actions', 'redeploy_beside', 'backfill')  # the generator's benign.json kinds
OTHER = 'other'
STEPS = ('generate', 'train', 'run', 'evaluate')


def minutes(seconds: Optional[float]) -> str:
  if seconds is None:
    return '-'
  m = int(round(seconds / 60.0))
  return f'{m // 60} h {m % 60:02d} min' if m >= 60 else f'{m} min'


TABLE_HEAD = ('| seed | churn | identity-days | attacks paged (medium+) | detected (any) | not paged | '
              'time to detect median / max | pages matching no attack | new_actions | redeploy_beside | '
              'backfill | other (fleet notices) | per 1,000 identity-days | all pages |\n'
              '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')


def table_row(fleet: Fleet) -> str:
  m = fleet.metrics
  if m is None:
    return f'| {fleet.seed} | {fleet.churn:g} | **failed**: {(fleet.error or "").splitlines()[0]} |'
  k = m['pages_no_attack_by_kind']
  return (f'| {fleet.seed} | {fleet.churn:g} | {m["identity_days"]} | {m["attacks_paged"]}/{m["attacks"]} | '
          f'{m["attacks_detected_any_severity"]}/{m["attacks"]} | {", ".join(m["attacks_not_paged"]) or "-"} | '
          f'{minutes(m["time_to_detect_median_s"])} / {minutes(m["time_to_detect_max_s"])} | '
          f'{m["pages_no_attack"]} | {k["new_actions"]} | {k["redeploy_beside"]} | {k["backfill"]} | '
          f'{k[OTHER]} ({m["pages_no_attack_fleet_notices"]}) | {m["pages_no_attack_per_1000_identity_days"]} | '
          f'{m["pages_all"]} |')


def mean(values: Sequence[float]) -> Optional[float]:
  return round(sum(values) / len(values), 2) if values else None


def summarise(fleets: Sequence[Fleet]) -> Dict:
  done = [f for f in fleets if f.metrics]
  by = lambda key: {v: [f for f in done if key(f) == v] for v in sorted({key(f) for f in done})}
  no_attack = lambda fs: mean([f.metrics['pages_no_attack'] for f in fs])
  per_k = lambda fs: mean([f.metrics['pages_no_attack_per_1000_identity_days'] or 0.0 for f in fs])
  kinds = lambda fs: {k: mean([f.metrics['pages_no_attack_by_kind'][k] for f in fs]) for k in KINDS + (OTHER,)}
  drivers, reasons = Counter(), Counter()
  for f in done:
    drivers.update(f.metrics['no_attack_drivers'])
    reasons.update(f.metrics['no_attack_reasons'])
  return {
      'fleets': len(fleets), 'failed': [f.name for f in fleets if not f.metrics],
      'attacks': sum(f.metrics['attacks'] for f in done),
      'attacks_paged': sum(f.metrics['attacks_paged'] for f in done),
      'attacks_detected_any_severity': sum(f.metrics['attacks_detected_any_severity'] for f in done),
      'attacks_not_paged': dict(Counter(s.split(' (')[0] for f in done for s in f.metrics['attacks_not_paged'])),
      'mean_pages_no_attack': no_attack(done),
      'mean_pages_no_attack_per_1000_identity_days': per_k(done),
      'mean_pages_no_attack_by_kind': kinds(done),
      'per_seed': {str(s): {'mean_pages_no_attack': no_attack(fs), 'mean_per_1000_identity_days': per_k(fs)}
                   for s, fs in by(lambda f: f.seed).items()},
      'per_churn': {f'{c:g}': {'mean_pages_no_attack': no_attack(fs), 'mean_per_1000_identity_days': per_k(fs),
                               'mean_by_kind': kinds(fs)}
                    for c, fs in by(lambda f: f.churn).items()},
      'no_attack_drivers': dict(drivers.most_common()),
      'no_attack_reasons': dict(reasons.most_common()),
  }


def summary_markdown(s: Dict) -> str:
  cols = KINDS + (OTHER,)
  lines = [f'Attacks paged (medium or above): **{s["attacks_paged"]}/{s["attacks"]}** '
           f'(detected at any severity: {s["attacks_detected_any_severity"]}/{s["attacks"]}); not paged: '
           + (', '.join(f'{k} x{n}' for k, n in sorted(s['attacks_not_paged'].items())) or 'none') + '.',
           '', f'Mean pages matching no attack per fleet: **{s["mean_pages_no_attack"]}** '
               f'({s["mean_pages_no_attack_per_1000_identity_days"]} '
               f'per 1,000 identity-days).', '',
           '| seed | mean pages matching no attack | per 1,000 identity-days |', '| --- | --- | --- |']
  lines += [f'| {seed} | {v["mean_pages_no_attack"]} | {v["mean_per_1000_identity_days"]} |'
            for seed, v in s['per_seed'].items()]
  lines += ['', '| churn | mean pages matching no attack | per 1,000 identity-days | ' + ' | '.join(cols) + ' |',
            '| --- | --- | --- |' + ' --- |' * len(cols)]
  lines += [f'| {c} | {v["mean_pages_no_attack"]} | {v["mean_per_1000_identity_days"]} | '
            + ' | '.join(str(v['mean_by_kind'][k]) for k in cols) + ' |' for c, v in s['per_churn'].items()]
  lines += ['| **all** | ' + f'{s["mean_pages_no_attack"]} | {s["mean_pages_no_attack_per_1000_identity_days"]} | '
            + ' | '.join(str(s['mean_pages_no_attack_by_kind'][k]) for k in cols) + ' |']
  lines += ['', 'What raised the pages matching no attack (all fleets; a page counts once under its driver: '
                'its rules, else its top model feature): '
            + (', '.join(f'{k} {n}' for k, n in s['no_attack_drivers'].items()) or 'none') + '.',
            'Reasons they carry (a page counts under each): '
            + (', '.join(f'{k} {n}' for k, n in s['no_attack_reasons'].items()) or 'none') + '.']
  if s['failed']:
    lines += ['', f'**Failed fleets**: {", ".join(s["failed"])} (see OUT/yardstick.json and each fleet\'s logs/).']
  return '\n'.join(lines)


def timings_markdown(fleets: Sequence[Fleet], wall: float) -> str:
  lines = ['| fleet | ' + ' | '.join(STEPS) + ' | total |', '| --- |' + ' --- |' * (len(STEPS) + 1)]
  for f in fleets:
    cells = [(f'{f.timings_s[s]:.1f} s' + (' (reused)' if s in f.skipped else '')) if s in f.timings_s else '-'
             for s in STEPS]
    lines.append(f'| {f.name} | ' + ' | '.join(cells) + f' | {sum(f.timings_s.values()):.1f} s |')
  lines.append(f'\nWall time: {wall:.1f} s.')
  return '\n'.join(lines)


# ---------------------------------------------------------------- main
