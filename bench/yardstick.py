"""Pages on change, measured against an outside fleet: the shared CloudTrail yardstick.

What it measures. For each generator seed and history churn setting, the fleet written by
``../shared/yardsticks/cloudtrail_fleet.py`` (AWS non-human identities in CloudTrail's own
delivery format: a training history, then a "release day" with labelled attacks among
legitimate change no identity made before) is trained on and run through the batch detection,
and the findings are read as an on-call responder would:

- attacks paged (detected at medium or above) out of all attacks, and which were not
  (detected only at low, or missed);
- time to detect (the first matching finding's ``first_detected_at`` minus the attack's start):
  median and maximum over the detected attacks;
- pages matching no attack (latest versions at medium or above overlapping no labelled attack:
  ``postauth evaluate``'s "false alerts per 1,000 identity-days (medium or above)"), split by
  the benign change they overlap (``new_actions``, ``redeploy_beside``, ``backfill`` from
  ``benign.json``, by identity and time) or ``other`` (none: includes fleet-change notices, whose
  identity is ``fleet:...``), and per 1,000 identity-days; plus the rules and model features that
  drive them.

Why. The project's own generator (``postauth generate``) was written beside the detector: the
change it puts on its release day is change the rules and the model were shaped around, so a
quiet page rate there says little about change nobody planned for. This fleet was written outside
the project and holds change the project's generator does not: new harmless actions adopted by
part of each kind, a redeploy onto a new private network while the old one keeps working, a 3x
backfill. A useful detector pages for its attacks and not for that. ``--churn`` puts part of that
change into the history too (0 = a quiet history, where all of the release day's change is new).
Matching and counting are the project's own (``postauth.pipeline.evaluate``), so the numbers are
``postauth evaluate``'s (the evaluate step asserts it). Note: ``page_rates`` (the README's pages
tables) counts pages, and a finding raised into critical pages twice; the count here is of paging
findings, as "false alerts ... (medium or above)"; ``page_rates`` is kept in the JSON beside it.
Do not tune rules to this fleet's action names or addresses: it is one yardstick among several.

How to run it (from the project root, with the venv's python)::

    .venv/bin/python bench/yardstick.py --out out/yardstick [--seeds 1,2,3,4,5] [--identities 60]
        [--churn 0,0.3] [--days 7] [--jobs 1] [--reuse] [--reuse-model]

Each fleet goes to ``OUT/s{seed}-c{churn}/`` (``--reuse``: keep a complete fleet generated with
the same arguments; ``--reuse-model``: keep its trained model instead of training again). Every
subprocess's output goes to ``OUT/s{seed}-c{churn}/logs/``. Prints one markdown row per fleet, a
summary and the wall time of each step; writes ``OUT/yardstick.json`` with all of it and the exact
commands. ``--jobs N`` runs N fleets at once (default 1: the machine is shared; each job is a Beam
pipeline of its own). 150 identities is about 350 MB of JSON per fleet: keep it modest.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from yardstick_report import KINDS, OTHER, TABLE_HEAD, table_row, summarise, summary_markdown, timings_markdown  # noqa: E402 (bench/ is the script folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # postauth imports from the venv's install
GENERATOR = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'yardsticks', 'cloudtrail_fleet.py'))
FLEET_PREFIX = 'fleet:'
MARKER = 'yardstick-fleet.json'  # written after a fleet generated completely: its arguments


@dataclass
class Fleet:
  """One (seed, churn) fleet and what the bench did with it."""
  seed: int
  churn: float
  identities: int
  days: int
  out: str
  commands: Dict[str, str] = field(default_factory=dict)
  timings_s: Dict[str, float] = field(default_factory=dict)
  skipped: List[str] = field(default_factory=list)
  metrics: Optional[Dict] = None
  error: Optional[str] = None

  @property
  def name(self) -> str:
    return f's{self.seed}-c{self.churn:g}'

  @property
  def dir(self) -> str:
    return os.path.join(self.out, self.name)

  def path(self, *parts: str) -> str:
    return os.path.join(self.dir, *parts)

  def generator_args(self) -> Dict:
    return {'generator': GENERATOR, 'seed': self.seed, 'history_churn': self.churn,
            'identities': self.identities, 'days': self.days}


# ---------------------------------------------------------------- commands

def postauth_command() -> List[str]:
  """The ``postauth`` of the python running the bench (the venv's entry point)."""
  script = os.path.join(os.path.dirname(sys.executable), 'postauth')
  if os.path.exists(script):
    return [script]
  return [sys.executable, '-c', 'import sys; from postauth.pipeline.cli import main; sys.exit(main())']


def generate_command(fleet: Fleet) -> List[str]:
  return [sys.executable, GENERATOR, fleet.dir, '--identities', str(fleet.identities), '--days', str(fleet.days),
          '--seed', str(fleet.seed), '--history-churn', f'{fleet.churn:g}']


def train_command(fleet: Fleet) -> List[str]:
  return postauth_command() + ['train', '--events', fleet.path('history', '*'),
                               '--inventory', fleet.path('inventory.csv'), '--model-dir', fleet.path('model')]


def run_command(fleet: Fleet) -> List[str]:
  return postauth_command() + ['run', '--events', fleet.path('live', '*'), '--inventory', fleet.path('inventory.csv'),
                               '--model-dir', fleet.path('model'), '--findings', fleet.path('findings.jsonl')]


def evaluate_command(fleet: Fleet) -> List[str]:
  """The CLI equivalent of the evaluate step (what its numbers must agree with)."""
  return postauth_command() + ['evaluate', '--findings', fleet.path('findings.jsonl'),
                               '--labels', fleet.path('labels.json'), '--benign', fleet.path('benign.json'),
                               '--events', fleet.path('live', '*')]


def quoted(cmd: Sequence[str]) -> str:
  return ' '.join(shlex.quote(c) for c in cmd)


def run_logged(cmd: Sequence[str], log: str) -> None:
  """Run ``cmd`` with its output in ``log``; on failure raise with the log's tail."""
  os.makedirs(os.path.dirname(log), exist_ok=True)
  with open(log, 'w') as f:
    f.write(f'$ {quoted(cmd)}\n')
    f.flush()
    rc = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
  if rc != 0:
    with open(log) as f:
      tail = ''.join(f.readlines()[-20:])
    raise RuntimeError(f'exit {rc}: {quoted(cmd)}\n(log {log})\n{tail}')


# ---------------------------------------------------------------- steps

def fleet_complete(fleet: Fleet) -> bool:
  """Every generator output is there, written with the same arguments (our marker says so)."""
  try:
    with open(fleet.path(MARKER)) as f:
      if json.load(f) != fleet.generator_args():
        return False
  except (OSError, ValueError):
    return False
  needed = ['inventory.csv', 'labels.json', 'benign.json', os.path.join('live', 'cloudtrail-live.json')]
  history = glob.glob(fleet.path('history', 'cloudtrail-day*.json'))
  return all(os.path.isfile(fleet.path(p)) for p in needed) and len(history) == fleet.days - 1


def generate(fleet: Fleet, reuse: bool) -> bool:
  """The fleet's files (False: reused)."""
  if reuse and fleet_complete(fleet):
    return False
  for stale in (MARKER, 'findings.jsonl'):
    if os.path.exists(fleet.path(stale)):
      os.remove(fleet.path(stale))
  for stale in ('history', 'live', 'model'):
    shutil.rmtree(fleet.path(stale), ignore_errors=True)
  os.makedirs(fleet.dir, exist_ok=True)
  run_logged(generate_command(fleet), fleet.path('logs', 'generate.log'))
  with open(fleet.path(MARKER), 'w') as f:
    json.dump(fleet.generator_args(), f, indent=1)
  return True


def model_ready(fleet: Fleet) -> bool:
  return os.path.isfile(fleet.path('model', 'LATEST'))


def train(fleet: Fleet, reuse_model: bool) -> bool:
  """A fresh model (False: the existing one kept)."""
  if reuse_model and model_ready(fleet):
    return False
  shutil.rmtree(fleet.path('model'), ignore_errors=True)
  run_logged(train_command(fleet), fleet.path('logs', 'train.log'))
  return True


def detect(fleet: Fleet) -> None:
  if os.path.exists(fleet.path('findings.jsonl')):
    os.remove(fleet.path('findings.jsonl'))
  run_logged(run_command(fleet), fleet.path('logs', 'run.log'))


# ---------------------------------------------------------------- evaluation (the project's own)

def benign_kind(finding: Dict, benign: Sequence[Dict]) -> str:
  """The benign change a page overlaps (same identity, overlapping time), else ``other``."""
  from postauth.pipeline.evaluate import matches
  for kind in KINDS:  # a case of a kind this bench does not know counts as other
    if any(matches(finding, case) for case in benign if case.get('kind') == kind):
      return kind
  return OTHER


def driver(finding: Dict) -> str:
  """What raised a page: its deterministic rules, else its top model reason (feature)."""
  if finding.get('rules'):
    return 'rule:' + '+'.join(finding['rules'])
  reasons = finding.get('reasons') or [{}]
  return 'feature:' + str(reasons[0].get('feature') or reasons[0].get('rule') or '?')


def reason_keys(finding: Dict) -> List[str]:
  return [('rule:' + r['rule']) if 'rule' in r else ('feature:' + str(r.get('feature'))) for r in finding.get('reasons', ())]


def per_1000(n: int, identity_days: Optional[int]) -> Optional[float]:
  return round(1000.0 * n / identity_days, 2) if identity_days else None


def evaluate_fleet(fleet: Fleet) -> Dict:
  """The fleet's numbers, counted with ``postauth.pipeline.evaluate``'s matching."""
  from postauth.pipeline.evaluate import (evaluate_files, is_page, latest_versions, matches, rank_findings,
                                          read_cases, read_json_lines)
  events = sorted(glob.glob(fleet.path('live', '*')))
  report = evaluate_files(fleet.path('findings.jsonl'), fleet.path('labels.json'), fleet.path('benign.json'), events)
  labels, benign = read_cases(fleet.path('labels.json')), read_cases(fleet.path('benign.json'))
  findings = rank_findings(latest_versions(read_json_lines(fleet.path('findings.jsonl'))))
  days = report['identity_days']
  no_attack = [f for f in findings if is_page(f) and not any(matches(f, l) for l in labels)]
  split = Counter({k: 0 for k in KINDS + (OTHER,)})
  split.update(benign_kind(f, benign) for f in no_attack)
  paged = [any(is_page(f) and matches(f, l) for f in findings) for l in labels]
  not_paged = [f'{s["scenario"]} ({s["max_severity"] or "missed"})'
               for s, p in zip(report['scenarios'], paged) if not p]
  ttd = report['time_to_detect']
  # The CLI's numbers, re-read from the same report, so a mismatch shows here and not in a doc.
  cli_false_medium = sum(n for s, n in report['false_alerts_by_severity'].items() if s != 'low')
  assert cli_false_medium == len(no_attack), (cli_false_medium, len(no_attack))
  assert report['false_alerts_medium_or_above_per_1000_identity_days'] == per_1000(len(no_attack), days)
  return {
      'attacks': len(labels),
      'attacks_paged': sum(paged),
      'attacks_detected_any_severity': report['attacks_detected'],
      'attacks_not_paged': not_paged,
      'time_to_detect_median_s': ttd['median_s'],
      'time_to_detect_max_s': ttd['max_s'],
      'identity_days': days,
      'pages_no_attack': len(no_attack),
      'pages_no_attack_by_kind': dict(split),
      'pages_no_attack_fleet_notices': sum(1 for f in no_attack if f['identity'].startswith(FLEET_PREFIX)),
      'pages_no_attack_per_1000_identity_days': per_1000(len(no_attack), days),
      'pages_all': sum(1 for f in findings if is_page(f)),
      'pages_all_per_1000_identity_days': per_1000(sum(1 for f in findings if is_page(f)), days),
      # page_rates counts pages (a raise into critical pages again), not paging findings:
      'page_rates': report['pages'],
      'findings': len(findings),
      'findings_by_severity': dict(Counter(f.get('severity') for f in findings)),
      'no_attack_drivers': dict(Counter(driver(f) for f in no_attack).most_common()),
      'no_attack_reasons': dict(Counter(k for f in no_attack for k in set(reason_keys(f))).most_common()),
      'no_attack_pages': [{'identity': f['identity'], 'severity': f['severity'], 'kind': benign_kind(f, benign),
                           'window_start': f['window_start'], 'window_end': f['window_end'],
                           'score': f['score'], 'driver': driver(f), 'reasons': reason_keys(f)}
                          for f in no_attack],
      'scenarios': report['scenarios'],
      'benign': report['benign'],
  }


# ---------------------------------------------------------------- one fleet, many fleets

def timed(fleet: Fleet, step: str, fn: Callable[[], object]) -> object:
  t = time.monotonic()
  result = fn()
  fleet.timings_s[step] = round(time.monotonic() - t, 1)
  if result is False:
    fleet.skipped.append(step)
  print(f'[{fleet.name}] {step}: {fleet.timings_s[step]:.1f} s' + (' (reused)' if result is False else ''),
        file=sys.stderr, flush=True)
  return result


def bench_fleet(fleet: Fleet, reuse: bool, reuse_model: bool) -> Fleet:
  fleet.commands = {'generate': quoted(generate_command(fleet)), 'train': quoted(train_command(fleet)),
                    'run': quoted(run_command(fleet)), 'evaluate': quoted(evaluate_command(fleet))}
  try:
    generated = timed(fleet, 'generate', lambda: generate(fleet, reuse))
    timed(fleet, 'train', lambda: train(fleet, reuse_model and not generated))
    timed(fleet, 'run', lambda: detect(fleet))
    fleet.metrics = timed(fleet, 'evaluate', lambda: evaluate_fleet(fleet))
  except Exception as e:  # one fleet's failure is reported; the others still run
    fleet.error = f'{type(e).__name__}: {e}'
    print(f'[{fleet.name}] FAILED: {fleet.error}', file=sys.stderr, flush=True)
  return fleet


def bench(fleets: List[Fleet], jobs: int, reuse: bool, reuse_model: bool) -> List[Fleet]:
  if jobs <= 1:
    return [bench_fleet(f, reuse, reuse_model) for f in fleets]
  with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:  # each step is a subprocess
    return list(pool.map(lambda f: bench_fleet(f, reuse, reuse_model), fleets))


# ---------------------------------------------------------------- report

def code_state() -> Dict:
  """The commit and uncommitted files the numbers were measured on (a shared working tree)."""
  def git(*args: str) -> str:
    try:
      return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return ''
  return {'commit': git('rev-parse', 'HEAD'), 'uncommitted': git('status', '--porcelain').splitlines()}


def parse_list(text: str, kind: Callable) -> List:
  return [kind(v) for v in text.split(',') if v.strip()]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--out', default='out/yardstick', help='Folder of the fleets and yardstick.json.')
  ap.add_argument('--seeds', default='1,2,3,4,5', help='Generator seeds, comma-separated.')
  ap.add_argument('--identities', type=int, default=60, help='Identities per fleet (150 is ~350 MB).')
  ap.add_argument('--days', type=int, default=7, help='Days per fleet (the last is the release day).')
  ap.add_argument('--churn', default='0,0.3', help='History churn settings, comma-separated (0 = quiet).')
  ap.add_argument('--jobs', type=int, default=1, help='Fleets benched at once (default 1: a shared machine).')
  ap.add_argument('--reuse', action='store_true', help='Keep a fleet generated completely with the same arguments.')
  ap.add_argument('--reuse-model', action='store_true', help='Keep a reused fleet\'s trained model.')
  return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  a = parse_args(argv)
  if not os.path.isfile(GENERATOR):
    print(f'no fleet generator at {GENERATOR}', file=sys.stderr)
    return 2
  out = os.path.abspath(a.out)
  os.makedirs(out, exist_ok=True)
  fleets = [Fleet(seed, churn, a.identities, a.days, out)
            for seed in parse_list(a.seeds, int) for churn in parse_list(a.churn, float)]
  code = code_state()
  t0 = time.monotonic()
  fleets = bench(fleets, a.jobs, a.reuse, a.reuse_model)
  wall = time.monotonic() - t0
  summary = summarise(fleets)
  text = '\n\n'.join([
      f'Yardstick: {GENERATOR} ({a.identities} identities x {a.days} days per fleet), batch detection; '
      f'code {code["commit"][:7] or "?"}' + (f' + {len(code["uncommitted"])} uncommitted files' if code['uncommitted'] else '') + '.',
      TABLE_HEAD + '\n' + '\n'.join(table_row(f) for f in fleets),
      summary_markdown(summary), timings_markdown(fleets, wall)])
  print(text)
  command = quoted([sys.executable, os.path.relpath(os.path.abspath(__file__), os.getcwd())]
                   + list(argv if argv is not None else sys.argv[1:]))
  with open(os.path.join(out, 'yardstick.json'), 'w') as f:
    json.dump({'command': command, 'cwd': os.getcwd(), 'args': vars(a), 'generator': GENERATOR,
               'code': code, 'wall_s': round(wall, 1), 'summary': summary, 'markdown': text,
               'fleets': [{'name': fl.name, 'seed': fl.seed, 'churn': fl.churn, 'dir': fl.dir,
                           'commands': fl.commands, 'timings_s': fl.timings_s, 'reused': fl.skipped,
                           'error': fl.error, **(fl.metrics or {})} for fl in fleets]}, f, indent=1)
  return 1 if summary['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
