"""Keyed state over a week of a fleet with identities coming and going: flat, not growing.

    python bench/state_week.py [--services 120] [--ci-per-hour 6] [--agents-per-day 12] [--as-before]

What it drives: the streaming job's stateful steps, on plain objects, over seven days of
15-minute window ends (a full streaming week on the DirectRunner would take hours on 2
cores): the history (``TrackHistoryFn``: its ``process`` and ``expire`` timer callback on
fake state cells), the finding merge (``_RunMerger``), peers (``_Corroborator``) and dedup
(``_Deduplicator`` with its expiry timer), each key's timers fired as a runner fires them
(``process`` resets a key's timer to its earliest waiting element; a timer runs the step
and sets the next), and the folder watch's set of paths read (``watch._forget``).
At the end of each day it prints, per step, keys held and the bytes the runner would store
(the history's state bytes, packed; the others' cells pickled, unpacked: their
``PackedStateCoder`` stores a third of that or less).

The fleet: long-lived service identities active all day; CI namespaces that live 1-4 h
and never come back; AI agents that live 1-2 days; batch identities that work every third
day; a few identities anomalous in every window from day 1 to day 6 (a finding run that,
before, never closed); scattered anomalous windows elsewhere (findings for dedup, some
waiting for peers); peer sightings among agents; CloudTrail-like files every 5 minutes per
account-region for the watch. ``--as-before`` drives the same week without the bounds (no
rollover, no expiry timers, history kept, watch uncapped) for comparison.

History retention is scaled to fit a week (``--history-retention-days 1``,
``--departed-days 3``; the job's defaults are 35 and 400 days): with the defaults the
history plateaus the same way once 35 days have passed, at the identities active within
35 days (plus ~40-byte departed records for 400 days).
"""
from __future__ import annotations

import argparse
import heapq
import os
import pickle
import random
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from postauth.domain import evidence  # noqa: E402
from postauth.domain.event import Event  # noqa: E402
from postauth.domain.window import WindowAggregate  # noqa: E402
from postauth.transforms import findings as findings_mod, watch  # noqa: E402
from postauth.transforms.corroborate import SIGHTING, _Corroborator, group_of  # noqa: E402
from postauth.transforms.findings import _RunMerger, _stamp  # noqa: E402
from postauth.transforms.history import TrackHistoryFn  # noqa: E402
from postauth.transforms.history_cell import decode_state  # noqa: E402
from postauth.transforms.timer_walk import timer_ms  # noqa: E402
from postauth.transforms.triage import _Deduplicator  # noqa: E402
from postauth.transforms.windowing import IdentityWindow  # noqa: E402
from apache_beam.utils.timestamp import Timestamp  # noqa: E402

DAY, H, Q = 86400, 3600, 900
T0 = 1_800_000_000 - 1_800_000_000 % DAY  # midnight UTC
FOREVER = 1e11  # seconds: "no expiry" for --as-before
CTX = {'identity_type': '', 'owner': 'platform@example.com', 'team': 'platform', 'environment': 'prod',
       'criticality': 'high', 'expected_services': ['s3', 'sqs', 'dynamodb'], 'registered': 'true'}


class Cell:
  """A state cell (ReadModifyWrite) and a timer, as the history DoFn sees them; ``value`` holds
  the bytes the cell's coder wrote (as the DirectRunner keeps them)."""

  def __init__(self):
    self.value, self.at = None, None

  def read(self):
    return None if self.value is None else TrackHistoryFn.HISTORY.coder.decode(self.value)

  def write(self, value):
    self.value = TrackHistoryFn.HISTORY.coder.encode(value)

  def clear(self):
    self.value = None

  def set(self, ts):
    self.at = ts.micros / 1e6


class Fleet:
  """Who is active in each 15-minute pane, and their events."""

  def __init__(self, a, rng: random.Random):
    self.rng, self.spans = rng, []  # (identity, kind, start, end)
    for k in range(a.services):
      self.spans.append((f'arn:aws:iam::111122223333:role/svc-{k:03d}', 'service_account', T0, T0 + 7 * DAY))
    n = 0
    for hour in range(7 * 24):
      for _ in range(a.ci_per_hour):
        start = T0 + hour * H + rng.randrange(4) * Q
        self.spans.append((f'system:serviceaccount:ci-{n:05d}:builder', 'ci', start, start + rng.randint(4, 16) * Q))
        n += 1
    for day in range(7):
      for k in range(a.agents_per_day):
        start = T0 + day * DAY + rng.randrange(96) * Q
        self.spans.append((f'agent-{day}-{k:02d}', 'ai_agent', start, start + rng.randint(96, 192) * Q))
    for k in range(a.batch):  # every third day, 2 h
      for day in range(k % 3, 7, 3):
        start = T0 + day * DAY + (2 + k % 10) * H
        self.spans.append((f'arn:aws:iam::111122223333:role/batch-{k:02d}', 'automation', start, start + 2 * H))
    self.anomalous = {self.spans[k][0] for k in range(a.anomalous)}

  def panes(self, start: float) -> Dict[str, WindowAggregate]:
    """Each active identity's pane aggregate for [start, start + 15 min)."""
    out = {}
    for identity, kind, s, e in self.spans:
      if s <= start < e:
        agg = out.get(identity) or WindowAggregate()
        for i in range(self.rng.randint(2, 8) * (3 if kind == 'ci' else 1)):
          k = self.rng.randrange(40 if kind == 'ci' else 15)
          t = start + self.rng.random() * Q
          agg.add(Event(f'{identity}-{t:.3f}-{i}', t, identity, 'AssumedRole', identity, '', 'aws', 's3',
                        f's3:Action{k % 12}', 'data_read' if k % 5 else 'data_write',
                        f'arn:aws:s3:::bucket-{k % 7}/prefix/{identity[-6:]}/object-{k}.json', 'us-east-1',
                        f'10.{k % 3}.4.{k}', 'aws-sdk-go/1.44 linux/amd64', True, '', k % 5 != 0,
                        f's3://trail/{int(start)}.json.gz#{i}'), Q)
        agg.identity_type = kind
        out[identity] = agg
    return out


def scored(identity: str, kind: str, w: IdentityWindow, profile, rng: random.Random, shareable: bool) -> Dict:
  """A scored window dict as ScoreWindows emits it (same fields, realistic sizes)."""
  agg = w.agg
  acts = sorted(agg.actions, key=lambda a: (-agg.actions[a], a))
  reasons = [{'feature': f, 'value': round(rng.random() * 9, 3), 'baseline': 0.4,
              'detail': f'{f}: {agg.count} calls, {len(agg.resources)} resources, of which '
                        f'{rng.randint(1, 9)} never touched before (e.g. {next(iter(agg.resources))})',
              'actions': acts[:3]} for f in ('novel_resources', 'volume_z', 'distinct_actions_excess')]
  return {'identity': identity, 'window_start': w.window_start, 'window_end': w.window_end,
          'score': round(4 + rng.random() * 2, 3), 'score_forest': 3.1, 'score_rarity': 4.4,
          'model_flagged': True, 'severity': 'medium',
          'judgment': {'evidence': [] if shareable else ['new_network_beside_usual'],
                       'shareable': ['sensitive:s3:Action3'] if shareable else [], 'change': ['volume']},
          'model_version': 'v20261105T0045-9d83b274fb', 'cohort': f'{kind}/platform',
          'reasons': reasons, 'rules': [], 'actions': {a: agg.actions[a] for a in acts[:10]},
          'resources': dict(sorted(agg.resources.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
          'panes': {str(k): v for k, v in agg.panes.items()}, 'event_count': agg.count,
          'evidence': evidence.for_window(agg, profile), 'context': dict(CTX, identity_type=kind)}


class Loop:
  """One stateful step's keys as a runner drives them: an element goes to its key's waiting
  list and sets the key's timer at its earliest due time; a timer runs ``step`` and sets the
  timer it asks for. ``expiry`` (dedup) is the second timer that drops old state."""

  def __init__(self, new, due, cells, expiry=False, idle_timers=True):
    self.new, self.due, self.cells, self.expiry = new, due, cells, expiry
    self.idle_timers = idle_timers  # False: a timer with nothing waiting is not fired (--as-before)
    self.keys: Dict[str, list] = {}  # key -> [step object, waiting, timer ms, expiry ms]
    self.heap: List = []

  def add(self, key: str, ms: int, element):
    k = self.keys.setdefault(key, [self.new(), [], None, None])
    k[1].append(element)
    k[2] = min(self.due(e) for e in k[1])
    heapq.heappush(self.heap, (k[2], key))

  def fire(self, upto_ms: int, as_before: bool):
    out = []
    while self.heap and self.heap[0][0] <= upto_ms:
      at, key = heapq.heappop(self.heap)
      k = self.keys.get(key)
      if k is None:
        continue
      if at == k[2]:
        if as_before and not k[1] and not self.idle_timers:
          continue  # before: no timer without a waiting element
        got, k[1], k[2] = k[0].step(at, k[1])
        out += [(key, tv) for tv in got]
        if k[2] is not None:
          heapq.heappush(self.heap, (k[2], key))
      elif at == k[3] and not as_before:
        k[0].expire(at)
      else:
        continue
      if self.expiry and not as_before:
        k[3] = k[0].expiry()
        if k[3] is not None:
          heapq.heappush(self.heap, (k[3], key))
      if not k[1] and not any(self.cells(k[0])):
        del self.keys[key]  # every cell cleared: the key holds nothing
    return out

  def size(self):
    return sum(len(pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL)) for s, w, _, _ in self.keys.values()
               for c in list(self.cells(s)) + [w] if c), len(self.keys)


class _NoneWaiting:
  """The history's bag of windows waiting for their turn: always empty here (in order)."""

  def read(self):
    return []

  def clear(self):
    pass


_NOTHING_WAITING = _NoneWaiting()


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--services', type=int, default=120)
  ap.add_argument('--ci-per-hour', type=int, default=6)
  ap.add_argument('--agents-per-day', type=int, default=12)
  ap.add_argument('--batch', type=int, default=12)
  ap.add_argument('--anomalous', type=int, default=4)
  ap.add_argument('--flag-rate', type=float, default=0.01, help='Share of other windows scored anomalous.')
  ap.add_argument('--account-regions', type=int, default=100, help='Watched CloudTrail prefixes, a file each 5 min.')
  ap.add_argument('--history-retention-days', type=float, default=1.0)
  ap.add_argument('--departed-days', type=float, default=3.0)
  ap.add_argument('--as-before', action='store_true', help='No rollover, no expiry, no watch cap.')
  ap.add_argument('--seed', type=int, default=7)
  a = ap.parse_args(argv)
  before = a.as_before
  rng = random.Random(a.seed)
  fleet = Fleet(a, rng)
  if before:
    findings_mod.MAX_RUN_WINDOWS = 10 ** 9
    watch.MAX_SEEN_PATHS = 10 ** 9
  hist_fn = TrackHistoryFn(None, retention=FOREVER if before else a.history_retention_days * DAY,
                           departed=FOREVER if before else a.departed_days * DAY,
                           ordered=False)  # windows come here in event-time order already
  hist_fn.setup()
  cells: Dict[str, Cell] = {}
  timers: List = []
  merge = Loop(lambda: _RunMerger(H, H, FOREVER if before else 86400), lambda w: timer_ms(_stamp(w['window_end'])),
               lambda m: [m.runs])
  peers = Loop(lambda: _Corroborator(1800.0, 2), None, lambda c: [c.adopters], idle_timers=False)
  peers.due = peers.new().due
  dedup = Loop(lambda: _Deduplicator(6 * H), lambda x: x[0], lambda d: [d.known, d.sent], expiry=True)
  seen, cutoff, panes, windows_done = {}, float('-inf'), {}, 0
  print(f'{"as before (no bounds)" if before else "bounded"}: {a.services} services, {a.ci_per_hour} CI '
        f'namespaces/h, {a.agents_per_day} agents/day, {a.batch} batch, {a.anomalous} anomalous all week; '
        f'history retention {a.history_retention_days:g} d, departed {a.departed_days:g} d'
        + (' (ignored)' if before else ''))
  print('Peak of each step\'s keyed state during each day (sampled hourly; the watch at the day\'s end):')
  print('| day | identities active | history: keys (departed), KiB | merge: keys, KiB, most windows in a run '
        '| peers: keys, KiB | dedup: keys, KiB | watch: paths, KiB | total KiB | merge CPU s |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  started, active_today, peak, merge_cpu = time.perf_counter(), set(), {}, 0.0
  for tick in range(1, 7 * 96 + 1):
    end = T0 + tick * Q
    panes[end - Q] = fleet.panes(end - Q)
    panes.pop(end - 5 * Q, None)
    while timers and timers[0][0] <= end - 1e-6:  # the watermark reached these history timers
      at, identity = heapq.heappop(timers)
      cell = cells.get(identity)
      if cell is not None and cell.at == at:
        cell.at = None
        list(hist_fn.expire(fired=Timestamp.of(at), key=identity, state=cell, expire=cell,
                            pending=_NOTHING_WAITING))
        if cell.at is not None:
          heapq.heappush(timers, (cell.at, identity))
        if cell.value is None:
          del cells[identity]
    for identity in sorted({i for p in range(4) for i in panes.get(end - (p + 1) * Q, {})}):
      agg = WindowAggregate()
      for p in range(4):
        if identity in panes.get(end - (p + 1) * Q, {}):
          agg.merge(panes[end - (p + 1) * Q][identity])
      kind = agg.identity_type
      w = IdentityWindow(identity, end - H, end, agg)
      cell = cells.setdefault(identity, Cell())
      item = list(hist_fn.process((identity, (w, dict(CTX, identity_type=kind))), state=cell, expire=cell))[0].value
      heapq.heappush(timers, (cell.at, identity))
      active_today.add(identity)
      windows_done += 1
      hot = identity in fleet.anomalous and T0 + DAY < end <= T0 + 6 * DAY
      if hot or rng.random() < a.flag_rate:
        merge.add(identity, timer_ms(_stamp(end)), scored(identity, kind, w, item.history, rng, not hot))
      if kind == 'ai_agent' and rng.random() < 0.05:
        peers.add(group_of(kind), timer_ms(_stamp(end)), (timer_ms(_stamp(end)), {
            'kind': SIGHTING, 'group': group_of(kind), 'identity': identity,
            'actions': [f's3:Action{rng.randrange(3)}'], 'window_end': end}))
    now = timer_ms(end)
    cpu = time.process_time()
    merged = merge.fire(now, before)
    merge_cpu += time.process_time() - cpu
    for _, tv in merged:
      ms = timer_ms(tv.timestamp)
      peers.add(group_of(tv.value['identity_type']), ms, (ms, tv.value))
    for _, tv in peers.fire(now, before):
      ms = timer_ms(tv.timestamp)
      dedup.add(tv.value['identity'], ms, (ms, tv.value))
    dedup.fire(now, before)
    for k in range(a.account_regions * 3):  # three 5-minute deliveries per prefix per tick
      t = end - Q + (k // a.account_regions) * 300 + rng.random() * 60
      region = k % a.account_regions
      seen[(f's3://org-trail/AWSLogs/o-a1b2c3/{111122220000 + region}/CloudTrail/us-east-1/'
            f'{time.strftime("%Y/%m/%d", time.gmtime(t))}/{111122220000 + region}_CloudTrail_us-east-1_'
            f'{time.strftime("%Y%m%dT%H%MZ", time.gmtime(t))}_{rng.getrandbits(64):016X}.json.gz')] = t
    cutoff = watch._forget(seen, cutoff)
    if tick % 4 == 0:  # hourly: each step's state, the day's peak printed
      departed = sum(1 for c in cells.values()  # (last seen, last active): a hundred bytes
                     if c.value and isinstance(decode_state(c.value).kept, tuple))
      longest = max((len(r['windows']) for s, _, _, _ in merge.keys.values() for r in s.runs), default=0)
      now_sizes = {'history': (sum(len(c.value) for c in cells.values() if c.value), f'{len(cells):,} ({departed:,})'),
                   'merge': merge.size(), 'longest': (longest, longest), 'peers': peers.size(),
                   'dedup': dedup.size()}
      if tick % 96 == 0:  # the watch's set only grows between days: its size at the day's end
        now_sizes['watch'] = (len(pickle.dumps(watch.WatchState(seen, cutoff, end, end),
                                               protocol=pickle.HIGHEST_PROTOCOL)), f'{len(seen):,}')
      for k, v in now_sizes.items():
        peak[k] = max(peak.get(k, v), v, key=lambda x: x[0])
    if tick % 96 == 0:
      total = sum(peak[k][0] for k in ('history', 'merge', 'peers', 'dedup', 'watch'))
      print(f'| {tick // 96} | {len(active_today):,} | {peak["history"][1]}, {peak["history"][0] / 1024:,.0f} '
            f'| {peak["merge"][1]}, {peak["merge"][0] / 1024:,.0f}, {peak["longest"][0]} '
            f'| {peak["peers"][1]}, {peak["peers"][0] / 1024:,.1f} | {peak["dedup"][1]}, {peak["dedup"][0] / 1024:,.0f} '
            f'| {peak["watch"][1]}, {peak["watch"][0] / 1024:,.0f} | {total / 1024:,.0f} | {merge_cpu:.1f} |',
            flush=True)
      active_today, peak, merge_cpu = set(), {}, 0.0
  print(f'{windows_done:,} identity-windows in {time.perf_counter() - started:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
