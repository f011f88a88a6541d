"""The identity inventory (who owns an identity, what it is, where it runs) as a side input."""
from __future__ import annotations

import csv
import io
from typing import Dict, Iterator, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

REQUIRED = ('identity', 'identity_type', 'owner', 'team', 'environment')

# What an identity missing from the inventory is assumed to be, from the log's own type.
LOG_TYPE_TO_INVENTORY = {
    'AssumedRole': 'workload_identity', 'IAMUser': 'api_key', 'AWSService': 'service',
    'Root': 'human', 'FederatedUser': 'human', 'AWSAccount': 'service',
}


def read_inventory(path: str) -> Iterator[Tuple[str, Dict[str, str]]]:
  """(identity, row) for every row of an inventory CSV; fails loudly on a bad header."""
  with FileSystems.open(path, compression_type='uncompressed') as f:
    text = f.read().decode('utf-8-sig')
  reader = csv.DictReader(io.StringIO(text))
  missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
  if missing:
    raise ValueError(f'{path}: inventory lacks columns {missing}')
  for row in reader:
    identity = (row.get('identity') or '').strip()
    if identity:
      yield identity, {k: (v or '').strip() for k, v in row.items() if k}


def context_for(identity: str, log_type: str, inventory: Dict[str, Dict[str, str]]) -> Dict[str, str]:
  row = inventory.get(identity)
  if row is not None:
    return dict(row, registered='true')
  return {'identity': identity, 'identity_type': LOG_TYPE_TO_INVENTORY.get(log_type, 'unknown'),
          'owner': '', 'team': '', 'environment': '', 'criticality': '', 'registered': 'false'}


class ReadInventory(beam.PTransform):
  """Inventory file -> (identity, row) pairs, ready for ``beam.pvalue.AsDict``."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, pbegin):
    return (pbegin
            | 'InventoryPath' >> beam.Create([self._path])
            | 'ReadInventoryRows' >> beam.FlatMap(read_inventory))


class EnrichWindows(beam.PTransform):
  """IdentityWindow -> (IdentityWindow, inventory context), the context from a side input."""

  def __init__(self, inventory):
    super().__init__()
    self._inventory = inventory

  def expand(self, windows):
    unregistered = Metrics.counter('postauth', 'windows_unregistered_identity')

    def enrich(w, inventory):
      context = context_for(w.identity, w.agg.identity_type, inventory)
      if context['registered'] == 'false':
        unregistered.inc()
      return w, context

    return windows | 'AttachInventory' >> beam.Map(enrich, beam.pvalue.AsDict(self._inventory))
