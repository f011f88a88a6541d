"""The latest version of each finding, for file sinks: what a consumer keeps.

Findings are emitted early and updated (transforms/versions.py): several versions
share one ``finding_id`` and the latest is the one with the highest ``updates``
(then ``occurrences``). File sinks give both views:

- ``PATH``: one line per finding, its latest version (what the job wrote before
  findings had versions, so readers of ``PATH`` see no change);
- ``PATH`` with ``.versions`` before the extension (``findings.versions.jsonl``):
  every version, as Pub/Sub and BigQuery receive them (JSON lines only).

A batch job writes both itself (``LatestVersions``, a combiner per id). A
streaming job writes every version to ``PATH.parts/`` as it goes; a finished
bounded replay compacts them into both files, and ``postauth compact --findings
PATH`` does it for a running job (``compact_findings``).
"""
from __future__ import annotations

import glob
import json
import os
import typing
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
import orjson

from postauth.transforms.versions import version_rank
from postauth.transforms.options import CommandParser


def versions_path(path: str) -> str:
  """``out/findings.jsonl`` -> ``out/findings.versions.jsonl``."""
  head, tail = os.path.split(path)
  stem, dot, ext = tail.rpartition('.')
  name = f'{stem}.versions.{ext}' if dot and stem else f'{tail}.versions'
  return os.path.join(head, name) if head else name


class LatestFn(beam.CombineFn):
  """Versions of one finding -> its latest version."""

  def create_accumulator(self):
    return None

  def add_input(self, acc, finding):
    return finding if acc is None or version_rank(finding) >= version_rank(acc) else acc

  def merge_accumulators(self, accs):
    out = None
    for a in accs:
      if a is not None:
        out = self.add_input(out, a)
    return out

  def extract_output(self, acc):
    return acc


class LatestVersions(beam.PTransform):
  """Finding versions -> one finding per ``finding_id``, its latest version (bounded input)."""

  def expand(self, findings):
    return (findings
            | 'ById' >> beam.Map(lambda f: (f['finding_id'], f))
            | 'Latest' >> beam.CombinePerKey(LatestFn())
            | 'Drop ids' >> beam.Values())


def _loads(line: str):
  """A version line's values: orjson (~2x faster than json on these ~12 kB lines; only the id,
  ``updates``, ``occurrences`` and times are read, which both read alike); json for what orjson
  refuses (NaN, Infinity)."""
  try:
    return orjson.loads(line)
  except orjson.JSONDecodeError:
    return json.loads(line)


class VersionLine(typing.NamedTuple):
  """A finding version's JSON line with the fields ``latest_of`` orders versions by, taken from
  the version when the line is made: a batch job's file step then never parses its own lines."""
  line: str
  finding_id: str
  rank: tuple  # version_rank
  detected: str  # first_detected_at (window_end, '' without)

  @classmethod
  def of(cls, finding: Dict, line: str) -> 'VersionLine':
    return cls(line, finding['finding_id'], version_rank(finding),
               finding.get('first_detected_at') or finding.get('window_end') or '')


def latest_of(versions: List[VersionLine]) -> Tuple[List[str], List[str]]:
  """Versions -> (the latest line per id, in first-seen order; every line ordered by detection
  time, then rank, then position in ``versions``)."""
  best: Dict[str, Tuple[tuple, int, str]] = {}
  order: List[str] = []
  for n, v in enumerate(versions):
    fid = v.finding_id
    if fid not in best:
      order.append(fid)
      best[fid] = (v.rank, n, v.line)
    elif v.rank >= best[fid][0]:
      best[fid] = (v.rank, n, v.line)
  ordered = [v.line for _, v in sorted(((v.detected, v.rank, n), v) for n, v in enumerate(versions))]
  return [best[fid][2] for fid in order], ordered


def latest_lines(lines: List[str]) -> Tuple[List[str], List[str]]:
  """JSON lines of finding versions -> (latest line per id, first-seen order; every line in version order)."""
  return latest_of([VersionLine.of(_loads(line), line) for line in lines if line.strip()])


def compact_findings(path: str, parts: Optional[List[str]] = None) -> Dict[str, int]:
  """Writes ``path`` (latest version per id) and its versions log from a streaming job's part
  files (``path.parts/*.jsonl``), or from the versions log when there are no parts."""
  from postauth.transforms.sinks import parts_dir
  if parts is None:
    parts = sorted(glob.glob(os.path.join(parts_dir(path), '*.jsonl')))
  lines: List[str] = []
  sources = parts or ([versions_path(path)] if os.path.exists(versions_path(path)) else [])
  for name in sources:
    with open(name) as f:
      lines += [l.rstrip('\n') for l in f if l.strip()]
  latest, ordered = latest_lines(lines)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  for target, rows in ((path, latest), (versions_path(path), ordered)):
    tmp = target + '.tmp'
    with open(tmp, 'w') as f:
      for line in rows:
        f.write(line + '\n')
    os.replace(tmp, target)
  return {'findings': len(latest), 'versions': len(ordered)}


def cmd_compact(argv: List[str]) -> int:
  """`postauth compact --findings PATH`: the latest view of a (running) streaming job's findings."""
  ap = CommandParser(prog='postauth compact', description=cmd_compact.__doc__)
  ap.add_argument('--findings', required=True,
                  help='The --findings path of a streaming job (its parts are PATH.parts/*.jsonl).')
  a = ap.parse_args(argv)
  counts = compact_findings(a.findings)
  print(json.dumps({'latest': a.findings, 'versions': versions_path(a.findings), **counts}))
  return 0
