"""Scaling of postauth train / run and the Beam-free limit with live events, identities and
window size (wall, events/s, events per CPU second, peak RSS per job), and its plot."""
from __future__ import annotations

import os
import shutil
import time
from typing import Dict, List, Optional

from bench.job_runs import launch
from bench.sample import make_sample
from bench.stage_report import eps

LIVE_EVENTS_PER_IDENTITY = 140.0  # live-day events per identity at --rate-scale 1 (measured)


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
