"""The identity inventory (who owns an identity, what it may do, where it runs) as a side input.

Sources: CSV, JSON lines, Avro container files (fastavro), or a BigQuery table
(``bq://project:dataset.table``, GCP only). Every row is normalised to one dict
shape (``normalise``), so rules and findings read the same fields whatever the
source.

The side input holds *snapshots* (the whole inventory, versioned by when it
was read). Every job reads one at start: a batch job's inventory file in each worker's
``DoFn.setup`` (``InventoryAtSetup``), a BigQuery table or a streaming job's inventory as a
side input (``InventorySnapshots``, global window); a streaming job from an unbounded source
also re-reads it every ``refresh_seconds`` (``InventoryRefresh``), a windowed side input that each
identity-window sees from the last complete refresh period, so an edited
inventory applies without a restart (see transforms/updates.py for why
windowed, and for the one runner where it cannot run).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import time
import typing
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
import fastavro
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.typehints.native_type_compatibility import convert_to_beam_type

from postauth.transforms.formats.cloudtrail import session_role
from postauth.transforms.updates import PeriodicReads, PolledRead
from postauth.transforms.updates import newest as updates_newest
from postauth.transforms.windowing import IDENTITY_WINDOWS, IdentityWindow

REQUIRED = ('identity', 'identity_type', 'owner', 'team', 'environment')
# Glob lists. ``emitted_by``: the services (OpenTelemetry ``service.name``) that may emit spans
# naming this identity (domain/emitter.py); absent or empty, any may. ``runs_as``: for an agent,
# the principals (canonical identities, no globs) whose audit records its tool calls make
# (transforms/agent_join.py); several agents may share one.
LIST_FIELDS = ('expected_actions', 'expected_services', 'emitted_by', 'runs_as')
TEXT_FIELDS = ('identity', 'identity_type', 'owner', 'team', 'environment', 'criticality',
               'created_at', 'last_rotated_at', 'status', 'display_name')

# What an identity missing from the inventory is assumed to be, from the log's own type.
LOG_TYPE_TO_INVENTORY = {
    'AssumedRole': 'workload_identity', 'IAMUser': 'api_key', 'AWSService': 'service',
    'Root': 'human', 'FederatedUser': 'human', 'AWSAccount': 'service',
    # GCP / Kubernetes / OCSF principals (see transforms/formats)
    'service_account': 'service_account', 'node': 'workload_identity', 'system': 'service',
    'anonymous': 'unknown', 'user': 'human', 'federated': 'human',
    'ai_agent': 'ai_agent',  # OpenTelemetry GenAI tool spans (transforms/formats/otel.py)
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
  out['runs_as'] = [session_role(p) for p in out['runs_as']]  # as the CloudTrail parser names them
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
  yield from with_agent_principals(
      (row['identity'], row) for row in map(normalise, rows) if row['identity'])


def with_agent_principals(pairs: Iterable[Tuple[str, Dict[str, Any]]]) -> Iterator[Tuple[str, Dict[str, Any]]]:
  """The rows, then one for each principal an agent runs as (``runs_as``) that has none of its
  own: listing it registers it, with the agent's owner, team and environment (the first agent's,
  by identity, when several share it)."""
  pairs = list(pairs)
  known = {identity for identity, _ in pairs}
  yield from pairs
  added: Dict[str, Dict[str, Any]] = {}
  for identity, row in sorted(pairs, key=lambda kv: kv[0]):
    for principal in row.get('runs_as') or ():
      if principal in known or principal in added:
        continue
      added[principal] = normalise({
          'identity': principal, 'identity_type': 'workload_identity', 'owner': row['owner'],
          'team': row['team'], 'environment': row['environment'], 'criticality': row['criticality'],
          'created_at': row['created_at'], 'status': row['status'], 'display_name': f'runs {identity}'})
  yield from added.items()


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
  """The latest read of those in view (``version``, a snapshot's first field, is its read time)."""
  return updates_newest(snapshots) or Snapshot(0.0, '', {})


def context_for(identity: str, log_type: str, inventory: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  row = inventory.get(identity)
  if row is not None:
    return dict(row, registered='true')
  ctx = normalise({'identity': identity,
                   'identity_type': LOG_TYPE_TO_INVENTORY.get(log_type, 'unknown')})
  ctx['registered'] = 'false'
  return ctx


class InventorySnapshots(beam.PTransform):
  """Inventory -> one snapshot in the global window, ready for ``beam.pvalue.AsList``.

  BigQuery tables (``bq://project:dataset.table``) are read with ReadFromBigQuery;
  files with FileSystems (local, gs://, s3://). A bad inventory fails the job
  at start, before any event is judged against it.
  """

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, pbegin):
    if self._path.startswith('bq://'):
      table = self._path[len('bq://'):]
      return (pbegin
              | 'ReadInventoryTable' >> beam.io.ReadFromBigQuery(table=table)
              | 'Normalise' >> beam.Map(lambda r: ('', normalise(r)))
              | 'Gather' >> beam.GroupByKey()
              | 'ToSnapshot' >> beam.Map(lambda kv: snapshot_of(with_agent_principals(
                  (r['identity'], r) for r in kv[1] if r['identity']), time.time())))
    path = self._path  # an Impulse, not a Create: no reshuffle step for one path
    return (pbegin
            | 'Impulse' >> beam.Impulse()
            | 'ReadInventory' >> beam.Map(lambda _: read_snapshot(path)))


class InventoryRefresh(beam.PTransform):
  """Streaming: the inventory re-read every ``refresh_seconds``, as a windowed side input.

  See transforms/updates.py for why windowed rather than a triggered global
  window (an edit takes effect within two periods and the side input never
  holds a finding back) and for the runners it runs on.
  """

  def __init__(self, path: str, refresh_seconds: float, stop_after: Optional[float] = None):
    super().__init__()
    if path.startswith('bq://'):
      raise InventoryError('--inventory-refresh re-reads files; export the BigQuery table to a '
                           'file (or set --inventory-refresh 0)')
    self._reads = PeriodicReads(functools.partial(read_snapshot, path), refresh_seconds,
                                'inventory', stop_after)

  def expand(self, pbegin):
    return pbegin | 'ReReadInventory' >> self._reads

  def side_input(self, reads: beam.PCollection):
    return self._reads.as_side_input(reads)

  @staticmethod
  def polled(path: str, refresh_seconds: float) -> PolledRead:
    """The same re-read, polled by ``EnrichWindows`` itself (runners where the side input fails)."""
    if path.startswith('bq://'):
      raise InventoryError('--inventory-refresh re-reads files; export the BigQuery table to a '
                           'file (or set --inventory-refresh 0)')
    return PolledRead(functools.partial(read_snapshot, path), refresh_seconds, 'inventory')


def file_stamp(path: str) -> Tuple[int, float]:
  """(size, last update) of an inventory file, as the filesystem reports it."""
  found = FileSystems.match([path])[0].metadata_list
  if not found:
    raise InventoryError(f'inventory {path} not found')
  return found[0].size_in_bytes, found[0].last_updated_in_seconds


class InventoryAtSetup(typing.NamedTuple):
  """An inventory file each worker reads once, in ``DoFn.setup``, instead of a side input.

  ``stamp``: the file's ``file_stamp`` at launch; a worker that finds another counts
  ``inventory_changed_since_launch`` (and uses what it read), so a file replaced during a
  job is visible. Why not a side input: on Prism, a stage that reads a side input keeps the
  runner's scheduler busy (a full core) for as long as any of its bundles runs, and the
  batch job's scoring stage, where enrichment fuses, runs for most of the job."""
  path: str
  stamp: Tuple[int, float]

  @classmethod
  def at_launch(cls, path: str) -> 'InventoryAtSetup':
    return cls(path, file_stamp(path))


def start_up_inventory(p: beam.Pipeline, path: str, bounded: bool):
  """What ``EnrichWindows`` reads at start: a bounded job's inventory file is read by each
  worker at setup (``InventoryAtSetup``); a BigQuery table, or any streaming job's inventory,
  is one snapshot as a side input (``InventorySnapshots``: every worker of a long-running job
  sees the same start-up read, whenever it joined)."""
  if bounded and not path.startswith('bq://'):
    return InventoryAtSetup.at_launch(path)
  return p | 'Inventory' >> InventorySnapshots(path)


class _EnrichFn(beam.DoFn):
  """IdentityWindow -> (IdentityWindow, context) from the newest inventory this worker has seen.

  Order of preference: the re-read visible to this window, else the newest
  re-read this DoFn instance saw before (a window whose side window is empty,
  e.g. a failed re-read), else the snapshot read at start (the side input ``base``, or
  the file read in ``setup``).
  """

  def __init__(self, poll: Optional[PolledRead] = None, at_setup: Optional[InventoryAtSetup] = None):
    self.unregistered = Metrics.counter('postauth', 'windows_unregistered_identity')
    self.updates_used = Metrics.counter('postauth', 'inventory_updates_applied')
    self.changed = Metrics.counter('postauth', 'inventory_changed_since_launch')
    self._last: Optional[Tuple[float, Snapshot]] = None
    self._poll = poll
    self._at_setup = at_setup

  def setup(self):
    self._read: Optional[Snapshot] = None
    self._changed = False
    if self._at_setup is not None:
      self._read = read_snapshot(self._at_setup.path)
      self._changed = file_stamp(self._at_setup.path) != tuple(self._at_setup.stamp)
      if self._changed:
        logging.warning('inventory %s changed after the job was launched; this worker uses it as '
                        'read now', self._at_setup.path)

  def start_bundle(self):
    if self._changed:  # counted once per worker, where metrics are collected
      self.changed.inc()
      self._changed = False

  def process(self, w, base=None, updates=None):
    snapshot = self._read if base is None else newest(base)
    if self._poll is not None:
      read = self._poll.poll()
      updates = [read] if read is not None else []
    if updates is not None:
      read = updates_newest(updates)
      if read is not None and (self._last is None or read[0] > self._last[0]):
        if self._last is None or read[1].digest != self._last[1].digest:
          self.updates_used.inc()
        self._last = read
      if self._last is not None:
        snapshot = self._last[1]
    if isinstance(w, IdentityWindow):
      yield w, self._context(w, snapshot)
    else:  # (identity, [its windows]): IdentityWindows(grouped=True)
      yield w[0], [(x, self._context(x, snapshot)) for x in w[1]]

  def _context(self, w: IdentityWindow, snapshot) -> Dict:
    context = context_for(w.identity, w.agg.identity_type, snapshot.rows)
    if context['registered'] == 'false':
      self.unregistered.inc()
    return context


class EnrichWindows(beam.PTransform):
  """IdentityWindow -> (IdentityWindow, inventory context); or (identity, [windows]) ->
  (identity, [(window, context)]) for grouped windows.

  ``inventory``: the start-up read (``start_up_inventory``: an ``InventoryAtSetup`` file or
  an ``InventorySnapshots`` side input); ``updates``: the side input of an
  ``InventoryRefresh`` (streaming), or None; ``poll``: the same re-read polled by this step
  instead (``InventoryRefresh.polled``), or None.
  """

  def __init__(self, inventory, updates=None, poll: Optional[PolledRead] = None):
    super().__init__()
    self._inventory = inventory
    self._updates = updates
    self._poll = poll

  def expand(self, windows):
    at_setup = self._inventory if isinstance(self._inventory, InventoryAtSetup) else None
    sides = {} if at_setup else {'base': beam.pvalue.AsList(self._inventory)}
    if self._updates is not None:
      sides['updates'] = self._updates
    # Typed so Beam's sampled size estimates find IdentityWindowCoder's, not a pickle of each window.
    in_context = typing.Tuple[IdentityWindow, typing.Dict[str, typing.Any]]
    out = {convert_to_beam_type(IDENTITY_WINDOWS): typing.Tuple[str, typing.List[in_context]],
           IdentityWindow: in_context}.get(windows.element_type, typing.Any)
    return windows | 'AttachInventory' >> beam.ParDo(
        _EnrichFn(self._poll, at_setup), **sides).with_output_types(out)


class ReadInventory(beam.PTransform):
  """Inventory file -> (identity, row) pairs (for ``AsDict`` in batch jobs such as training)."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, pbegin):
    path = self._path
    return (pbegin
            | 'Impulse' >> beam.Impulse()
            | 'ReadInventoryRows' >> beam.FlatMap(lambda _: read_inventory(path)))
