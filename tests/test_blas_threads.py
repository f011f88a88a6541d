"""The `postauth` command loads OpenBLAS with one thread (its pool spins for nothing), unless
the user set the thread count."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = ('import postauth.pipeline.cli, numpy, threadpoolctl, json; '
         'print(json.dumps([i["num_threads"] for i in threadpoolctl.threadpool_info() '
         'if i["internal_api"] == "openblas"]))')


def _openblas_threads(env_value):
  env = {k: v for k, v in os.environ.items() if k != 'OPENBLAS_NUM_THREADS'}
  if env_value is not None:
    env['OPENBLAS_NUM_THREADS'] = env_value
  out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cli_loads_openblas_with_one_thread_unless_the_user_chose():
  assert _openblas_threads(None) == [1]
  assert _openblas_threads('2') == [min(2, os.cpu_count() or 1)]  # OpenBLAS caps it at the cores
