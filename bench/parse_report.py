"""Per-file parse report of the real samples, as markdown for the project notes.

    .venv/bin/python bench/parse_report.py [ROOT] [--out bench/results/parse_report.md]

ROOT defaults to ../shared/data beside the project. For each file: records,
parsed, dead-lettered with the top reasons, formats and categories (the same
split_records + RecordParser code the Beam parse step runs; Panther's rule-test
rows are unwrapped to the raw log they carry). See pipeline/parse_report.py.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))

from postauth.pipeline.parse_report import main  # noqa: E402

if __name__ == '__main__':
  argv = sys.argv[1:]
  if not argv or argv[0].startswith('-'):
    argv = [os.path.join(HERE, '..', '..', 'shared', 'data')] + argv
  if '--out' not in argv:
    argv += ['--out', os.path.join(HERE, 'results', 'parse_report.md')]
  sys.exit(main(argv))
