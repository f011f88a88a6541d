"""The benchmark's jobs, each in its own child process so peak memory and CPU are per job.

    python bench/job_runs.py JSON     (what ``launch`` runs; JSON names the job and its sample)

Jobs: ``postauth train`` / ``postauth run`` as a user calls them, the batch detection job cut
after a stage (``cut``; the cut after ``startup`` is an empty Create -> Map job), the Beam-free
limit and numpy floor (bench/beam_free.py) and Beam's own AnomalyDetection peer. Each prints one
``BENCH {json}`` line with its wall and CPU seconds.
"""
from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
# Run as a script: the repository root on the path (``bench.*`` modules), not this folder.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

import numpy as np  # noqa: E402

from bench.beam_free import limit, numpy_floor  # noqa: E402

STAGES = ('parse', 'windows', 'enrich', 'history', 'score', 'full')


def _cpu() -> float:
  s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _common(work: str, window_size: int) -> List[str]:
  return [f'--inventory={work}/inventory.csv', f'--model-dir={work}/model',
          f'--window-size={window_size}']


def job_train(spec: Dict) -> Dict:
  from postauth.pipeline.jobs import train
  out = train([f'--events={spec["work"]}/history/*'] + _common(spec['work'], spec['window_size'])
              + spec.get('beam_args', []))
  return {'counters': out['counters']}


def job_run(spec: Dict) -> Dict:
  from postauth.pipeline.jobs import run
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
  from postauth.transforms.inventory import EnrichWindows, start_up_inventory
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
    pc = pc | 'Enrich' >> EnrichWindows(start_up_inventory(p, det.inventory, bounded=True))
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
  from postauth.pipeline.jobs import run_pipeline as _run_pipeline, pipeline_options
  options = pipeline_options([f'--events={spec["work"]}/live/*']
                             + _common(spec['work'], spec['window_size']) + spec.get('beam_args', []))
  _run_pipeline(lambda p: build_cut(p, options, spec['stage']), options)
  return {}

def job_limit(spec: Dict) -> Dict:
  work = spec['work']
  return limit(f'{work}/live/*', f'{work}/inventory.csv', f'{work}/model', spec['window_size'],
               features_out=spec.get('features_out'))


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


def launch(kind: str, work: str, window_size: int = 3600, **spec) -> Dict:
  """Runs one job in a child process; adds its peak RSS (MiB, from wait4)."""
  scratch = tempfile.mkdtemp(prefix='scratch-', dir=work)
  spec.update(kind=kind, work=work, window_size=window_size, scratch=scratch)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
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


if __name__ == '__main__':
  child_main(sys.argv[1])
