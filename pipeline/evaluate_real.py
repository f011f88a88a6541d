"""Detection over the real public samples (``../shared/data``): what a trained model flags on each.

The real sets have no complete labels, so this is a summary, not a score: per set, the
findings by severity and kind, the rules that fired, the identities flagged and, where a
set marks attacker events (otrf-aws), how many attacker identities were flagged.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Set, Tuple

from postauth.pipeline.evaluate import SEVERITY_RANK, rank_findings, read_json_lines


def real_sets(root: str) -> List[str]:
  """The sample folders under ``root`` (../shared/data), each one evaluated on its own."""
  return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def materialise_set(root: str, name: str, out_dir: str) -> Tuple[str, int]:
  """A set's raw records as one JSON-lines file, the way `postauth run` reads logs.

  Panther's rule-test rows are unwrapped to the log they carry (as the parse report
  does); every other record is written as it was read. Returns (path, records).
  """
  from postauth.pipeline.parse_report import sample_files, file_records
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'{name}.jsonl')
  n = 0
  with open(path, 'wb') as f:
    for src in sample_files(os.path.join(root, name)):
      for record in file_records(src):
        f.write(record.raw.replace(b'\n', b' ') + b'\n')
        n += 1
  return path, n


def _attacker_identities(root: str, name: str) -> Set[str]:
  """Identities (as the parser names them) of the events the set's labels mark as attacker activity.

  Only otrf-aws labels events (``label`` 1, by ``eventID``); its labels name the session
  ARN, the parser the role it assumed, so the events are parsed to match the findings.
  """
  import csv
  from postauth.pipeline.parse_report import report, sample_files
  path = os.path.join(root, name, 'labels.csv')
  if name != 'otrf-aws' or not os.path.exists(path):
    return set()
  with open(path) as f:
    ids = {row['eventID'] for row in csv.DictReader(f) if row.get('label') == '1'}
  return {e.identity for r in report(sample_files(os.path.join(root, name))) for e in r['events']
          if e.event_id in ids}


def summarise_real(name: str, findings: Sequence[dict], records: int, counters: Dict[str, int],
                   attackers: Set[str] = frozenset()) -> Dict:
  """What a run flagged on one real set: findings by severity and kind, rules, identities."""
  ranked = rank_findings(findings)
  rules: Dict[str, int] = {}
  for f in ranked:
    for r in f.get('rules') or []:
      rules[r] = rules.get(r, 0) + 1
  flagged = sorted({f['identity'] for f in ranked})
  out = {'set': name, 'records': records, 'parsed': counters.get('events_parsed'),
         'dead_lettered': counters.get('dead_lettered', 0), 'findings': len(ranked),
         'by_severity': {s: sum(1 for f in ranked if f.get('severity') == s) for s in SEVERITY_RANK},
         'model_flagged': sum(1 for f in ranked if f.get('kind') == 'anomaly'),
         'rules': dict(sorted(rules.items(), key=lambda kv: -kv[1])),
         'identities_flagged': len(flagged),
         'top': [{'identity': f['identity'], 'severity': f.get('severity'), 'score': round(float(f['score']), 3),
                  'rules': f.get('rules') or []} for f in ranked[:3]]}
  if attackers:
    out['labelled_attacker_identities'] = len(attackers)
    out['labelled_attacker_flagged'] = sum(1 for a in attackers if any(a == f['identity'] for f in ranked))
  return out


def evaluate_real(root: str, model_dir: str, inventory: str, out_dir: str,
                  beam_args: Sequence[str] = ()) -> List[Dict]:
  """Runs batch detection over every set under ``root`` with a trained model; per-set summaries."""
  from postauth.pipeline.jobs import run
  rows = []
  for name in real_sets(root):
    path, records = materialise_set(root, name, os.path.join(out_dir, 'events'))
    findings = os.path.join(out_dir, f'{name}.findings.jsonl')
    ran = run([f'--events={path}', f'--inventory={inventory}', f'--model-dir={model_dir}',
               f'--findings={findings}', f'--dead-letters={os.path.join(out_dir, name + ".dead-letter.jsonl")}']
              + list(beam_args))
    rows.append(summarise_real(name, read_json_lines(findings), records, ran['counters'],
                               _attacker_identities(root, name)))
  return rows
