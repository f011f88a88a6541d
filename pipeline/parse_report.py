"""Per-file parse report over real log samples: parsed, dead-lettered (top reasons), categories.

Uses the same code path as the Beam job's parse step (``split_records`` then
``RecordParser``), file by file, so the figures can be quoted per file. Files of
Panther's rule-test corpus wrap each raw record as ``{"rule_id", "test_name",
"log"}``: the report unwraps ``log`` (the wrapper is a test harness, not a log
format). ``main`` writes the report as markdown.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
from typing import Dict, Iterable, Iterator, List, Optional

import orjson

from postauth.domain.event import Event
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import RawRecord, split_records

# Files beside the samples that are not telemetry.
NOT_LOGS = ('LICENSE', 'LICENSE.txt', 'SOURCE.txt', 'README.md', 'labels.csv')


def sample_files(root: str) -> List[str]:
  """Every telemetry file under ``root`` (licences, sources and label tables left out)."""
  out = []
  for dirpath, _, names in os.walk(root):
    out.extend(os.path.join(dirpath, n) for n in names if n not in NOT_LOGS)
  return sorted(out)


def _is_panther_row(obj: Optional[dict]) -> bool:
  return isinstance(obj, dict) and 'log' in obj and 'rule_id' in obj and 'test_name' in obj


def file_records(path: str) -> Iterator[RawRecord]:
  """The file's records, Panther test rows unwrapped to the raw log they carry."""
  with open(path, 'rb') as f:
    data = f.read()
  for record in split_records(data, path):
    if _is_panther_row(record.obj):
      log = record.obj['log']
      raw = orjson.dumps(log)
      yield (RawRecord(raw, log, '', record.ref) if isinstance(log, dict)
             else RawRecord(raw, None, 'record is not a JSON object', record.ref))
    else:
      yield record


def report_file(path: str, parser: RecordParser) -> dict:
  formats: collections.Counter = collections.Counter()
  categories: collections.Counter = collections.Counter()
  reasons: collections.Counter = collections.Counter()
  skips: collections.Counter = collections.Counter()
  events: List[Event] = []
  records = 0
  for record in file_records(path):
    for fmt, item in parser.parse_items(record):  # an OTLP request: one item per span
      records += 1
      if item.event is not None:
        events.append(item.event)
        formats[fmt] += 1
        categories[item.event.category] += 1
      elif item.skipped:
        skips[item.reason] += 1
      else:
        reasons[item.reason] += 1
  return {'file': path, 'records': records, 'parsed': len(events),
          'dead_lettered': sum(reasons.values()), 'skipped': sum(skips.values()),
          'formats': dict(formats), 'categories': dict(categories), 'reasons': dict(reasons),
          'skip_reasons': dict(skips), 'events': events}


def report(paths: Iterable[str], taxonomy_files: Optional[List[str]] = None) -> List[dict]:
  parser = RecordParser(None, taxonomy_files)
  return [report_file(p, parser) for p in paths]


def _counts(counter: Dict[str, int], top: int = 0) -> str:
  items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
  if top and len(items) > top:
    rest = sum(v for _, v in items[top:])
    items = items[:top] + [(f'{len(items) - top} more', rest)]
  return ', '.join(f'{k} {v}' for k, v in items)


_DETAIL = re.compile(r"'[^']*'|\"[^\"]*\"|(?<![A-Za-z_])-?\d[\d.e+]*|: (None|True|False|\[.*\]|\{.*\})")


def _reason_class(reason: str) -> str:
  """A dead-letter reason without record-specific values (quoted text, numbers), for grouping."""
  if reason.startswith('invalid JSON'):
    return 'invalid JSON'
  return _DETAIL.sub(lambda m: ': ...' if m.group(0).startswith(':') else '...', reason)[:100]


def to_markdown(rows: List[dict], root: str = '') -> str:
  def name(path):
    return os.path.relpath(path, root) if root else path
  total = collections.Counter()
  sets: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  set_categories: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for r in rows:
    top = name(r['file']).split(os.sep)[0]
    for k in ('records', 'parsed', 'dead_lettered', 'skipped'):
      total[k] += r[k]
      sets[top][k] += r[k]
    set_categories[top].update(r['categories'])
  lines = ['# Parse report', '',
           'Same code as the Beam parse step (`split_records` + `RecordParser`), file by file. Rows of '
           "Panther's rule-test files are unwrapped to the raw `log` they carry. `unknown format` means "
           'no parser recognised the record (e.g. Azure logs, which postauth does not read).', '',
           f'{len(rows)} files, {total["records"]} records: {total["parsed"]} parsed, '
           f'{total["dead_lettered"]} dead-lettered, {total["skipped"]} skipped (not events: '
           'e.g. AWS service events without an actor).', '',
           '## By set', '', '| set | records | parsed | dead-lettered | skipped | categories |',
           '| --- | ---: | ---: | ---: | ---: | --- |']
  for top, c in sorted(sets.items()):
    lines.append(f'| {top} | {c["records"]} | {c["parsed"]} | {c["dead_lettered"]} | {c["skipped"]} | '
                 f'{_counts(set_categories[top])} |')
  lines += ['', '## By file', '',
            '| file | records | parsed | dead-lettered | skipped | top dead-letter reasons | formats | categories |',
            '| --- | ---: | ---: | ---: | ---: | --- | --- | --- |']
  for r in rows:
    reasons = collections.Counter()
    for reason, n in r['reasons'].items():
      reasons[_reason_class(reason)] += n
    lines.append(f'| {name(r["file"])} | {r["records"]} | {r["parsed"]} | {r["dead_lettered"]} | '
                 f'{r["skipped"]} | {_counts(reasons, 3).replace("|", "/")} | {_counts(r["formats"])} | '
                 f'{_counts(r["categories"])} |')
  return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
  ap = argparse.ArgumentParser(description='Per-file parse report (markdown) over log samples.')
  ap.add_argument('root', help='Directory of samples, e.g. ../shared/data')
  ap.add_argument('--out', help='Write the markdown here as well as to stdout.')
  ap.add_argument('--taxonomy-file', action='append', default=None)
  a = ap.parse_args(argv)
  rows = report(sample_files(a.root), a.taxonomy_file)
  text = to_markdown(rows, a.root)
  if a.out:
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, 'w') as f:
      f.write(text)
  sys.stdout.write(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
