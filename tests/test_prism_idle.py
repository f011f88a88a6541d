"""Prism waits, not spins, while a bundle runs, and asks it for progress less and less often
where it may not split it: the project's patches (tools/prism/*.patch).

Prism as Beam builds it turns two scheduling loops without waiting: `stage.Execute`'s progress
loop once a bundle's data stream is closed (all of a bundle with no data output), and the
element manager's loop while a stage that reads a side input has a bundle in progress. Each
costs a core for as long as the bundle runs (docs/performance.md). Here one bundle sleeps in
each such stage and the Prism process's CPU over the job is read from /proc: a spinning loop
takes about a core for the sleep; a waiting Prism a small fraction of it.
"""
from __future__ import annotations

import os
import time
from typing import Dict

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

SLEEP = 2.0  # seconds the one bundle of the step under test runs
BUSY = 0.25  # Prism CPU seconds over the whole job above which it is taken to spin


def _prism_cpu() -> Dict[int, float]:
  """CPU seconds of each Prism process this process started (Beam keeps one job server per
  process: the job runs on whichever this process started first)."""
  tick = os.sysconf('SC_CLK_TCK')
  out = {}
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      exe = os.path.basename(os.readlink(f'/proc/{pid}/exe'))
      with open(f'/proc/{pid}/stat') as f:
        stat = f.read().rsplit(')', 1)[1].split()
    except OSError:
      continue
    if exe.startswith('prism') and int(stat[1]) == os.getpid():
      out[int(pid)] = (int(stat[11]) + int(stat[12])) / tick  # utime + stime
  return out


def _sleep_then(x, *_):
  time.sleep(SLEEP)
  return x


def _run_on_prism(binary: str, build, *flags: str) -> float:
  """Prism's CPU seconds over one job built by ``build(pipeline)``."""
  before = _prism_cpu()
  options = PipelineOptions(['--runner=PrismRunner', f'--prism_location={binary}',
                             '--environment_type=LOOPBACK', *flags])
  with beam.Pipeline(options=options) as p:
    build(p)
  after = _prism_cpu()
  assert after, 'no Prism process of this test process found'
  return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def test_prism_waits_while_a_stage_with_a_side_input_runs(prism_binary):
  def build(p):
    side = p | 'Side' >> beam.Create(['a', 'b'])
    (p | 'One' >> beam.Create([1]) | 'Apart' >> beam.Reshuffle()
     | 'Sleep' >> beam.Map(_sleep_then, beam.pvalue.AsList(side)) | 'After' >> beam.Reshuffle())
  cpu = _run_on_prism(prism_binary, build)
  assert cpu < BUSY, f'Prism used {cpu:.2f} CPU s while one {SLEEP} s bundle read a side input'


def test_prism_waits_while_a_stage_without_outputs_runs(prism_binary):
  def build(p):
    p | 'One' >> beam.Create([1]) | 'Apart' >> beam.Reshuffle() | 'Sleep' >> beam.Map(_sleep_then)
  cpu = _run_on_prism(prism_binary, build)
  assert cpu < BUSY, f'Prism used {cpu:.2f} CPU s while one {SLEEP} s bundle without outputs ran'


def test_prism_asks_a_bundle_it_may_not_split_for_progress_less_and_less_often(prism_binary, monkeypatch):
  """Where Prism may not split bundles (postauth's jobs turn its splits off:
  ``pipeline/prism.py``), a progress answer only refreshes the job's tentative metrics, and
  each costs the SDK a pass over every operation's metrics: the interval doubles after each
  answer (asked every 100 ms, a 2 s bundle answers ~20 times)."""
  from apache_beam.runners.worker import sdk_worker
  from postauth.pipeline.prism import NO_RUNNER_SPLITS
  asked = []
  answer = sdk_worker.SdkWorker.process_bundle_progress

  def counted(self, *args, **kwargs):
    asked.append(time.monotonic())
    return answer(self, *args, **kwargs)

  monkeypatch.setattr(sdk_worker.SdkWorker, 'process_bundle_progress', counted)

  def build(p):
    p | 'One' >> beam.Create([1]) | 'Apart' >> beam.Reshuffle() | 'Sleep' >> beam.Map(_sleep_then)
  _run_on_prism(prism_binary, build, f'--experiments={NO_RUNNER_SPLITS}')
  gaps = [round(b - a, 2) for a, b in zip(asked, asked[1:])]
  assert 1 <= len(asked) <= 6, f'{len(asked)} progress requests over one {SLEEP} s bundle: {gaps}'
