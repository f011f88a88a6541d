"""The place of last resort: dead letters that the dead-letter sink itself refuses.

Why: findings a sink will not take become dead letters; but the dead-letter sink can refuse
too (a Pub/Sub topic refuses a message over 10 MB, BigQuery a row that does not fit its
table). Failing the bundle then only repeats the refusal: a streaming runner retries a failed
bundle without end, and the job is wedged by one record. Such a record is written to a plain
file instead (``--last-resort``, default beside the dead letters; ``transforms/sink_uris.py``),
counted (``last_resort_records``), and the job goes on.

Invariants:
- a line here is the dead-letter document plus ``refused_by`` (the sink's URI) and
  ``refusal`` (what the sink answered), so the usual dead-letter tools read it;
- a local path is appended to, one write per batch under an exclusive lock, so parallel
  workers on one machine never interleave lines; a remote path (``gs://``, ``s3://``) gets one
  new object per batch under ``PATH.parts/`` (object stores cannot append);
- only when this write itself fails does the bundle fail: there is nothing further.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import uuid
from typing import Iterable, List, Tuple, Union

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

COUNTER = 'last_resort_records'
_LOG = logging.getLogger(__name__)


def _is_local(path: str) -> bool:
  return '://' not in path or path.startswith('file://')


def last_resort_line(record: Union[bytes, str, dict], refused_by: str, refusal: str) -> str:
  """The refused record (a dead-letter line, its bytes, or a BigQuery row) as a last-resort line."""
  if isinstance(record, bytes):
    record = record.decode('utf-8', errors='backslashreplace')
  doc = record
  if isinstance(record, str):
    try:
      doc = json.loads(record)
    except ValueError:
      doc = None
    if not isinstance(doc, dict):
      doc = {'stage': 'sink', 'reason': 'refused record is not a dead letter', 'raw': record}
  return json.dumps(dict(doc, refused_by=refused_by, refusal=str(refusal)[:2000]),
                    ensure_ascii=False, default=str)


def write_last_resort(path: str, lines: List[str]) -> None:
  """Appends ``lines`` to a local ``path``, or writes them as one new object beside a remote one."""
  if not lines:
    return
  data = ''.join(line + '\n' for line in lines).encode('utf-8', errors='surrogatepass')
  if _is_local(path):
    path = path[len('file://'):] if path.startswith('file://') else path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'ab') as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      try:
        f.write(data)
        f.flush()
      finally:
        fcntl.flock(f, fcntl.LOCK_UN)
    return
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S')
  with FileSystems.create(f'{path}.parts/{stamp}-{uuid.uuid4().hex}.jsonl') as f:
    f.write(data)


class LastResort:
  """What a sink's DoFn holds to write refused records and count them (picklable; no handles)."""

  def __init__(self, path: str, refused_by: str):
    self.path, self.refused_by = path, refused_by
    self.counter = Metrics.counter('postauth', COUNTER)

  def write(self, refused: Iterable[Tuple[Union[bytes, str, dict], str]]) -> int:
    """Writes every (record, refusal); returns how many."""
    refused = list(refused)
    if refused:
      write_last_resort(self.path, [last_resort_line(r, self.refused_by, why) for r, why in refused])
      self.counter.inc(len(refused))
      _LOG.error('%s refused %d dead letter(s); written to the last resort %s (first refusal: %s)',
                 self.refused_by, len(refused), self.path, str(refused[0][1])[:300])
    return len(refused)
