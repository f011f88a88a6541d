"""The job process's collector: young objects are walked every million net allocations."""
from __future__ import annotations

import gc

from postauth.pipeline import collector


def test_a_settled_process_walks_young_objects_every_million_allocations_and_still_collects():
  threshold = gc.get_threshold()
  young = []
  callback = lambda phase, info: young.append(1) if phase == 'start' and info['generation'] == 0 else None
  try:
    collector.settle_before_job()
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD == 1_000_000
    gc.collect(0)  # the young count starts from zero
    gc.callbacks.append(callback)
    kept = [[] for _ in range(500_000)]  # live containers, as a job's panes and windows are
    assert not young
    kept += [[] for _ in range(700_000)]
    assert young  # the collector still runs
  finally:
    if callback in gc.callbacks:
      gc.callbacks.remove(callback)
    gc.set_threshold(*threshold)
    gc.unfreeze()


def test_importing_the_command_line_walks_no_old_objects():
  """The CLI raises the young threshold before its imports: importing it (and Beam) runs no
  full collection and a handful of young ones (it ran 2 full and ~340 young ones before)."""
  import subprocess
  import sys
  out = subprocess.run([sys.executable, '-c', 'import gc; from postauth.pipeline import cli; '
                        'print(*[s["collections"] for s in gc.get_stats()])'],
                       capture_output=True, text=True, check=True).stdout.split()
  young, middle, full = map(int, out)
  assert full == 0 and middle <= 2 and young < 60, out
