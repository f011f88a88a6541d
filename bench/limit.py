"""The plain limit of the batch detection job: the project's parser, then numpy, dicts and one
scikit-learn IsolationForest. No Beam, no profiles, no rules, no evidence.

    python bench/limit.py --events 'W/live/*' [--window-size 3600] [--period 900]

What a batch job must at least do with a day of events: read and parse every record (the
project's own ``RecordParser``, so the parse costs what postauth's parse costs), bucket events
into 15 min panes per identity, slide the panes into 1 h windows every 15 min, featurise each
window (events, errors, read-only, distinct actions, resources, networks, agents, regions) and
score the windows with an IsolationForest fitted on them. Prints one ``LIMIT {json}`` line:
CPU seconds per stage (``time.process_time``, imports excluded) and in all. The denominator of
``bench/marginal.py``'s ratios.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from typing import Dict, List, Optional

import numpy as np

N_FEATURES = 8


def parse(paths: List[str], parser) -> List:
  """Every event the project's parser gets from the files (dead letters and skips dropped)."""
  from postauth.transforms.parse import read_all
  from postauth.transforms.records import split_records
  events = []
  for path in paths:
    for rec in split_records(read_all(path), path):
      for _, item in parser.parse_items(rec):
        if item.event is not None:
          events.append(item.event)
  return events


def panes(events: List, period: int) -> Dict:
  """(identity, pane start) -> [count, errors, read_only, actions, resources, networks, agents,
  regions] with sets for the distinct fields: one dict update per event."""
  out: Dict = {}
  for e in events:
    key = (e.identity, int(e.event_time // period) * period)
    p = out.get(key)
    if p is None:
      p = out[key] = [0, 0, 0, set(), set(), set(), set(), set()]
    p[0] += 1
    p[1] += not e.success
    p[2] += bool(e.read_only)
    p[3].add(e.action)
    if e.resource:
      p[4].add(e.resource)
    p[5].add(e.source_ip.rpartition('.')[0] if e.source_ip else '')
    p[6].add(e.user_agent)
    p[7].add(e.region)
  return out


def windows(pane_map: Dict, size: int, period: int) -> np.ndarray:
  """One feature row per (identity, sliding window) holding at least one pane."""
  by_window: Dict = {}
  k = size // period
  for (identity, start), p in pane_map.items():
    for j in range(k):
      key = (identity, start - j * period)
      w = by_window.get(key)
      if w is None:
        by_window[key] = w = [0, 0, 0, set(), set(), set(), set(), set()]
      w[0] += p[0]
      w[1] += p[1]
      w[2] += p[2]
      for f in range(3, 8):
        w[f] |= p[f]
  x = np.empty((len(by_window), N_FEATURES))
  for i, w in enumerate(by_window.values()):
    x[i] = (w[0], w[1], w[2], len(w[3]), len(w[4]), len(w[5]), len(w[6]), len(w[7]))
  return np.log1p(x)


def limit(pattern: str, size: int = 3600, period: int = 900, seed: int = 0) -> Dict:
  from sklearn.ensemble import IsolationForest
  from postauth.transforms.parse import RecordParser  # imports Beam (~1 s): not the limit's work
  parser = RecordParser()
  stages: Dict[str, float] = {}
  t = t0 = time.process_time()
  events = parse(sorted(glob.glob(pattern)), parser)
  stages['parse'] = time.process_time() - t
  t = time.process_time()
  pane_map = panes(events, period)
  stages['panes'] = time.process_time() - t
  t = time.process_time()
  x = windows(pane_map, size, period)
  stages['windows'] = time.process_time() - t
  t = time.process_time()
  forest = IsolationForest(n_estimators=100, random_state=seed).fit(x)
  scores = -forest.score_samples(x)
  stages['forest'] = time.process_time() - t
  return {'events': len(events), 'panes': len(pane_map), 'windows': len(x),
          'top_score': float(scores.max()) if len(x) else None,
          'stages': stages, 'cpu': time.process_time() - t0}


def main(argv: Optional[List[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--events', required=True, help='Glob of event files.')
  ap.add_argument('--window-size', type=int, default=3600)
  ap.add_argument('--period', type=int, default=900)
  a = ap.parse_args(argv)
  out = limit(a.events, a.window_size, a.period)
  print('LIMIT ' + json.dumps(out), flush=True)
  return 0 if out['events'] else 1


if __name__ == '__main__':
  sys.exit(main())
