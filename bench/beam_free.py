"""The Beam-free limit: the batch detection job's work done by the project's own code in plain
Python loops (parse, windows, enrichment, history, features, forest, rules), and a vectorised
numpy floor that does less work but shows what vectorisation could reach.

Used by bench/pipeline.py (per-stage limit), bench/startup.py (the marginal ratio's
denominator) and bench/coder.py (realistic aggregates).
"""
from __future__ import annotations

import glob
import gzip
import os
import time
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
import orjson


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


