"""Fixed start and marginal batch cost of `postauth run`, against baselines measured in the same run.

    python bench/startup.py [--identities 200] [--rate-scale 1.4] [--head 200] [--repeat 3]
                            [--runners DirectRunner,FnApiRunner]

Issue 15's two figures, side by side, because the machine is noisy:

* fixed start: `postauth run` (a whole process, as a user starts it: interpreter, imports,
  preflight, model load, pipeline construction, the job, exit) on the first ``--head`` live
  CloudTrail events, against an empty Beam batch job (Create -> Map) started the same way in
  the same venv on the same runner. The DirectRunner is measured as users get it: it starts
  Prism when it has a binary (here the project's `make prism` build, passed to the empty job
  too), else falls back to the FnApiRunner; the FnApiRunner is measured on its own as well.
  Each pair runs ``--repeat`` times, interleaved; medians count.
* marginal batch cost: (`postauth run` on the whole live day) minus (the same on the head),
  CPU seconds of the process tree, against the Beam-free limit (bench/beam_free.py: the
  project's parse, windows, enrichment, history, features, forest and rules in plain loops)
  on the same day.

The sample: ``generate --identities 200 --days 3 --rate-scale 1.4`` (~43k live events), the
model trained on its history days. Figures go to bench/out/startup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
# Run as a script: the repository root on the path (``bench.*`` modules), not this folder.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

from bench.job_runs import launch  # noqa: E402
from bench.sample import cut_live, make_sample  # noqa: E402

EMPTY_JOB = '''import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
with beam.Pipeline(options=PipelineOptions(sys.argv[1:])) as p:
  p | 'Create' >> beam.Create([1]) | 'Map' >> beam.Map(lambda x: x)
'''


def timed(cmd: List[str], cwd: str) -> Dict:
  """Wall seconds, CPU seconds (the process and every child it reaped) and peak RSS of ``cmd``."""
  t0 = time.perf_counter()
  with tempfile.TemporaryFile() as err:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
      err.seek(0)
      tail = err.read().decode(errors='replace').strip().splitlines()
      return {'error': tail[-1] if tail else f'exit {status}'}
  return {'wall': wall, 'cpu': usage.ru_utime + usage.ru_stime, 'rss_mib': usage.ru_maxrss / 1024}


def runner_args(runner: str, prism: Optional[str]) -> List[str]:
  args = [f'--runner={runner}']
  if runner == 'DirectRunner' and prism:
    args.append(f'--prism_location={prism}')  # what `postauth run` passes itself (pipeline/prism.py)
  return args


def empty_job(runner: str, prism: Optional[str], scratch: str) -> Dict:
  return timed([sys.executable, '-c', EMPTY_JOB] + runner_args(runner, prism), scratch)


def postauth_run(work: str, events: str, runner: str, scratch: str) -> Dict:
  return timed([sys.executable, '-m', 'postauth.pipeline.cli', 'run', f'--events={events}',
                f'--inventory={work}/inventory.csv', f'--model-dir={work}/model',
                f'--findings={scratch}/findings.jsonl', f'--dead-letters={scratch}/dead-letter.jsonl',
                f'--runner={runner}'], scratch)


def median(runs: List[Dict], key: str) -> float:
  ok = [r[key] for r in runs if key in r]
  return statistics.median(ok) if ok else float('nan')


def fixed_start(work: str, head: str, runners: List[str], prism: Optional[str], repeat: int,
                scratch: str) -> Dict:
  out: Dict[str, Dict] = {}
  for runner in runners:
    empty, run = [], []
    for _ in range(repeat):  # interleaved: both see the same spells of load
      empty.append(empty_job(runner, prism, scratch))
      run.append(postauth_run(work, f'{head}/*', runner, scratch))
    out[runner] = {'empty': empty, 'run_head': run}
    for name, runs in (('empty', empty), ('run_head', run)):
      errors = [r['error'] for r in runs if 'error' in r]
      if errors:
        print(f'  {runner} {name} FAILED: {errors[0]}')
    e, r = median(empty, 'wall'), median(run, 'wall')
    print(f'  {runner:<13} empty Create -> Map {e:5.2f} s wall ({median(empty, "cpu"):5.2f} CPU s) | '
          f'postauth run, head {r:5.2f} s wall ({median(run, "cpu"):5.2f} CPU s) | '
          f'fixed start {r / e:4.2f}x the empty job', flush=True)
  return out


def marginal(work: str, head: str, runners: List[str], scratch: str, fixed: Dict) -> Dict:
  out: Dict[str, Dict] = {}
  lim = launch('limit', work)
  if 'error' in lim:
    print(f'  limit FAILED: {lim["error"]}')
    return {'limit': lim}
  limit_cpu = sum(lim['stages'].values())
  print(f'  Beam-free limit on {lim["events"]} events: {limit_cpu:.2f} CPU s '
        f'({", ".join(f"{k} {v:.2f}" for k, v in lim["stages"].items())})', flush=True)
  for runner in runners:
    full = postauth_run(work, f'{work}/live/*', runner, scratch)
    if 'error' in full:
      print(f'  {runner} full run FAILED: {full["error"]}')
      continue
    head_cpu = median(fixed[runner]['run_head'], 'cpu')
    head_wall = median(fixed[runner]['run_head'], 'wall')
    cpu, wall = full['cpu'] - head_cpu, full['wall'] - head_wall
    out[runner] = {'full': full, 'marginal_cpu': cpu, 'marginal_wall': wall,
                   'ratio_cpu': cpu / limit_cpu}
    print(f'  {runner:<13} full day {full["wall"]:6.1f} s wall, {full["cpu"]:6.1f} CPU s | minus head: '
          f'{cpu:6.1f} CPU s ({wall:5.1f} s wall) | marginal {cpu / limit_cpu:4.1f}x the limit', flush=True)
  out['limit'] = lim
  return out


def main(argv: Optional[List[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--rate-scale', type=float, default=1.4, help='1.4: ~43k live events for 200 identities.')
  ap.add_argument('--head', type=int, default=200, help='Live events of the fixed-start run.')
  ap.add_argument('--repeat', type=int, default=3, help='Interleaved runs of each fixed-start pair.')
  ap.add_argument('--runners', default='DirectRunner,FnApiRunner')
  ap.add_argument('--work', default=None, help='Reuse a sample (and model) generated here before.')
  ap.add_argument('--out', default=os.path.join(BENCH_DIR, 'out'))
  a = ap.parse_args(argv)
  from postauth.pipeline.prism import local_binary
  prism = local_binary()
  runners = a.runners.split(',')
  work = a.work or tempfile.mkdtemp(prefix='postauth-bench-startup-')
  scratch = tempfile.mkdtemp(prefix='scratch-', dir=work)
  if not os.path.exists(os.path.join(work, 'model', 'LATEST')):
    counts = make_sample(work, a.identities, a.rate_scale)
    trained = launch('train', work)
    if 'error' in trained:
      print(f'train FAILED: {trained["error"]}')
      return 1
  else:
    counts = {'live_events': sum(1 for p in os.listdir(f'{work}/live') for _ in open(f'{work}/live/{p}'))}
  head = os.path.join(work, 'head')
  n_head = cut_live(work, a.head, head)
  print(f'{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; sample {work}: {counts["live_events"]} live '
        f'events, head {n_head}; Prism binary: {prism or "none (the DirectRunner falls back)"}\n'
        f'\nfixed start (median of {a.repeat} interleaved runs, whole processes):', flush=True)
  fixed = fixed_start(work, head, runners, prism, a.repeat, scratch)
  print('\nmarginal batch cost (full day minus head, CPU seconds of the process tree):', flush=True)
  marg = marginal(work, head, runners, scratch, fixed)
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'startup.json'), 'w') as f:
    json.dump({'cpus': os.cpu_count(), 'prism': prism, 'fixed': fixed, 'marginal': marg}, f, indent=1)
  shutil.rmtree(scratch, ignore_errors=True)
  if not a.work:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
