"""Throughput of postauth end to end and per stage, against a Beam-free limit and Beam's own
anomaly detection, all measured in the same run (issue 7).

    python bench/pipeline.py [--identities 200] [--sizes 1e4,1e5] [--id-sizes 100,1000,10000]
                             [--window-sizes 3600,14400] [--streaming-events 3000] [--no-scaling]

What it measures, on one sample from ``pipeline/generate.py`` (train on the history days,
detect on the live day):

* ``postauth train`` and ``postauth run`` (batch: DirectRunner, and FnApiRunner with two
  worker processes), and ``run --streaming`` (DirectRunner replay, on the first
  ``--streaming-events`` live events: the streaming DirectRunner does ~100 events/s);
* the batch detection job cut after each stage (parse; + windows; + enrich; + history;
  + score; the whole job = + findings and sinks): each stage's cost is the difference
  between consecutive cuts, so the slowest stage is the largest difference;
* "limit": the same project code (RecordParser, WindowAggregate, context_for,
  IdentityHistory, feature_vector, DetectionModel.score_features, rules) called in plain
  Python loops without Beam, per stage, with the forest scored in one vectorised call per
  cohort; and a vectorised numpy floor (orjson + np.unique window counts + one
  IsolationForest.score_samples) that does less work than postauth but shows what
  vectorisation could reach;
* "peer": Apache Beam's ``apache_beam.ml.anomaly`` ``AnomalyDetection`` with its PyOD
  ``IForest`` detector on the same feature vectors (the scoring stage only: it has no
  parser, windows or per-identity history), minus a Create -> Map pipeline on the same rows;
* scaling with events, identities and window size: wall time, events/s, events per CPU
  second and peak RSS of each job (every job runs in its own process; RSS from wait4),
  plotted to bench/out/pipeline_scaling.png.

Every job runs in a child process so peak memory is per job; events/s are wall-clock of the
job itself (interpreter and import time excluded), "per core" (ev/cpu-s) divides by the CPU
seconds the job used (its worker processes included). Stage attribution and ratios use CPU
seconds: on a shared machine wall time also counts other processes' turns. Compare ratios.

Modules: bench/job_runs.py (the jobs, one process each), bench/beam_free.py (the limit and
the floor), bench/stage_report.py (the tables), bench/scaling.py (the sweep and its plot);
bench/startup.py measures the fixed start and the marginal ratio of issue 15.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
# Run as a script: the repository root on the path (``bench.*`` modules), not this folder.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

from bench.job_runs import STAGES, child_main, launch  # noqa: E402
from bench.sample import cut_live, make_sample  # noqa: E402
from bench.scaling import plot, scaling  # noqa: E402
from bench.stage_report import fmt_row, report  # noqa: E402


def main_section(a, work: str) -> Dict:
  ws = a.window_size
  t = time.perf_counter()
  counts = make_sample(work, a.identities, a.rate_scale, a.days)
  print(f'sample: {a.identities} identities, {counts["history_events"]} history events '
        f'({a.days - 1} days), {counts["live_events"]} live events (1 day); generated in '
        f'{time.perf_counter() - t:.0f}s -> {work}', flush=True)
  n_hist, n_live = counts['history_events'], counts['live_events']
  res: Dict[str, Dict] = {}
  res['train'] = launch('train', work, ws)
  print(fmt_row('postauth train (batch, DirectRunner)', n_hist, res['train']), flush=True)
  res['run'] = launch('run', work, ws)
  print(fmt_row('postauth run (batch, DirectRunner)', n_live, res['run']), flush=True)
  res['run_mp'] = launch('run', work, ws, beam_args=[
      '--runner=FnApiRunner', '--direct_num_workers=2', '--direct_running_mode=multi_processing'])
  print(fmt_row('postauth run (batch, FnApiRunner 2 processes)', n_live, res['run_mp']), flush=True)
  stream_dir = os.path.join(work, 'live-head')
  n_stream = cut_live(work, a.streaming_events, stream_dir)
  res['stream'] = launch('run', work, ws, events=f'{stream_dir}/*', beam_args=['--streaming'])
  print(fmt_row(f'postauth run --streaming (first {n_stream} events)', n_stream, res['stream']), flush=True)
  # Each cut (and the whole job) runs --repeat times; the fastest run counts (less noise).
  for stage in ('startup',) + STAGES:
    runs = [res['run']] if stage == 'full' else []
    for _ in range(a.repeat - (1 if stage == 'full' else 0)):
      runs.append(launch('run', work, ws) if stage == 'full' else launch('cut', work, ws, stage=stage))
    ok = [r for r in runs if 'error' not in r]
    res[f'cut_{stage}'] = min(ok, key=lambda r: r['cpu']) if ok else runs[0]
    print(fmt_row(f'  batch job cut after {stage} (best of {len(runs)})', n_live, res[f'cut_{stage}']),
          flush=True)
  features = os.path.join(work, 'features.npy')
  res['limit'] = launch('limit', work, ws, features_out=features)
  res['floor'] = launch('floor', work, ws)
  res['peer'] = launch('peer', work, ws, features=features)
  if 'error' in res['peer']:
    print(f'  peer FAILED: {res["peer"]["error"]}\n{res["peer"].get("stderr", "")[-1500:]}')
  report(res, n_hist, n_live, n_stream)
  return {'counts': counts, 'results': res, 'streaming_events': n_stream}


def _floats(text: str) -> List[float]:
  return [float(v) for v in text.split(',') if v]


def main(argv: Optional[List[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--job', help=argparse.SUPPRESS)
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=3, help='Sample days: all but the last are history.')
  ap.add_argument('--rate-scale', type=float, default=1.0,
                  help='Event rate of the main sample (1.0: ~28k live events for 200 identities).')
  ap.add_argument('--window-size', type=int, default=3600)
  ap.add_argument('--streaming-events', type=int, default=3000,
                  help='Live events replayed through the streaming DirectRunner (~100 events/s).')
  ap.add_argument('--sizes', type=_floats, default=[1e4, 1e5],
                  help='Live events per scaling point (1e6 is opt-in: several minutes per job on 2 cores).')
  ap.add_argument('--id-sizes', type=_floats, default=[100, 1000, 10000])
  ap.add_argument('--id-events', type=float, default=1.5e4, help='Live events at each identity point.')
  ap.add_argument('--window-sizes', type=_floats, default=[3600, 14400, 86400])
  ap.add_argument('--repeat', type=int, default=2, help='Runs of each batch cut; the fastest counts.')
  ap.add_argument('--no-scaling', action='store_true')
  ap.add_argument('--no-main', action='store_true')
  ap.add_argument('--out', default=os.path.join(BENCH_DIR, 'out'))
  ap.add_argument('--keep', action='store_true', help='Keep the generated samples.')
  a = ap.parse_args(argv)
  if a.job:
    child_main(a.job)
    return 0
  a.id_sizes = [int(v) for v in a.id_sizes]
  a.window_sizes = [int(v) for v in a.window_sizes]
  root = tempfile.mkdtemp(prefix='postauth-bench-')
  started = time.perf_counter()
  summary: Dict = {'cpus': os.cpu_count(), 'load': os.getloadavg()}
  print(f'{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; ev/s = events per wall second of the '
        f'job, ev/cpu-s = per CPU second (per core), MiB = peak RSS of the job\'s process')
  try:
    if not a.no_main:
      summary['main'] = main_section(a, os.path.join(root, 'main'))
    if not a.no_scaling:
      summary['scaling'] = scaling(a, os.path.join(root, 'scale'))
      png = plot(summary['scaling'], os.path.join(a.out, 'pipeline_scaling.png'))
      if png:
        print(f'\nplot: {png}')
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, 'pipeline.json'), 'w') as f:
      json.dump(summary, f, indent=1, default=str)
    print(f'figures: {os.path.join(a.out, "pipeline.json")}; total {time.perf_counter() - started:.0f}s')
  finally:
    if not a.keep:
      shutil.rmtree(root, ignore_errors=True)
    else:
      print(f'samples kept in {root}')
  return 0


if __name__ == '__main__':
  sys.exit(main())