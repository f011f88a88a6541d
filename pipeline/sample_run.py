"""A labelled sample end to end: generate it, train on its history, detect on its live day.

The demo, the detection-quality evaluation (``bench/evaluate.py``) and the AI-agent
fleet evaluation run the same three steps on different generators.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional

from postauth.pipeline.jobs import run, train


def describe_cloudtrail(counts: Dict) -> str:
  return (f'{counts["identities"]} identities, {counts["history_events"]} history and '
          f'{counts["live_events"]} live CloudTrail events, {counts["labels"]} injected attacks')


def sample_run(out: str, identities: int = 200, days: int = 7, seed: int = 7, batch: bool = False,
               beam_args: Optional[List[str]] = None, echo: Callable[[str], None] = print,
               generate: Optional[Callable[..., Dict]] = None,
               describe: Callable[[Dict], str] = describe_cloudtrail) -> dict:
  """generate -> train -> run on a labelled sample under ``out``: what `demo`, the evaluation
  and the agent-fleet evaluation share. ``generate(out, identities, days, seed)`` writes the
  sample (default: the CloudTrail fleet); ``describe`` says what it wrote."""
  if generate is None:
    from postauth.pipeline.generate import generate
  beam_args = list(beam_args or [])
  out = os.path.abspath(out)
  sample, model_dir = os.path.join(out, 'sample'), os.path.join(out, 'model')
  findings = os.path.join(out, 'findings.jsonl')
  timings = {}
  t = time.time()
  counts = generate(sample, identities, days, seed)
  timings['generate'] = time.time() - t
  echo(f'[1/3] generated {describe(counts)} -> {sample} ({timings["generate"]:.1f}s)')
  t = time.time()
  trained = train([f'--events={sample}/history/*', f'--inventory={sample}/inventory.csv',
                   f'--model-dir={model_dir}'] + beam_args)
  timings['train'] = time.time() - t
  echo(f'[2/3] trained model {trained["version"]} on {trained["counters"].get("training_windows", 0)} '
       f'identity-windows ({timings["train"]:.1f}s)')
  t = time.time()
  mode = [] if batch else ['--streaming']
  ran = run([f'--events={sample}/live/*', f'--inventory={sample}/inventory.csv',
             f'--model-dir={model_dir}', f'--findings={findings}'] + mode + beam_args)
  timings['detect'] = time.time() - t
  echo(f'[3/3] ran detection ({"batch" if batch else "streaming replay"}) '
       f'({timings["detect"]:.1f}s)\n')
  return {'sample': sample, 'model_dir': model_dir, 'findings': findings, 'counts': counts,
          'trained': trained, 'ran': ran, 'timings': timings}
