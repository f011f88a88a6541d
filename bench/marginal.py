"""Marginal and whole batch cost of `postauth run` on a held-out-sized day, against the plain
numpy + scikit-learn limit measured in the same run.

    python bench/marginal.py [--work DIR] [--repeat 3] [--runners default,FnApiRunner]

One command, every figure side by side (the machine is shared and noisy), ``--repeat`` rounds
interleaved, medians reported:

* limit: ``bench/limit.py`` on the live day (the project's parser, numpy/dict windows, one
  IsolationForest; CPU seconds without imports);
* head: `postauth run` on the first ``--head`` live events, a whole process;
* day: `postauth run` on the whole live day, a whole process;

for each runner: ``default`` is `postauth run` without ``--runner``, as a user gets it (the
DirectRunner, which starts Prism when the project's binary exists); ``FnApiRunner`` the
in-process runner. Ratios: marginal = (day CPU - head CPU) / limit, whole = day CPU / limit.
CPU seconds are the process tree's (Prism's Go process included). The sample is generated
and a model trained once (``generate --identities 200 --days 3 --rate-scale 1.4``, ~42k live
events) unless ``--work`` holds one. Figures go to ``--out``/marginal.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

from bench.job_runs import launch  # noqa: E402
from bench.sample import cut_live, make_sample  # noqa: E402
from bench.startup import median, timed  # noqa: E402


def run_limit(work: str) -> Dict:
  out = subprocess.run([sys.executable, os.path.join(BENCH_DIR, 'limit.py'), f'--events={work}/live/*'],
                       capture_output=True, text=True, cwd=ROOT)
  lines = [l for l in out.stdout.splitlines() if l.startswith('LIMIT ')]
  if out.returncode or not lines:
    return {'error': (out.stderr.strip().splitlines() or [f'exit {out.returncode}'])[-1]}
  return json.loads(lines[-1][len('LIMIT '):])


def postauth_run(work: str, events: str, runner: str, scratch: str) -> Dict:
  cmd = [sys.executable, '-m', 'postauth.pipeline.cli', 'run', f'--events={events}',
         f'--inventory={work}/inventory.csv', f'--model-dir={work}/model',
         f'--findings={scratch}/findings.jsonl', f'--dead-letters={scratch}/dead-letter.jsonl']
  return timed(cmd + ([] if runner == 'default' else [f'--runner={runner}']), scratch)


def measure(work: str, head: str, runners: List[str], repeat: int, scratch: str) -> Dict:
  rounds: Dict[str, List[Dict]] = {'limit': []}
  for r in runners:
    rounds[f'{r}/head'], rounds[f'{r}/day'] = [], []
  for i in range(repeat):
    rounds['limit'].append(run_limit(work))
    for r in runners:
      rounds[f'{r}/head'].append(postauth_run(work, f'{head}/*', r, scratch))
      rounds[f'{r}/day'].append(postauth_run(work, f'{work}/live/*', r, scratch))
    print(f'  round {i + 1}: limit {rounds["limit"][-1].get("cpu", float("nan")):.2f} CPU s; '
          + '; '.join(f'{r} head {rounds[f"{r}/head"][-1].get("cpu", float("nan")):.2f}, '
                      f'day {rounds[f"{r}/day"][-1].get("cpu", float("nan")):.2f} CPU s' for r in runners),
          flush=True)
  for name, runs in rounds.items():
    errors = [x['error'] for x in runs if 'error' in x]
    if errors:
      print(f'  {name} FAILED: {errors[0]}')
  return rounds


def summarise(rounds: Dict, runners: List[str]) -> Dict:
  lim = median(rounds['limit'], 'cpu')
  stages = {k: median([{'v': x['stages'][k]} for x in rounds['limit'] if 'stages' in x], 'v')
            for k in (rounds['limit'][0].get('stages') or {})}
  n = next((x['events'] for x in rounds['limit'] if 'events' in x), 0)
  print(f'\nlimit (bench/limit.py, {n} events): {lim:.2f} CPU s '
        f'({", ".join(f"{k} {v:.2f}" for k, v in stages.items())})')
  out = {'limit_cpu': lim, 'limit_stages': stages, 'events': n}
  for r in runners:
    head, day = median(rounds[f'{r}/head'], 'cpu'), median(rounds[f'{r}/day'], 'cpu')
    wall = median(rounds[f'{r}/day'], 'wall')
    marginal, whole = (day - head) / lim, day / lim
    out[r] = {'head_cpu': head, 'day_cpu': day, 'day_wall': wall, 'marginal': marginal, 'whole': whole}
    print(f'{r:<12} head {head:5.2f} CPU s | day {day:5.2f} CPU s ({wall:5.2f} s wall) | '
          f'marginal ({day:.2f} - {head:.2f}) / {lim:.2f} = {marginal:4.1f}x (target 2x) | '
          f'whole {whole:4.1f}x (target 4x)')
  return out


def main(argv: Optional[List[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--rate-scale', type=float, default=1.4)
  ap.add_argument('--head', type=int, default=200, help='Live events of the head run.')
  ap.add_argument('--repeat', type=int, default=3, help='Interleaved rounds; medians count.')
  ap.add_argument('--runners', default='default,FnApiRunner',
                  help='"default" is `postauth run` without --runner (DirectRunner, Prism if built).')
  ap.add_argument('--work', default=None, help='Reuse a sample (and model) generated here before.')
  ap.add_argument('--out', default=os.path.join(BENCH_DIR, 'out'))
  a = ap.parse_args(argv)
  runners = a.runners.split(',')
  work = a.work or tempfile.mkdtemp(prefix='postauth-bench-marginal-')
  os.makedirs(work, exist_ok=True)
  if not os.path.exists(os.path.join(work, 'model', 'LATEST')):
    make_sample(work, a.identities, a.rate_scale)
    trained = launch('train', work)
    if 'error' in trained:
      print(f'train FAILED: {trained["error"]}')
      return 1
  scratch = tempfile.mkdtemp(prefix='scratch-', dir=work)
  head = os.path.join(work, 'head')
  n_head = cut_live(work, a.head, head)
  print(f'{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; sample {work}, head {n_head} events; '
        f'{a.repeat} interleaved rounds', flush=True)
  rounds = measure(work, head, runners, a.repeat, scratch)
  summary = summarise(rounds, runners)
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'marginal.json'), 'w') as f:
    json.dump({'cpus': os.cpu_count(), 'summary': summary, 'rounds': rounds}, f, indent=1)
  shutil.rmtree(scratch, ignore_errors=True)
  if not a.work:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
