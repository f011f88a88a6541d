"""What bench/pipeline.py prints: one row per job, then each stage of the batch job (the
difference of consecutive cuts) against the same stage of the Beam-free limit, and the ratios
(postauth / limit, / numpy floor, / Beam's AnomalyDetection peer), all from one run."""
from __future__ import annotations

from typing import Dict

from bench.job_runs import STAGES

STAGE_WORDS = {'startup': 'startup (an empty Beam job: Create -> Map)',
               'parse': 'parse (read files, decode, normalise)',
               'windows': 'windows (pane aggregates -> sliding windows)',
               'enrich': 'enrich (inventory side input)',
               'history': 'history (group per identity, fold profiles)',
               'score': 'score (features, forest, rules)',
               'full': 'findings + sinks (merge, triage, dedup, write)'}


def eps(events: int, r: Dict, key: str = 'wall') -> float:
  return events / r[key] if r.get(key) else float('nan')


def fmt_row(name: str, events: int, r: Dict, note: str = '') -> str:
  if 'error' in r:
    return f'  {name:<44} FAILED: {r["error"]}'
  return (f'  {name:<44} {r["wall"]:7.1f}s {eps(events, r):9.0f} ev/s {eps(events, r, "cpu"):9.0f} ev/cpu-s'
          f' {r["rss_mib"]:6.0f} MiB {note}')


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
