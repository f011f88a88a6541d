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
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
# This file is named like the `pipeline` package: keep its own folder off the import path.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

import numpy as np  # noqa: E402
import orjson  # noqa: E402

STAGES = ('parse', 'windows', 'enrich', 'history', 'score', 'full')
STAGE_WORDS = {'startup': 'startup (an empty Beam job: Create -> Map)',
               'parse': 'parse (read files, decode, normalise)',
               'windows': 'windows (pane aggregates -> sliding windows)',
               'enrich': 'enrich (inventory side input)',
               'history': 'history (group per identity, fold profiles)',
               'score': 'score (features, forest, rules)',
               'full': 'findings + sinks (merge, triage, dedup, write)'}
LIVE_EVENTS_PER_IDENTITY = 140.0  # live-day events per identity at --rate-scale 1 (measured)


# -- the jobs (each runs in its own process: `bench/pipeline.py --job JSON`) ------------------

def _cpu() -> float:
  s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _common(work: str, window_size: int) -> List[str]:
  return [f'--inventory={work}/inventory.csv', f'--model-dir={work}/model',
          f'--window-size={window_size}']


def job_train(spec: Dict) -> Dict:
  from postauth.pipeline.cli import train
  out = train([f'--events={spec["work"]}/history/*'] + _common(spec['work'], spec['window_size'])
              + spec.get('beam_args', []))
  return {'counters': out['counters']}


def job_run(spec: Dict) -> Dict:
  from postauth.pipeline.cli import run
  work = spec['work']
  findings = os.path.join(spec['scratch'], 'findings.jsonl')
  out = run([f'--events={spec.get("events") or work + "/live/*"}', f'--findings={findings}',
             f'--dead-letters={spec["scratch"]}/dead-letter.jsonl']
            + _common(work, spec['window_size']) + spec.get('beam_args', []))
  return {'counters': out['counters']}


def build_cut(p, options, stage: str) -> None:
  """The batch detection job of pipeline/detect.py, built with its transforms, cut after ``stage``."""
  import apache_beam as beam
  from apache_beam.utils import shared
  from postauth.pipeline.options import DetectOptions, EventOptions, WindowOptions
  from postauth.transforms.history import TrackHistory
  from postauth.transforms.inventory import EnrichWindows, InventorySnapshots
  from postauth.transforms.parse import ParseFiles
  from postauth.transforms.score import ScoreWindows
  from postauth.transforms.windowing import IdentityWindows
  ev, win, det = (options.view_as(EventOptions), options.view_as(WindowOptions),
                  options.view_as(DetectOptions))
  if stage == 'startup':
    p | 'Create' >> beam.Create([1]) | 'Drain' >> beam.Map(lambda _: None)
    return
  pc = (p | 'ParseFiles' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files)).events
  if STAGES.index(stage) >= STAGES.index('windows'):
    pc = pc | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period)
  if STAGES.index(stage) >= STAGES.index('enrich'):
    pc = pc | 'Enrich' >> EnrichWindows(p | 'Inventory' >> InventorySnapshots(det.inventory))
  handle = shared.Shared()
  if STAGES.index(stage) >= STAGES.index('history'):
    pc = (pc | 'History' >> TrackHistory(det.model_dir, det.model_version,
                                          period_seconds=win.window_period,
                                          shared_handle=handle))['windows']
  if STAGES.index(stage) >= STAGES.index('score'):
    pc = pc | 'Score' >> ScoreWindows(det.model_dir, det.threshold, det.model_version,
                                      window_period=win.window_period, shared_handle=handle)
  pc | 'Drain' >> beam.Map(lambda _: None)


def job_cut(spec: Dict) -> Dict:
  from postauth.pipeline.cli import _run_pipeline, pipeline_options
  options = pipeline_options([f'--events={spec["work"]}/live/*']
                             + _common(spec['work'], spec['window_size']) + spec.get('beam_args', []))
  _run_pipeline(lambda p: build_cut(p, options, spec['stage']), options)
  return {}


def _time(stages: Dict[str, float], name: str, t0: float) -> float:
  t = time.process_time()  # CPU seconds, like the Beam jobs' figures (the machine is shared)
  stages[name] = t - t0
  return t


def plain_parse(paths: List[str]) -> List:
  """Every event the project's parser gets from the files, in plain loops (no Beam)."""
  from postauth.transforms.parse import RecordParser, read_all
  from postauth.transforms.records import split_records
  parser = RecordParser()
  events = []
  for path in paths:
    for rec in split_records(read_all(path), path):
      e = parser.parse(rec)
      if not isinstance(e, str):
        events.append(e)
  return events


def plain_windows(events: List, window_size: int = 3600, period: int = 900):
  """(pane aggregates by (identity, pane start), IdentityWindows) as the windowing step builds them."""
  from postauth.domain.window import WindowAggregate
  from postauth.transforms.windowing import IdentityWindow
  panes: Dict = {}
  for e in events:
    key = (e.identity, int(e.event_time // period) * period)
    agg = panes.get(key)
    if agg is None:
      agg = panes[key] = WindowAggregate()
    agg.add(e, period)
  wins: Dict = {}
  for (identity, start), agg in panes.items():
    for k in range(window_size // period):
      key = (identity, start - k * period)
      acc = wins.get(key)
      if acc is None:
        acc = wins[key] = WindowAggregate()
      acc.merge(agg)
  windows = [IdentityWindow(i, float(s), float(s + window_size), a) for (i, s), a in wins.items()]
  return panes, windows


def limit(pattern: str, inventory: str, model_dir: str, window_size: int = 3600,
          period: int = 900, features_out: Optional[str] = None) -> Dict:
  """The batch detection job's work with the project's own code, in plain loops, no Beam."""
  from postauth.models.features import feature_vector
  from postauth.models.history import IdentityHistory
  from postauth.models.model import DetectionModel
  from postauth.transforms import rules
  from postauth.transforms.inventory import context_for, read_snapshot
  model = DetectionModel.load(model_dir)
  stages: Dict[str, float] = {}
  t = time.process_time()
  events = plain_parse(sorted(glob.glob(pattern)))
  t = _time(stages, 'parse', t)
  _, windows = plain_windows(events, window_size, period)
  t = _time(stages, 'windows', t)
  rows = read_snapshot(inventory).rows
  enriched = [(w, context_for(w.identity, w.agg.identity_type, rows)) for w in windows]
  t = _time(stages, 'enrich', t)
  by_identity = defaultdict(list)
  for w, ctx in enriched:
    by_identity[w.identity].append((w, ctx))
  judged = []
  warmup = int(model.manifest.get('hyperparameters', {}).get('warmup_days', 1))
  for identity, items in by_identity.items():
    hist = IdentityHistory(model.profiles.get(identity))
    for w, ctx in sorted(items, key=lambda wc: (wc[0].window_end, wc[0].window_start)):
      before = hist.observe(w.agg, w.window_end)
      judged.append((w, ctx, before, hist.days_of_history(w.window_end)))
  t = _time(stages, 'history', t)
  ready = [j for j in judged if j[3] >= warmup]
  x = (np.vstack([feature_vector(w.agg, prof, w.window_end) for w, _, prof, _ in ready])
       if ready else np.zeros((0, 1)))
  t = _time(stages, 'features', t)
  cohorts = np.asarray([model.cohort_for(ctx) for _, ctx, _, _ in ready])
  scores = np.zeros(len(ready))
  for cohort in set(cohorts.tolist()):
    idx = np.flatnonzero(cohorts == cohort)
    scores[idx] = model.score_features(x[idx], cohort)[0]  # one score_samples call per cohort
  t = _time(stages, 'forest', t)
  fired = [rules.evaluate(w, ctx, prof, rules.RuleConfig()) for w, ctx, prof, _ in judged]
  t = _time(stages, 'rules', t)
  flagged = [{'identity': w.identity, 'window_start': w.window_start, 'window_end': w.window_end,
              'score': float(s), 'context': ctx, 'actions': w.agg.actions}
             for (w, ctx, _, _), s in zip(ready, scores) if s >= 3.0]
  with open(os.devnull, 'wb') as f:
    for row in flagged:
      f.write(orjson.dumps(row) + b'\n')
  _time(stages, 'sink', t)
  if features_out:
    np.save(features_out, x)
  return {'events': len(events), 'windows': len(windows), 'scored': len(ready),
          'flagged': len(flagged), 'identities': len(by_identity), 'stages': stages}


def job_limit(spec: Dict) -> Dict:
  work = spec['work']
  return limit(f'{work}/live/*', f'{work}/inventory.csv', f'{work}/model', spec['window_size'],
               features_out=spec.get('features_out'))


def numpy_floor(paths: List[str], size: int = 3600, period: int = 900) -> Dict:
  """Less than postauth does (counts only, no profiles): orjson + numpy windows + one forest call."""
  t0 = time.perf_counter()
  ids, times = [], []
  for p in paths:
    with open(p, 'rb') as f:
      data = f.read()
    if data[:2] == b'\x1f\x8b':
      data = gzip.decompress(data)
    if data.lstrip()[:12].startswith(b'{"Records"'):
      recs = orjson.loads(data)['Records']
    else:
      recs = [orjson.loads(l) for l in data.splitlines() if l.strip()]
    for r in recs:
      ui = r['userIdentity']
      ids.append((ui.get('sessionContext') or {}).get('sessionIssuer', {}).get('arn') or ui.get('arn'))
      times.append(r['eventTime'].rstrip('Z'))
  t = np.array(times, dtype='datetime64[s]').astype(np.int64)
  _, ident = np.unique(np.array(ids), return_inverse=True)
  pane = t // period
  k = size // period
  win = (pane[:, None] - np.arange(k)[None, :]).ravel()
  who = np.repeat(ident, k)
  keys, counts = np.unique(who * 10**9 + win, return_counts=True)
  from sklearn.ensemble import IsolationForest
  x = np.log1p(counts.astype(float))[:, None].repeat(4, axis=1)
  IsolationForest(n_estimators=100, random_state=0).fit(x[:2000]).score_samples(x)
  return {'events': len(t), 'windows': len(keys), 'seconds': time.perf_counter() - t0}


def job_floor(spec: Dict) -> Dict:
  return numpy_floor(sorted(glob.glob(f'{spec["work"]}/live/*')), spec['window_size'])


def job_peer(spec: Dict) -> Dict:
  """Beam's AnomalyDetection + PyOD IForest on the feature vectors, minus Create -> Map on them."""
  import pickle
  import apache_beam as beam
  from apache_beam.ml.anomaly.detectors.pyod_adapter import PyODFactory
  from apache_beam.ml.anomaly.transforms import AnomalyDetection
  from apache_beam.options.pipeline_options import PipelineOptions
  from pyod.models.iforest import IForest
  from postauth.models.features import FEATURE_NAMES
  x = np.load(spec['features'])
  uri = os.path.join(spec['scratch'], 'pyod-iforest.pkl')
  with open(uri, 'wb') as f:
    pickle.dump(IForest(n_estimators=100, random_state=0).fit(x), f)
  rows = [beam.Row(**{n: float(v) for n, v in zip(FEATURE_NAMES, r)}) for r in x]
  out = {}
  for name in ('create_only', 'anomaly_detection'):
    c0 = _cpu()
    with beam.Pipeline(options=PipelineOptions(spec.get('beam_args', []))) as p:
      pc = p | 'Create' >> beam.Create(rows, reshuffle=False)
      if name == 'anomaly_detection':
        pc = pc | 'AnomalyDetection' >> AnomalyDetection(
            PyODFactory.create_detector(uri, features=list(FEATURE_NAMES)))
      pc | 'Drain' >> beam.Map(lambda _: None)
    out[name] = _cpu() - c0  # CPU seconds of the job (this process and any workers)
  out['windows'] = len(rows)
  return out


JOBS = {'train': job_train, 'run': job_run, 'cut': job_cut, 'limit': job_limit,
        'floor': job_floor, 'peer': job_peer}


def child_main(spec_json: str) -> None:
  import logging
  logging.basicConfig(level=logging.ERROR)
  spec = json.loads(spec_json)
  c0, t0 = _cpu(), time.perf_counter()
  out = JOBS[spec['kind']](spec)
  out.update(wall=time.perf_counter() - t0, cpu=_cpu() - c0)
  print('BENCH ' + json.dumps(out, default=str), flush=True)


# -- the parent: launch jobs, collect figures ---------------------------------------------------

def launch(kind: str, work: str, window_size: int = 3600, **spec) -> Dict:
  """Runs one job in a child process; adds its peak RSS (MiB, from wait4)."""
  scratch = tempfile.mkdtemp(prefix='scratch-', dir=work)
  spec.update(kind=kind, work=work, window_size=window_size, scratch=scratch)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--job', json.dumps(spec)],
                            stdout=out, stderr=err, env=env, cwd=scratch)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    text = out.read().decode(errors='replace')
    lines = [l for l in text.splitlines() if l.startswith('BENCH ')]
    if proc.returncode or not lines:
      tail = err.read().decode(errors='replace')[-3000:]
      return {'error': f'exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else text[-300:]}',
              'stderr': tail}
  result = json.loads(lines[-1][len('BENCH '):])
  result['rss_mib'] = usage.ru_maxrss / 1024
  shutil.rmtree(scratch, ignore_errors=True)
  return result


def make_sample(work: str, identities: int, rate_scale: float, days: int = 3, seed: int = 7) -> Dict:
  from postauth.pipeline.generate import generate
  counts = generate(work, identities, days, seed, rate_scale=rate_scale)
  return counts


def cut_live(work: str, n: int, dest: str) -> int:
  """The first ``n`` live events (in time order) as one JSON-lines file, for the streaming replay."""
  os.makedirs(dest, exist_ok=True)
  lines: List[bytes] = []
  for p in sorted(glob.glob(f'{work}/live/*')):
    with open(p, 'rb') as f:
      lines += [l for l in f.read().splitlines() if l.strip()]
  lines = lines[:n]
  with open(os.path.join(dest, 'live-head.jsonl'), 'wb') as f:
    f.write(b'\n'.join(lines) + b'\n')
  return len(lines)


def eps(events: int, r: Dict, key: str = 'wall') -> float:
  return events / r[key] if r.get(key) else float('nan')


def fmt_row(name: str, events: int, r: Dict, note: str = '') -> str:
  if 'error' in r:
    return f'  {name:<44} FAILED: {r["error"]}'
  return (f'  {name:<44} {r["wall"]:7.1f}s {eps(events, r):9.0f} ev/s {eps(events, r, "cpu"):9.0f} ev/cpu-s'
          f' {r["rss_mib"]:6.0f} MiB {note}')


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


def report(res: Dict, n_hist: int, n_live: int, n_stream: int) -> None:
  lim = res['limit']
  if 'error' in lim:
    print(f'limit FAILED: {lim["error"]}')
    return
  ls = lim['stages']
  limit_total = sum(ls.values())
  print(f'\nlimit (project code in plain loops, no Beam): {limit_total:.2f} CPU s, '
        f'{n_live / limit_total:.0f} ev/cpu-s; {lim["windows"]} windows, {lim["scored"]} scored, '
        f'{lim["identities"]} identities')
  fl = res['floor']
  if 'error' not in fl:
    print(f'numpy floor (orjson + np.unique counts + 1 forest call; less work): {fl["cpu"]:.2f} CPU s, '
          f'{n_live / fl["cpu"]:.0f} ev/cpu-s')
  # Per stage: differences of consecutive cuts vs the same stage without Beam.
  limit_of = {'parse': ls['parse'], 'windows': ls['windows'], 'enrich': ls['enrich'],
              'history': ls['history'], 'score': ls['features'] + ls['forest'] + ls['rules'],
              'full': ls['sink']}
  print('\nper stage, CPU seconds (batch job, DirectRunner; stage = cut after it minus cut before it):')
  print(f'  {"stage":<50} {"postauth":>9} {"limit":>8} {"ratio":>7}  share')
  cuts_ok = all('error' not in res[f'cut_{s}'] for s in ('startup',) + STAGES)
  stage_s = {}
  if cuts_ok:
    prev = res['cut_startup']['cpu']
    print(f'  {STAGE_WORDS["startup"]:<50} {prev:8.2f}s (subtracted)')
    for s in STAGES:
      stage_s[s] = max(res[f'cut_{s}']['cpu'] - prev, 0.0)
      prev = res[f'cut_{s}']['cpu']
    total = res['cut_full']['cpu'] - res['cut_startup']['cpu']
    for s in STAGES:
      ratio = stage_s[s] / limit_of[s] if limit_of[s] > 1e-4 else float('inf')
      print(f'  {STAGE_WORDS[s]:<50} {stage_s[s]:8.2f}s {limit_of[s]:7.3f}s {ratio:6.1f}x  '
            f'{stage_s[s] / total:5.0%}')
    if any(v <= 0 for v in stage_s.values()):
      print('  (a 0.00s stage: its cut was not slower than the one before; noise exceeds it at this size)')
    slowest = max(STAGES, key=lambda s: stage_s[s])
    print(f'  slowest stage: {STAGE_WORDS[slowest]} ({stage_s[slowest]:.1f}s of {total:.1f}s)')
    print('  limit detail: ' + ', '.join(f'{k} {v:.3f}s' for k, v in ls.items()))
  peer = res['peer']
  print('\nratios (same events, same windows, same run; CPU seconds):')
  full = res['cut_full']
  print(f'  postauth run batch / limit:            {full["cpu"] / limit_total:6.1f}x the CPU time')
  if cuts_ok:
    print(f'  (postauth run - startup) / limit:      {total / limit_total:6.1f}x the CPU time')
  if 'error' not in res['run_mp']:
    print(f'  run FnApiRunner x2 / run DirectRunner: {res["run_mp"]["cpu"] / full["cpu"]:6.1f}x the CPU time, '
          f'{res["run_mp"]["wall"] / full["wall"]:.1f}x the wall time')
  if 'error' not in res['stream']:
    print(f'  streaming / batch (events per CPU s):  {eps(n_live, full, "cpu") / eps(n_stream, res["stream"], "cpu"):6.1f}x slower')
  if 'error' not in res['train']:
    print(f'  train per event / run per event:       '
          f'{(res["train"]["cpu"] / n_hist) / (full["cpu"] / n_live):6.1f}x')
  if 'error' not in fl:
    print(f'  postauth run batch / numpy floor:      {full["cpu"] / fl["cpu"]:6.1f}x the CPU time')
  if 'error' not in peer:
    w = peer['windows']
    peer_s = max(peer['anomaly_detection'] - peer['create_only'], 1e-6)
    print(f'  peer (Beam AnomalyDetection + PyOD IForest) on {w} feature vectors: '
          f'{peer["anomaly_detection"]:.2f} CPU s incl. Create, {peer_s:.2f} net = {w / peer_s:.0f} windows/cpu-s')
    if cuts_ok:
      ours = max(stage_s['score'], 1e-3)
      if stage_s['score'] < 0.05:
        print('  postauth score stage below the resolution of cut differences here (use more events)')
      else:
        print(f'  postauth score stage: {ours:.2f} CPU s for the same windows = {w / ours:.0f} windows/cpu-s;'
                f' postauth score / peer score: {ours / peer_s:.2f}x the CPU time')
      print(f'  limit score (features + forest + rules): {limit_of["score"]:.2f}s; '
            f'peer / limit: {peer_s / max(limit_of["score"], 1e-6):.1f}x')
      ingest = stage_s['parse'] + stage_s['windows'] + stage_s['enrich'] + stage_s['history']
      print(f'  a peer job would still need parse+windows+enrich+history ({ingest:.1f}s here): '
            f'postauth run - startup / (that + peer) = {total / (ingest + peer_s):.2f}x')


# -- scaling -----------------------------------------------------------------------------------

def scale_point(root: str, label: str, identities: int, live_events: float, window_size: int,
                days: int = 3) -> Dict:
  work = os.path.join(root, label)
  rate = live_events / (LIVE_EVENTS_PER_IDENTITY * identities)
  t = time.perf_counter()
  counts = make_sample(work, identities, rate, days)
  gen = time.perf_counter() - t
  train = launch('train', work, window_size)
  run = launch('run', work, window_size)
  lim = launch('limit', work, window_size)
  point = {'label': label, 'identities': identities, 'window_size': window_size,
           'live_events': counts['live_events'], 'history_events': counts['history_events'],
           'generate_s': gen, 'train': train, 'run': run, 'limit': lim}
  n = counts['live_events']
  lim_s = sum(lim['stages'].values()) if 'stages' in lim else float('nan')
  active = lim.get('identities', '?')
  print(f'  {label:<22} live {n:>8} ev, {active:>6} active ids | run {_brief(n, run)} | '
        f'train {_brief(counts["history_events"], train)} | limit {n / lim_s:8.0f} ev/cpu-s '
        f'{lim.get("rss_mib", float("nan")):5.0f} MiB | run/limit {run.get("cpu", float("nan")) / lim_s:5.1f}x (CPU)',
        flush=True)
  shutil.rmtree(work, ignore_errors=True)
  return point


def _brief(n: int, r: Dict) -> str:
  if 'error' in r:
    return f'FAILED ({r["error"][:80]})'
  return f'{r["wall"]:6.1f}s {eps(n, r):7.0f} ev/s {eps(n, r, "cpu"):7.0f} ev/cpu-s {r["rss_mib"]:5.0f} MiB'


def scaling(a, root: str) -> Dict:
  out: Dict[str, List[Dict]] = {'events': [], 'identities': [], 'window': []}
  print(f'\nscaling with live events ({a.identities} identities, 1 h windows):', flush=True)
  for n in a.sizes:
    out['events'].append(scale_point(root, f'events-{int(n)}', a.identities, n, 3600))
  print(f'\nscaling with identities (~{int(a.id_events)} live events, 1 h windows):', flush=True)
  for k in a.id_sizes:
    out['identities'].append(scale_point(root, f'identities-{k}', k, max(a.id_events, 3 * k), 3600))
  print(f'\nscaling with window size ({a.identities} identities, ~{int(a.id_events)} live events, '
        f'15 min period):', flush=True)
  for ws in a.window_sizes:
    out['window'].append(scale_point(root, f'window-{ws}s', a.identities, a.id_events, ws))
  return out


def plot(scale: Dict, path: str) -> Optional[str]:
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError as e:
    print(f'no plot: {e}')
    return None
  fig, axes = plt.subplots(2, 3, figsize=(15, 8))
  for col, (key, xkey, xlabel) in enumerate([('events', 'live_events', 'live events'),
                                             ('identities', 'identities', 'identities'),
                                             ('window', 'window_size', 'window size (s)')]):
    pts = [p for p in scale[key] if 'wall' in p['run'] and 'stages' in p['limit']]
    if not pts:
      continue
    xs = [p[xkey] for p in pts]
    run = [p['live_events'] / p['run']['wall'] for p in pts]
    run_cpu = [p['live_events'] / p['run']['cpu'] for p in pts]
    lim = [p['live_events'] / sum(p['limit']['stages'].values()) for p in pts]
    ax = axes[0, col]
    ax.plot(xs, run, 'o-', label='postauth run (batch) ev/s')
    ax.plot(xs, run_cpu, 's--', label='postauth run ev/cpu-s')
    ax.plot(xs, lim, '^-', label='limit (no Beam) ev/cpu-s')
    if all('wall' in p['train'] for p in pts):
      ax.plot(xs, [p['history_events'] / p['train']['wall'] for p in pts], 'v-', label='postauth train ev/s')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('events/s')
    ax.set_title(f'throughput vs {xlabel}')
    ax.legend(fontsize=7)
    ax = axes[1, col]
    ax.plot(xs, [p['run']['rss_mib'] for p in pts], 'o-', label='run peak RSS')
    ax.plot(xs, [p['limit']['rss_mib'] for p in pts], '^-', label='limit peak RSS')
    if all('rss_mib' in p['train'] for p in pts):
      ax.plot(xs, [p['train']['rss_mib'] for p in pts], 'v-', label='train peak RSS')
    ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('MiB')
    ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=90)
  return path


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
