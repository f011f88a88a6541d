"""Where `postauth run`'s fixed start goes: CPU and wall seconds of each phase, in one process.

    python bench/start_phases.py --work DIR [--runner FnApiRunner]

``DIR`` is a sample bench/startup.py left (``--work``): ``head/`` (the first live events),
``inventory.csv`` and ``model/``. The phases are the steps `postauth run` takes
(pipeline/cli.py ``run``): import the CLI (Apache Beam), import the detection pipeline
(the transforms and models; no scikit-learn or skops since the forests are scored with numpy),
the preflight checks (which load the model), building
the pipeline, running it. Run it in a fresh process: imports are only slow the first time.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import List, Tuple

Mark = Tuple[str, float, float]


def mark(marks: List[Mark], name: str) -> None:
  marks.append((name, time.process_time(), time.perf_counter()))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--work', required=True)
  ap.add_argument('--runner', default='FnApiRunner')
  a = ap.parse_args(argv)
  marks: List[Mark] = []
  mark(marks, 'start')
  from postauth.pipeline import cli
  mark(marks, 'import the CLI (apache_beam)')
  from postauth.pipeline import detect, jobs, preflight
  mark(marks, 'import the detection pipeline')
  out = tempfile.mkdtemp(prefix='phases-')
  options = jobs.pipeline_options([
      f'--events={a.work}/head/*', f'--inventory={a.work}/inventory.csv', f'--model-dir={a.work}/model',
      f'--findings={out}/findings.jsonl', f'--dead-letters={out}/dead-letter.jsonl', f'--runner={a.runner}'])
  preflight.validate_run(options)
  preflight.check_run(options)
  mark(marks, 'preflight (loads the model)')
  import apache_beam as beam
  p = beam.Pipeline(options=options)
  detect.build_detection(p, options)
  mark(marks, 'build the pipeline')
  p.run().wait_until_finish()
  mark(marks, f'run it ({a.runner})')
  for (_, c0, w0), (name, c1, w1) in zip(marks, marks[1:]):
    print(f'{name:<55} {c1 - c0:6.2f} CPU s {w1 - w0:6.2f} s wall')
  print(f'{"total (after interpreter start)":<55} {marks[-1][1] - marks[0][1]:6.2f} CPU s '
        f'{marks[-1][2] - marks[0][2]:6.2f} s wall')
  return 0


if __name__ == '__main__':
  sys.exit(main())
