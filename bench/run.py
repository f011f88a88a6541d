"""Throughput of postauth's batch jobs against a plain numpy baseline, measured in the same run.

    python bench/run.py [--identities 200] [--days 7] [--rate-scale 0.4]

Prints events/s of `postauth train` and `postauth run` (batch, FnApiRunner) and of a
baseline that does the same work without Beam: parse the same files with orjson,
assign events to the same 1 h / 15 min windows with numpy, count per window, and
score one feature matrix with one IsolationForest.score_samples call. Ratios are
what to compare across machines; absolute figures depend on the machine's load.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import os
import sys
import tempfile
import time

import numpy as np
import orjson

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))


def baseline(paths, size=3600, period=900):
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
  return len(t), len(keys), time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--rate-scale', type=float, default=0.4)
  a = ap.parse_args()
  from pipeline.cli import run, train
  from pipeline.generate import generate
  work = tempfile.mkdtemp(prefix='postauth-bench-')
  counts = generate(work, a.identities, a.days, 7, rate_scale=a.rate_scale)
  inv, model = os.path.join(work, 'inventory.csv'), os.path.join(work, 'model')
  t = time.perf_counter()
  tr = train([f'--events={work}/history/*', f'--inventory={inv}', f'--model-dir={model}', '--runner=FnApiRunner'])
  t_train = time.perf_counter() - t
  t = time.perf_counter()
  rn = run([f'--events={work}/live/*', f'--inventory={inv}', f'--model-dir={model}',
            f'--findings={work}/findings.jsonl', '--runner=FnApiRunner'])
  t_run = time.perf_counter() - t
  n_hist, w_hist, t_base_hist = baseline(sorted(glob.glob(f'{work}/history/*')))
  n_live, w_live, t_base_live = baseline(sorted(glob.glob(f'{work}/live/*')))
  print(f'events: history {counts["history_events"]}, live {counts["live_events"]}')
  print(f'postauth train (batch): {n_hist / t_train:8.0f} events/s  ({t_train:.1f}s, '
        f'{tr["counters"].get("identity_windows", 0)} windows)')
  print(f'postauth run   (batch): {n_live / t_run:8.0f} events/s  ({t_run:.1f}s, '
        f'{rn["counters"].get("windows_scored", 0)} windows scored)')
  print(f'numpy baseline (history): {n_hist / t_base_hist:8.0f} events/s  ({t_base_hist:.1f}s, {w_hist} windows)')
  print(f'numpy baseline (live):    {n_live / t_base_live:8.0f} events/s  ({t_base_live:.1f}s, {w_live} windows)')
  print(f'ratio train/baseline: {t_train / t_base_hist:.1f}x slower; run/baseline: {t_run / t_base_live:.1f}x slower')


if __name__ == '__main__':
  main()
