"""The identity inventory (who owns an identity, what it may do, where it runs) as a side input.

Sources: CSV, JSON lines, Avro container files (fastavro), or a BigQuery table
(``bq://project:dataset.table``, GCP only). Every row is normalised to one dict
shape (``normalise``), so rules and findings read the same fields whatever the
source.

The side input is a stream of *snapshots* (the whole inventory, versioned by
when it was read). A batch job reads it once. A streaming job re-reads it every
``refresh_seconds`` (``PeriodicImpulse``) and passes a snapshot on only when its
content changed, into a global window with a repeated trigger; consumers use the
newest snapshot they can see, so an edited inventory takes effect without a
restart. This is Beam's slowly-updating global-window side input pattern, for
Dataflow and Flink; the DirectRunner releases a global-window side input only at
the end of input (checked with TestStream on Beam 2.77), so on it the
detection job reads the inventory once.
"""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import time
import typing
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
import fastavro
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

REQUIRED = ('identity', 'identity_type', 'owner', 'team', 'environment')
LIST_FIELDS = ('expected_actions', 'expected_services')
TEXT_FIELDS = ('identity', 'identity_type', 'owner', 'team', 'environment', 'criticality',
               'created_at', 'last_rotated_at', 'status', 'display_name')

# What an identity missing from the inventory is assumed to be, from the log's own type.
LOG_TYPE_TO_INVENTORY = {
    'AssumedRole': 'workload_identity', 'IAMUser': 'api_key', 'AWSService': 'service',
    'Root': 'human', 'FederatedUser': 'human', 'AWSAccount': 'service',
    # GCP / Kubernetes / OCSF principals (see transforms/formats)
    'service_account': 'service_account', 'node': 'workload_identity', 'system': 'service',
    'anonymous': 'unknown', 'user': 'human', 'federated': 'human',
}


class InventoryError(ValueError):
  """An inventory that cannot be used (missing columns, unreadable)."""


def _split_patterns(value: Any) -> List[str]:
  """Glob patterns from a list (JSON/Avro) or a ';'/','/'|'-separated string (CSV)."""
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    items = [str(v) for v in value]
  else:
    items = str(value).replace('|', ';').replace(',', ';').split(';')
  return [p.strip() for p in items if p and p.strip()]


def normalise(row: Dict[str, Any]) -> Dict[str, Any]:
  """One inventory row in the shape every consumer reads (text fields, pattern lists)."""
  out: Dict[str, Any] = {}
  for k, v in row.items():
    if not k:
      continue
    if k in LIST_FIELDS:
      out[k] = _split_patterns(v)
    else:
      out[k] = '' if v is None else str(v).strip()
  for k in TEXT_FIELDS:
    out.setdefault(k, '')
  for k in LIST_FIELDS:
    out.setdefault(k, [])
  out['status'] = (out['status'] or 'active').lower()
  out['criticality'] = out['criticality'].lower()
  out['environment'] = out['environment'].lower()
  return out


def _rows_csv(data: bytes, path: str) -> Iterator[Dict[str, Any]]:
  reader = csv.DictReader(io.StringIO(data.decode('utf-8-sig')))
  missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
  if missing:
    raise InventoryError(f'{path}: inventory lacks columns {missing}')
  yield from reader


def _rows_jsonl(data: bytes, path: str) -> Iterator[Dict[str, Any]]:
  for n, line in enumerate(data.decode('utf-8-sig').splitlines(), 1):
    if line.strip():
      row = json.loads(line)
      if not isinstance(row, dict):
        raise InventoryError(f'{path}:{n}: expected a JSON object per line')
      yield row


def _rows_avro(data: bytes, path: str) -> Iterator[Dict[str, Any]]:
  reader = fastavro.reader(io.BytesIO(data))
  names = {f['name'] for f in reader.writer_schema.get('fields', [])}
  missing = [c for c in REQUIRED if c not in names]
  if missing:
    raise InventoryError(f'{path}: inventory schema lacks fields {missing}')
  yield from reader


def read_inventory(path: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
  """(identity, normalised row) for every row of an inventory file; fails loudly on a bad schema."""
  with FileSystems.open(path, compression_type='uncompressed') as f:
    data = f.read()
  if data[:4] == b'Obj\x01':
    rows = _rows_avro(data, path)
  elif path.endswith(('.jsonl', '.json', '.ndjson')):
    rows = _rows_jsonl(data, path)
  else:
    rows = _rows_csv(data, path)
  for row in rows:
    row = normalise(row)
    if row['identity']:
      yield row['identity'], row


class Snapshot(typing.NamedTuple):
  """The whole inventory as read at ``version`` (seconds since the epoch)."""
  version: float
  digest: str
  rows: Dict[str, Dict[str, Any]]


def snapshot_of(rows: Iterable[Tuple[str, Dict[str, Any]]], version: float) -> Snapshot:
  rows = dict(rows)
  digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
  return Snapshot(version, digest, rows)


def read_snapshot(path: str, version: Optional[float] = None) -> Snapshot:
  return snapshot_of(read_inventory(path), time.time() if version is None else version)


def newest(snapshots: Iterable[Snapshot]) -> Snapshot:
  """The snapshot to use: the latest read (runners may show every fired pane of the side input)."""
  best = None
  for s in snapshots:
    if best is None or s.version > best.version:
      best = s
  return best if best is not None else Snapshot(0.0, '', {})


def context_for(identity: str, log_type: str, inventory: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  row = inventory.get(identity)
  if row is not None:
    return dict(row, registered='true')
  ctx = normalise({'identity': identity,
                   'identity_type': LOG_TYPE_TO_INVENTORY.get(log_type, 'unknown')})
  ctx['registered'] = 'false'
  return ctx


def matches_any(value: str, patterns: List[str]) -> bool:
  """Case-insensitive glob match ("ecr:*", "s3:Get*")."""
  lowered = value.lower()
  return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


class _PassChangedSnapshots(beam.DoFn):
  """Emits a re-read snapshot only when its content changed (one key: a handful of elements)."""

  LAST = ReadModifyWriteStateSpec('last_digest', beam.coders.StrUtf8Coder())

  def process(self, kv, last=beam.DoFn.StateParam(LAST)):
    _, snapshot = kv
    if snapshot.digest != last.read():
      last.write(snapshot.digest)
      yield snapshot


class _ReadSnapshotFn(beam.DoFn):
  """An impulse -> the inventory read now; a failed re-read keeps the previous snapshot in use."""

  def __init__(self, path: str, fail_on_error: bool):
    self._path = path
    self._fail = fail_on_error
    self.reads = Metrics.counter('postauth', 'inventory_reads')
    self.errors = Metrics.counter('postauth', 'inventory_read_errors')

  def process(self, _):
    try:
      snapshot = read_snapshot(self._path)
    except Exception:  # a half-written file during an edit must not stop a streaming job
      self.errors.inc()
      if self._fail:
        raise
      return
    self.reads.inc()
    yield snapshot


class InventorySnapshots(beam.PTransform):
  """Inventory -> snapshots in the global window, ready for ``beam.pvalue.AsList``.

  ``refresh_seconds`` > 0 (streaming) re-reads the source on that period.
  BigQuery tables (``bq://project:dataset.table``) are read with ReadFromBigQuery
  once (batch); refresh them by pointing at an exported file instead.
  """

  def __init__(self, path: str, refresh_seconds: float = 0.0):
    super().__init__()
    self._path = path
    self._refresh = refresh_seconds

  def expand(self, pbegin):
    if self._path.startswith('bq://'):
      table = self._path[len('bq://'):]
      return (pbegin
              | 'ReadInventoryTable' >> beam.io.ReadFromBigQuery(table=table)
              | 'Normalise' >> beam.Map(lambda r: ('', normalise(r)))
              | 'Gather' >> beam.GroupByKey()
              | 'ToSnapshot' >> beam.Map(lambda kv: snapshot_of(
                  ((r['identity'], r) for r in kv[1] if r['identity']), time.time())))
    if self._refresh <= 0:
      return (pbegin
              | 'InventoryPath' >> beam.Create([None])
              | 'ReadInventory' >> beam.ParDo(_ReadSnapshotFn(self._path, fail_on_error=True)))
    from apache_beam.transforms.periodicsequence import PeriodicImpulse
    return (pbegin
            | 'EveryRefresh' >> PeriodicImpulse(fire_interval=self._refresh)
            | 'ReReadInventory' >> beam.ParDo(_ReadSnapshotFn(self._path, fail_on_error=False))
            | 'OneKey' >> beam.Map(lambda s: ('inventory', s))
            | 'OnlyChanges' >> beam.ParDo(_PassChangedSnapshots())
            | 'GlobalRepeated' >> beam.WindowInto(
                window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING))


class EnrichWindows(beam.PTransform):
  """IdentityWindow -> (IdentityWindow, inventory context), the context from the newest snapshot."""

  def __init__(self, snapshots):
    super().__init__()
    self._snapshots = snapshots

  def expand(self, windows):
    unregistered = Metrics.counter('postauth', 'windows_unregistered_identity')

    def enrich(w, snapshots):
      context = context_for(w.identity, w.agg.identity_type, newest(snapshots).rows)
      if context['registered'] == 'false':
        unregistered.inc()
      return w, context

    return windows | 'AttachInventory' >> beam.Map(enrich, beam.pvalue.AsList(self._snapshots))


class ReadInventory(beam.PTransform):
  """Inventory file -> (identity, row) pairs (for ``AsDict`` in batch jobs such as training)."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, pbegin):
    return (pbegin
            | 'InventoryPath' >> beam.Create([self._path])
            | 'ReadInventoryRows' >> beam.FlatMap(read_inventory))
