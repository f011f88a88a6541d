"""One BLAS thread in a `postauth` process, set before numpy is imported.

numpy's OpenBLAS starts a thread per core when it loads, and those threads spin before they
sleep, after starting and after every call they serve: ~80 CPU ms of ``import numpy`` on this
project's 2-core machine (87 against 166 ms), and ~40 ms more over a day's batch job, for no
work: the job's numpy calls are small vectorised steps (forest descents, feature rows), never
a matrix worth splitting, and a Beam job's parallelism is its workers and bundles. A setting
the user made (``OPENBLAS_NUM_THREADS`` in the environment) is kept. It is the CLI process's
setting: workers a runner starts elsewhere (Dataflow, Flink) keep their environment.
"""
from __future__ import annotations

import os
import sys

VARIABLE = 'OPENBLAS_NUM_THREADS'


def one_blas_thread() -> bool:
  """Sets ``OPENBLAS_NUM_THREADS=1`` unless the environment has it. Takes effect only before
  numpy is first imported (OpenBLAS reads it when it loads); returns whether it can."""
  os.environ.setdefault(VARIABLE, '1')
  return 'numpy' not in sys.modules
