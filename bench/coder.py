"""Bytes and encode+decode time of what the batch job shuffles per window: Beam's fallback vs ours.

    python bench/coder.py [--identities 100] [--days 2] [--repeat 5]
    python bench/coder.py --versus /tmp/base [--rounds 4]   # end to end, against another checkout

Builds realistic pane and window aggregates from a generated sample with the project's
own code (RecordParser, WindowAggregate), then round-trips each through:

* Beam's fallback (``registry.get_coder(Any)``: FastPrimitivesCoder, which pickles a
  WindowAggregate or an IdentityWindow whole), what every shuffle used before;
* ``WindowAggregateCoder`` / ``IdentityWindowCoder`` (transforms/aggregate.py, windowing.py);
* with ``--versions FILE`` (a batch run's ``findings.versions.jsonl``), the finding versions
  through ``PackedCoder`` (transforms/packed.py), as the per-identity groupings carry them.

A window crosses three shuffles in the batch job: its panes' accumulators (pane combine),
its own accumulator (sliding merge) and the IdentityWindow (history); figures are per element.

``--versus DIR`` runs the jobs of bench/pipeline.py (``postauth train``, ``postauth run`` in
process and on two FnApiRunner worker processes, and the run cut after windows / history) with this checkout's code and with DIR's (e.g.
``git worktree add /tmp/base <commit>``), interleaved on one sample, and prints the CPU
seconds of each (best of ``--rounds``): on a shared machine interleaving spreads the noise.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing
from typing import Dict, List

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

import apache_beam as beam  # noqa: E402
import orjson  # noqa: E402

from postauth.transforms.aggregate import WindowAggregateCoder  # noqa: E402
from postauth.transforms.packed import PackedCoder  # noqa: E402
from postauth.transforms.windowing import IdentityWindowCoder  # noqa: E402


def sample_windows(identities: int, days: int, window_size: int = 3600, period: int = 900):
  """(pane aggregates, IdentityWindows, event count) of a generated sample, as bench/beam_free.py builds them."""
  from bench.beam_free import plain_parse, plain_windows
  from postauth.pipeline.generate import generate
  work = tempfile.mkdtemp(prefix='postauth-coder-')
  try:
    generate(work, identities, days, 7)
    paths = [p for p in sorted(glob.glob(f'{work}/**/*', recursive=True))
             if os.path.isfile(p) and ('/history/' in p or '/live/' in p)]
    events = plain_parse(paths)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  panes, windows = plain_windows(events, window_size, period)
  return list(panes.values()), windows, len(events)


def round_trip(coder: beam.coders.Coder, values: List, repeat: int) -> Dict[str, float]:
  """Best of ``repeat`` timed passes: µs per element (encode + decode) and bytes per element."""
  impl = coder.get_impl()
  best = float('inf')
  size = 0
  for _ in range(repeat):
    t = time.perf_counter()
    encoded = [impl.encode(v) for v in values]
    decoded = [impl.decode(b) for b in encoded]
    best = min(best, time.perf_counter() - t)
    size = sum(map(len, encoded))
  assert decoded == values, f'{coder} does not round-trip'
  return {'us': best / len(values) * 1e6, 'bytes': size / len(values)}


def job_cpu(checkout: str, spec: Dict) -> float:
  """CPU seconds of one bench/pipeline.py job run with ``checkout``'s code, in its own process."""
  scratch = tempfile.mkdtemp(prefix='scratch-', dir=spec['work'])
  spec = dict(spec, scratch=scratch, window_size=3600)
  env = dict(os.environ, PYTHONPATH=checkout)
  out = subprocess.run([sys.executable, os.path.join(checkout, 'bench', 'pipeline.py'), '--job',
                        json.dumps(spec)], env=env, cwd=scratch, capture_output=True, text=True)
  shutil.rmtree(scratch, ignore_errors=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith('BENCH ')]
  if out.returncode or not lines:
    raise RuntimeError(f'{checkout}: {spec["kind"]} failed: {out.stderr[-2000:]}')
  return json.loads(lines[-1][len('BENCH '):])['cpu']


def versus(other: str, identities: int, rounds: int) -> None:
  """Interleaved CPU seconds of the batch jobs, this checkout vs ``other``, on one sample."""
  from postauth.pipeline.generate import generate
  work = tempfile.mkdtemp(prefix='postauth-coder-ab-')
  try:
    counts = generate(work, identities, 3, 7, rate_scale=1.0)
    print(f'sample: {identities} identities, {counts["history_events"]} history events, '
          f'{counts["live_events"]} live events; best of {rounds} interleaved rounds, CPU s')
    job_cpu(ROOT, {'kind': 'train', 'work': work})  # the model both runs read
    jobs = {'train': {'kind': 'train', 'work': work},
            'run': {'kind': 'run', 'work': work},
            'run FnApiRunner x2': {'kind': 'run', 'work': work, 'beam_args': [
                '--runner=FnApiRunner', '--direct_num_workers=2',
                '--direct_running_mode=multi_processing']},
            'run cut after windows': {'kind': 'cut', 'stage': 'windows', 'work': work},
            'run cut after history': {'kind': 'cut', 'stage': 'history', 'work': work}}
    best: Dict = {}
    for _ in range(rounds):
      for name, spec in jobs.items():
        for label, checkout in (('other', other), ('this', ROOT)):
          cpu = job_cpu(checkout, spec)
          best[(name, label)] = min(best.get((name, label), float('inf')), cpu)
    print(f'  {"job":<24} {"other":>7} {"this":>7} {"change":>7}')
    for name in jobs:
      a, b = best[(name, 'other')], best[(name, 'this')]
      print(f'  {name:<24} {a:7.2f} {b:7.2f} {(b - a) / a:+7.1%}')
  finally:
    shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--identities', type=int, default=100)
  ap.add_argument('--days', type=int, default=2)
  ap.add_argument('--repeat', type=int, default=5)
  ap.add_argument('--versus', help='Another checkout: compare the batch jobs end to end.')
  ap.add_argument('--rounds', type=int, default=4)
  ap.add_argument('--versions', help='A batch run\'s findings.versions.jsonl: also round-trip its '
                  'finding versions through PackedCoder (the per-identity groupings, the files).')
  a = ap.parse_args(argv)
  if a.versus:
    versus(os.path.abspath(a.versus), 200, a.rounds)  # the main sample of bench/pipeline.py
    return 0
  panes, windows, n_events = sample_windows(a.identities, a.days)
  print(f'{n_events} events -> {len(panes)} pane aggregates, {len(windows)} identity-windows')
  fallback = beam.coders.registry.get_coder(typing.Any)
  cases = [('pane accumulator (pane combine)', [p for p in panes], WindowAggregateCoder()),
           ('window accumulator (sliding merge)', [w.agg for w in windows], WindowAggregateCoder()),
           ('IdentityWindow (history shuffle)', windows, IdentityWindowCoder())]
  if a.versions:
    with open(a.versions, 'rb') as f:
      versions = [orjson.loads(line) for line in f if line.strip()]
    cases.append((f'finding version ({len(versions)}, packed)', versions, PackedCoder()))
  print(f'  {"element":<36} {"fallback us":>11} {"bytes":>7} {"ours us":>8} {"bytes":>7} {"speed-up":>8}')
  total = {'before': 0.0, 'after': 0.0}
  for name, values, ours in cases:
    before, after = round_trip(fallback, values, a.repeat), round_trip(ours, values, a.repeat)
    total['before'] += before['us'] * len(values) / 1e6
    total['after'] += after['us'] * len(values) / 1e6
    print(f'  {name:<36} {before["us"]:11.1f} {before["bytes"]:7.0f} {after["us"]:8.1f} '
          f'{after["bytes"]:7.0f} {before["us"] / after["us"]:7.1f}x')
  print(f'  all of these shuffles of this sample: {total["before"]:.2f} s -> {total["after"]:.2f} s '
        f'of encode+decode ({total["before"] / n_events * 1e6:.1f} -> '
        f'{total["after"] / n_events * 1e6:.1f} us per event)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
