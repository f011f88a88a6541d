"""What both sample generators share: the calendar and the files a labelled sample is made of.

The CloudTrail fleet (``pipeline/generate.py``) and the AI-agent fleet (``pipeline/agent_fleet.py``)
write one layout, ``history/`` and ``live/`` (one file per day, the last day live),
``inventory.csv``, ``labels.json`` (attacks) and ``benign.json`` (legitimate change), and the
agents can be added to a CloudTrail sample, so one evaluation reads either or both.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
from typing import Dict, Iterable, List, Sequence

HOUR = 3600.0
DAY = 86400.0
DEFAULT_END = '2026-11-06'  # exclusive: the live day is Thursday 2026-11-05

# ``runs_as``: the cloud principals an AI agent's runtime acts as (pipeline/agent_cloud.py); '' for others.
INVENTORY_HEADER = ['identity', 'identity_type', 'owner', 'team', 'environment', 'criticality',
                    'expected_services', 'expected_actions', 'created_at', 'last_rotated_at', 'status',
                    'display_name', 'emitted_by', 'runs_as']


def iso(t: float) -> str:
  """Epoch seconds as CloudTrail writes times (UTC, whole seconds, ``Z``)."""
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def benign_note(identity: str, kind: str, start: float, end: float, detail: str) -> Dict:
  """One legitimate change as ``benign.json`` holds it: expected to stay low or silent."""
  return {'identity': identity, 'kind': kind, 'change': kind, 'detail': detail,
          'start': iso(start), 'end': iso(end), 'expected': 'low_or_none'}


def sample_days(end: str, days: int) -> List[float]:
  """The start of each of the sample's ``days`` days, oldest first, the live day last (``end`` exclusive)."""
  last = datetime.datetime.fromisoformat(end).replace(tzinfo=datetime.timezone.utc).timestamp() - DAY
  return [last - (days - 1 - d) * DAY for d in range(days)]


def make_day_dirs(out_dir: str) -> None:
  """``history/`` and ``live/`` under the sample folder."""
  for d in ('history', 'live'):
    os.makedirs(os.path.join(out_dir, d), exist_ok=True)


def write_inventory(out_dir: str, rows: Iterable[Sequence[str]], append: bool = False) -> None:
  """``inventory.csv``: a new file with its header, or (``append``) rows added to the one there."""
  path = os.path.join(out_dir, 'inventory.csv')
  mode = 'a' if append and os.path.exists(path) else 'w'
  with open(path, mode, newline='') as f:
    w = csv.writer(f)
    if mode == 'w':
      w.writerow(INVENTORY_HEADER)
    for row in rows:
      w.writerow(list(row) + [''] * (len(INVENTORY_HEADER) - len(row)))


def write_cases(out_dir: str, name: str, cases: List[Dict], append: bool = False) -> None:
  """``labels.json`` / ``benign.json``: a JSON list; with ``append``, after the cases already there."""
  path = os.path.join(out_dir, name)
  if append and os.path.exists(path):
    with open(path) as f:
      cases = json.load(f) + cases
  with open(path, 'w') as f:
    json.dump(cases, f, indent=1)
