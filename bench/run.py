"""Throughput of postauth's batch and streaming jobs against a Beam-free limit and Beam's own
anomaly detection, measured in the same run: the main section of bench/pipeline.py.

    python bench/run.py [--identities 200] [--days 3] [--rate-scale 0.4] [...]

Takes every flag of bench/pipeline.py; skips its scaling sweep unless --scaling is given
(`make bench-pipeline` runs the whole of it). Ratios are what to compare across machines;
absolute figures depend on the machine's load.
"""
from __future__ import annotations

import importlib.util
import os
import sys


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pipeline.py')
  spec = importlib.util.spec_from_file_location('bench_pipeline', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if '--scaling' in argv:
    argv.remove('--scaling')
  else:
    argv.append('--no-scaling')
  return module.main(argv)


if __name__ == '__main__':
  sys.exit(main())
