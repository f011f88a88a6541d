"""The samples the benchmarks run on: a generated CloudTrail sample (history days to train on,
one live day to detect on) and the head of its live day."""
from __future__ import annotations

import glob
import os
from typing import Dict, List


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
