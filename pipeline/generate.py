"""A labelled CloudTrail sample: NHI fleets behaving normally, legitimate change, and attacks.

Writes ``history/`` (CloudTrail S3 delivery files, gzipped ``{"Records": [...]}``,
one per day, plus the dormant key's single day of use 45 days before the live day),
``live/`` (the last day as CloudTrail JSON lines), ``inventory.csv``, ``labels.json``
(the nine injected attacks) and ``benign.json`` (legitimate change on the last day
that should stay low or silent). Deterministic for a given seed.

The parts: the identities (``pipeline/synthetic_fleet.py``), their routine activity as CloudTrail
records (``pipeline/activity.py``), everyday legitimate change (``pipeline/fleet_change.py``),
the live day's attacks and deliberate benign cases (``pipeline/scenarios.py``), the sample's
calendar and files (``pipeline/sample_layout.py``). This module runs the days and writes them.
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Dict, List

import numpy as np
import orjson

from postauth.pipeline import scenarios
from postauth.pipeline.activity import Simulator
from postauth.pipeline.synthetic_fleet import ACCOUNT, Identity, build_fleet, expected_actions, expected_services
from postauth.pipeline.fleet_change import FleetChange
from postauth.pipeline.sample_layout import (DAY, DEFAULT_END, iso, make_day_dirs, sample_days, write_cases,
                                             write_inventory)


def _write_history(out_dir: str, day0: float, records: List[dict]) -> None:
  """One day of history as a CloudTrail S3 delivery file (gzipped ``{"Records": [...]}``)."""
  date = iso(day0)[:10]
  path = os.path.join(out_dir, 'history', f'{ACCOUNT}_CloudTrail_us-east-1_{date.replace("-", "")}.json.gz')
  with gzip.open(path, 'wb', compresslevel=3) as f:
    f.write(orjson.dumps({'Records': records}))


def _write_live(out_dir: str, day0: float, records: List[dict]) -> None:
  """The live day as CloudTrail JSON lines, as a trail's event stream delivers them."""
  path = os.path.join(out_dir, 'live', f'cloudtrail-{iso(day0)[:10]}.jsonl')
  with open(path, 'wb') as f:
    for r in records:
      f.write(orjson.dumps(r) + b'\n')


def _inventory_rows(identities: List[Identity], first_day0: float, dormant: Identity, dormant_day0: float):
  """One inventory row per identity; creation dates before the sample (joiners: the day they joined)."""
  for who in identities:
    created = first_day0 - DAY * (30 + zlib.crc32(who.name.encode()) % 400)
    if who.created is not None:
      created = who.created
    if who is dormant:
      created = dormant_day0 - 400 * DAY
    yield [who.canonical, who.identity_type, who.owner, who.team, who.environment,
           who.criticality, ';'.join(expected_services(who)), ';'.join(expected_actions(who)),
           iso(created), iso(created + DAY * (zlib.crc32(who.arn.encode()) % 30)), 'active',
           who.name]


def generate(out_dir: str, identities: int = 200, days: int = 7, seed: int = 7,
             end: str = DEFAULT_END, rate_scale: float = 0.4, agents: int = 0,
             quiet_history: bool = False) -> Dict[str, int]:
  """Writes the sample; returns counts for the caller to report (``history_changes``: the
  history days' changes by kind). ``agents``: also an AI-agent fleet as OpenTelemetry traces
  (``pipeline/agent_fleet.py``), in the same sample. ``quiet_history``: no change at all on the
  history days, a third of the fleet changing at once on the live day (``pipeline/fleet_change.py``)."""
  if days < 2:
    raise ValueError('need at least 2 days: history and a live day')
  rng = np.random.default_rng(seed)
  fleet = build_fleet(identities, rng)
  sim = Simulator(rng, rate_scale)
  starts = sample_days(end, days)
  make_day_dirs(out_dir)
  labels, benign = [], []
  sim2 = Simulator(np.random.default_rng([seed, 2]), rate_scale)  # the wider library's own stream
  sim3 = Simulator(np.random.default_rng([seed, 3]), rate_scale)  # everyday fleet change's own stream
  change = FleetChange(sim3, sim3.rng)
  extras = scenarios.extra_identities(sim2.rng)
  counts = {'identities': len(fleet) + len(extras), 'history_events': 0, 'live_events': 0}
  history_changes: Dict[str, int] = {}
  # what the fleet already does: a novel-harmless rollout draws only calls none of it ever made
  change.seen.update((c.service, c.action) for w in fleet + list(extras.values()) for c in w.calls + w.extra_calls)
  old_day0, old_records = scenarios.dormant_history(sim2, extras, starts[-1])
  change.saw(old_records)
  _write_history(out_dir, old_day0, old_records)
  counts['history_events'] += len(old_records)
  for d, day0 in enumerate(starts):
    live = d == days - 1
    records: List[dict] = []
    # The live day's attack targets are chosen first and left out of the day's change.
    taken = scenarios.attack_targets(fleet) if live else set()
    changes, changed = change.day(fleet, day0, release=live, taken=taken, quiet=quiet_history)
    for who in fleet:
      if who.canonical not in changed or who.canonical in taken:
        records += sim.normal(who, day0, day0 + DAY)
    for c in changes:
      records += c.records
      if live:
        benign.append(c.note)
      else:
        history_changes[c.note['kind']] = history_changes.get(c.note['kind'], 0) + 1
    taken |= changed
    if live:
      injected, day_labels, day_benign = scenarios.live_day(sim, sim2, fleet, extras, day0, taken)
      records += injected
      labels += day_labels
      benign += day_benign
    records += scenarios.extra_routine(sim2, extras, day0)
    records.sort(key=lambda r: r['eventTime'])
    if live:
      _write_live(out_dir, day0, records)
      counts['live_events'] += len(records)
    else:
      _write_history(out_dir, day0, records)
      counts['history_events'] += len(records)
      change.saw(records)
  write_inventory(out_dir, _inventory_rows(fleet + list(extras.values()), starts[0], extras['dormant'], old_day0))
  write_cases(out_dir, 'labels.json', labels)
  write_cases(out_dir, 'benign.json', benign)
  counts['labels'] = len(labels)
  counts['identities'] = len(fleet) + len(extras)  # with the identities that joined
  counts['benign_changes'] = len(benign)
  counts['history_changes'] = dict(sorted(history_changes.items()))
  if agents:
    from postauth.pipeline.agent_fleet import generate_agents
    counts['otel'] = generate_agents(out_dir, agents, days, seed, end, append=True)
  return counts
