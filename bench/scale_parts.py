"""Offline measures behind ``bench/scale.py``: per-identity state size and the one-key costs of the
stateful steps on events (a hot identity), on the job's own classes."""
from __future__ import annotations

import collections
import random
import time
from typing import Dict, List

import orjson


def identity_key(r: dict) -> str:
  """The identity a CloudTrail record belongs to, as the parser keys it for these records (the
  role of an assumed-role session, else the caller's ARN); only used to pick the hot identity."""
  ui = r.get('userIdentity') or {}
  issuer = ((ui.get('sessionContext') or {}).get('sessionIssuer') or {}).get('arn')
  return issuer or ui.get('arn') or ui.get('principalId') or ''


def state_estimate(work: str, records: List[dict], sample: int, window: int = 3600, period: int = 900,
                   lateness: int = 3600 + 600) -> Dict:
  """Per identity, the history state cell after the live day (the job's own fold and coder) and
  the window accumulators in flight; for ``sample`` identities, scaled to the fleet."""
  from postauth.domain.window import WindowAggregate
  from postauth.transforms.aggregate import WindowAggregateFn
  from postauth.transforms.history import TrackHistoryFn, WalkHistoryFn
  from postauth.transforms.history_cell import IdentityState
  from postauth.transforms.parse import RecordParser
  from postauth.transforms.records import split_records
  from postauth.transforms.windowing import IdentityWindow
  parser = RecordParser()
  raw = b'\n'.join(orjson.dumps(r) for r in records)
  keys = sorted({identity_key(r) for r in records})
  rng = random.Random(0)
  chosen = set(rng.sample(keys, min(sample, len(keys))))
  panes: Dict = {}
  for rec in split_records(raw, 'live.jsonl'):
    if identity_key(rec.obj or {}) not in chosen:
      continue
    e = parser.parse(rec)
    if isinstance(e, str) or e is None:
      continue
    key = (e.identity, int(e.event_time // period) * period)
    panes.setdefault(key, WindowAggregate()).add(e, period)
  windows: Dict = collections.defaultdict(dict)
  for (identity, start), agg in panes.items():
    for k in range(window // period):
      windows[identity].setdefault(start - k * period, WindowAggregate()).merge(agg)
  walker = WalkHistoryFn(f'{work}/model')
  walker.setup()
  coder, acc = TrackHistoryFn.HISTORY.coder, WindowAggregateFn().get_accumulator_coder()
  history, held = [], collections.Counter()
  for identity, ws in windows.items():
    items = [(IdentityWindow(identity, float(s), float(s + window), agg), {'registered': 'true'})
             for s, agg in sorted(ws.items())]
    hist, _ = walker._walk(identity, None, items)
    history.append(len(coder.encode(IdentityState(hist, {}))))
    for s, agg in ws.items():  # a window's accumulator is held from its start to end + lateness
      size = len(acc.encode(agg))
      for t in range(s, s + window + lateness, period):
        held[t] += size
  n = len(history)
  return {'identities_sampled': n, 'history_bytes_mean': sum(history) / n, 'history_bytes_max': max(history),
          'windows_peak_bytes': max(held.values())}


# -- a hot identity at the Pub/Sub dedup ------------------------------------------------------

class _EncodedBag:
  """A bag state cell as a runner stores it: each value encoded on add, decoded on read (with
  the state's coder)."""

  def __init__(self, coder):
    self.coder, self.data = coder, []

  def read(self):
    return [self.coder.decode(x) for x in self.data]

  def add(self, value):
    self.data.append(self.coder.encode(value))

  def clear(self):
    self.data = []


class _NoTimer:
  def set(self, ts):
    pass


def dedup_span_cost(events_in_span: int, batch: int = 500) -> float:
  """CPU seconds the Pub/Sub path's event dedup (``_DropDuplicatesFn``) spends on one identity's
  span (an hour) of ``events_in_span`` events arriving in batches of ``batch``, keyed as the job
  keys them (``_span_key``): each key's batch reads that key's id digests, appends its new ones."""
  from postauth.domain.event import Event
  from postauth.transforms.dedup_events import SPAN, _DropDuplicatesFn, _span_key
  fn, key_of = _DropDuplicatesFn(7800), _span_key(SPAN)
  cells, timer = {}, _NoTimer()
  events = [Event(f'{i:08x}-0000-4000-8000-{i:012x}', 1.8e9 + i * SPAN / events_in_span, 'hot', 'AssumedRole',
                  '', '', 'aws', 's3', 's3:GetObject', 'data_read', '', 'us-east-1', '10.0.0.1', 'sdk',
                  True, '', True, f'pubsub:sub#{i}') for i in range(events_in_span)]
  t = time.process_time()
  for k in range(0, events_in_span, batch):
    by_key: Dict = {}
    for e in events[k:k + batch]:
      by_key.setdefault(key_of(e), []).append(e)
    for key, items in by_key.items():
      cell = cells.setdefault(key, _EncodedBag(_DropDuplicatesFn.SEEN.coder))
      for _ in fn.process((key, items), seen=cell, expire=timer):
        pass
  return time.process_time() - t


def dedup_section(a) -> Dict:
  """The Pub/Sub path's dedup with one identity's span growing: CPU per span against its size."""
  sizes = (1_000, 10_000, 50_000) if a.quick else (10_000, 50_000, 200_000, 1_000_000)
  print('\nPub/Sub event dedup, one identity\'s hour (a key), batches of 500 (the job\'s '
        '_DropDuplicatesFn, its state encoded per key batch):')
  out = {}
  for n in sizes:
    out[n] = cpu = dedup_span_cost(n)
    print(f'  {n:>9,} events in the hour: {cpu:7.2f} CPU s ({n / cpu:,.0f} ev/cpu-s; '
          f'{n / 3600:,.0f} ev/s of one identity)', flush=True)
  return out


def pane_add_rate(records: List[dict]) -> Dict:
  """Events per CPU-second one key of the streaming ``AggregatePanes`` combine takes when nothing
  is lifted: the hot identity's parsed events added to their 15 min pane accumulators
  (``WindowAggregateFn.add_input``, with evidence, as ``IdentityWindows`` runs it)."""
  from postauth.transforms.aggregate import WindowAggregateFn
  from postauth.transforms.parse import RecordParser
  from postauth.transforms.records import split_records
  parser = RecordParser()
  events = [parser.parse(x) for x in split_records(b'\n'.join(orjson.dumps(r) for r in records), 'hot.jsonl')]
  events = [e for e in events if not isinstance(e, str) and e is not None]
  fn, accs = WindowAggregateFn(900, True), {}
  t = time.process_time()
  for e in events:
    k = int(e.event_time // 900)
    accs[k] = fn.add_input(accs[k] if k in accs else fn.create_accumulator(), e)
  cpu = time.process_time() - t
  return {'events': len(events), 'cpu': cpu, 'per_cpu_s': len(events) / cpu if cpu else float('nan')}


# -- the run ----------------------------------------------------------------------------------

