"""Scale and skew: a 10,000-identity fleet's day in batch, the streaming job at the fleet's event
rate, and the same with one identity holding 30% of the events. One command, every figure.

    python bench/scale.py [--identities 10000] [--rate-scale 0.1] [--stream-hours 1] [--quick] [--hot-key-only]
                          (or: make bench-scale; --quick: 500 identities, a smoke run)

1. Sample: ``pipeline/generate.py`` (``--history-days`` days to train on, one live day), the
   model trained with ``postauth train`` (timed too).
2. Skew: a copy of the live day in which one identity (the busiest) holds ``--hot-share`` of
   the events: copies of its own records, each a valid CloudTrail record with its own
   ``eventID``/``requestID``, spread uniformly over the day (the other identities' records
   are untouched, so the skewed day has ~1.4x the events).
3. Batch: ``postauth run`` on the live day, base and skewed interleaved, on the FnApiRunner and
   on the default runner (the DirectRunner, which starts Prism when ``make prism`` built it).
4. Streaming: ``postauth run --streaming --runner=PrismRunner`` replaying ``--stream-hours`` of
   the live day from ``--stream-start-hour`` (UTC; the fleet's busiest hours), base and skewed,
   over files (``--replay-step`` event seconds per watermark step). The slice has the fleet's
   own event rate: it is compared with the events per CPU-second the job sustains.
5. State: the streaming job keeps no counter of its state size, so it is computed offline with
   the job's own code (bench/state.py's method): every identity's live-day windows folded by the
   history step (``_HistoryFn._walk``, from the trained model's profiles) and encoded as the
   state cell stores them (``TrackHistoryFn.HISTORY``), for a sample of identities, times the
   fleet; plus the window accumulators the windowing step holds for each active identity.

6. One key: the CPU one key of the streaming per-identity pane combine spends per event of the hot
   identity when the runner does not lift it, and the Pub/Sub path's event dedup (keyed per
   identity and pane) against the size of one identity's pane (``--hot-key-only``: these alone).

Every job is its own process group: wall, CPU seconds of the whole tree (launcher, Prism, SDK
workers; the Python and Prism shares apart), peak of the tree's summed RSS (sampled every 0.2 s).
The load average is printed with each job (the machine is shared). Figures go to
``--out``/scale.json.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Dict, List, Optional

import orjson

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
# Run as a script: the repository root on the path (``bench.*`` modules), not this folder.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

from bench.scale_parts import dedup_section, identity_key, pane_add_rate, state_estimate  # noqa: E402

DAY, HOUR = 86400, 3600
VCPUS_PER_WORKER = 4  # n1-standard-4
TARGETS = (1_000, 10_000, 100_000)  # events/s for the worker projection


# -- the sample -------------------------------------------------------------------------------

def make_sample(work: str, identities: int, days: int, rate_scale: float, seed: int) -> Dict:
  from postauth.pipeline.generate import generate
  return generate(work, identities, days, seed, rate_scale=rate_scale)


def read_live(work: str) -> List[dict]:
  records = []
  for path in sorted(glob.glob(f'{work}/live/*')):
    with open(path, 'rb') as f:
      records += [orjson.loads(line) for line in f if line.strip()]
  return records


def _time(t: float) -> str:
  return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))


def _epoch(s: str) -> float:
  return time.mktime(time.strptime(s, '%Y-%m-%dT%H:%M:%SZ')) - time.timezone


def skew(records: List[dict], share: float, seed: int) -> Dict:
  """Records plus copies of the busiest identity's own records, so that it holds ``share`` of
  them: (share*N - h) / (1 - share) copies, spread uniformly over the day, each with a fresh
  eventID and requestID (and the session's creationDate kept). Sorted by eventTime."""
  rng = random.Random(seed)
  counts = collections.Counter(identity_key(r) for r in records)
  hot, h = counts.most_common(1)[0]
  own = [r for r in records if identity_key(r) == hot]
  n = len(records)
  extra = max(0, int((share * n - h) / (1 - share)))
  day0 = min(_epoch(r['eventTime']) for r in records) // DAY * DAY
  copies = []
  for i in range(extra):
    c = orjson.loads(orjson.dumps(own[i % len(own)]))
    c['eventTime'] = _time(day0 + rng.random() * DAY)
    c['eventID'] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    c['requestID'] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    copies.append(c)
  out = sorted(records + copies, key=lambda r: r['eventTime'])
  return {'records': out, 'hot': hot, 'hot_events': h + extra, 'hot_share': (h + extra) / len(out),
          'hot_before': h, 'events': len(out)}


def write_jsonl(path: str, records: List[dict]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    for r in records:
      f.write(orjson.dumps(r) + b'\n')


def hour_slice(records: List[dict], start_hour: float, hours: float) -> List[dict]:
  day0 = min(_epoch(r['eventTime']) for r in records) // DAY * DAY
  lo, hi = _time(day0 + start_hour * HOUR), _time(day0 + (start_hour + hours) * HOUR)
  return [r for r in records if lo <= r['eventTime'] < hi]


# -- measuring a job --------------------------------------------------------------------------

def _group_usage(pgid: int, seen: Dict[int, tuple]) -> int:
  """Summed RSS (bytes) of a process group's live processes; records each one's CPU so far."""
  tick, page, rss = os.sysconf('SC_CLK_TCK'), os.sysconf('SC_PAGE_SIZE'), 0
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      with open(f'/proc/{pid}/stat') as f:
        head, rest = f.read().rsplit(')', 1)
      rest = rest.split()
      if int(rest[2]) != pgid:
        continue
      with open(f'/proc/{pid}/statm') as f:
        rss += int(f.read().split()[1]) * page
      seen[int(pid)] = (head.split('(', 1)[1], (int(rest[11]) + int(rest[12])) / tick)
    except (OSError, IndexError, ValueError):
      continue
  return rss


def timed(cmd: List[str], cwd: str, log: str, timeout: float) -> Dict:
  """Wall, CPU seconds of the process tree (wait4: the job and every child it reaped; or the sum
  of the group's processes as last sampled, if larger), the peak
  of the tree's summed RSS, and the CPU seconds of its Prism process(es) apart."""
  t0 = time.perf_counter()
  load = os.getloadavg()[0]
  with open(log, 'wb') as out:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    peak, seen, done = [0], {}, threading.Event()

    def sample():
      while not done.wait(0.2):
        peak[0] = max(peak[0], _group_usage(proc.pid, seen))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, 9))
    killer.start()
    try:
      _, status, usage = os.wait4(proc.pid, 0)
    finally:
      killer.cancel()
      done.set()
      sampler.join()
  wall = time.perf_counter() - t0
  code = os.waitstatus_to_exitcode(status)
  prism_cpu = sum(cpu for name, cpu in seen.values() if name.startswith('prism'))
  # wait4 counts the children the job reaped; a Prism it left unreaped is only in the samples
  cpu = max(usage.ru_utime + usage.ru_stime, sum(c for _, c in seen.values()))
  out = {'wall': wall, 'cpu': cpu, 'rss_mib': peak[0] / 2 ** 20, 'prism_cpu': prism_cpu,
         'wait4_cpu': usage.ru_utime + usage.ru_stime, 'processes': sorted(seen.values()), 'load': load,
         'log': log}
  if code:
    with open(log, 'rb') as f:
      tail = f.read()[-2000:].decode(errors='replace').strip().splitlines()
    out['error'] = f'exit {code}' + (f': {tail[-1]}' if tail else '')
  return out


def cli(*args: str) -> List[str]:
  return [sys.executable, '-m', 'postauth.pipeline.cli', *args]


def detect(work: str, events: str, scratch: str, extra: List[str]) -> List[str]:
  os.makedirs(scratch, exist_ok=True)
  return cli('run', f'--events={events}', f'--inventory={work}/inventory.csv', f'--model-dir={work}/model',
             f'--findings={scratch}/findings.jsonl', f'--dead-letters={scratch}/dead-letter.jsonl', *extra)


def _count(path: str) -> int:
  try:
    with open(path, 'rb') as f:
      return sum(1 for line in f if line.strip())
  except OSError:
    return -1


# -- state ------------------------------------------------------------------------------------

def eps(n: int, r: Dict, key: str) -> float:
  return n / r[key] if r.get(key) and 'error' not in r else float('nan')


def show(label: str, n: int, r: Dict) -> str:
  if 'error' in r:
    return f'  {label:<34} FAILED {r["error"][:200]} (log {r["log"]})'
  py = r['cpu'] - r['prism_cpu']
  return (f'  {label:<34} {n:>8,} ev  wall {r["wall"]:7.1f}s  {eps(n, r, "wall"):7.0f} ev/s  '
          f'CPU {r["cpu"]:7.1f}s ({py:.1f} Python)  {eps(n, r, "cpu"):6.0f} ev/cpu-s  '
          f'{n / py if py > 0 else float("nan"):6.0f} ev/Python-cpu-s  RSS {r["rss_mib"]:6.0f} MiB  '
          f'load {r["load"]:.1f}')


def main(argv: Optional[List[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--identities', type=int, default=10000)
  ap.add_argument('--rate-scale', type=float, default=0.1,
                  help="The generator's --rate-scale (0.1: ~15 events per identity a day).")
  ap.add_argument('--history-days', type=int, default=2,
                  help='Days to train on (with 1 the model flags ~1.6 windows per identity a day).')
  ap.add_argument('--seed', type=int, default=7)
  ap.add_argument('--hot-share', type=float, default=0.3)
  ap.add_argument('--stream-start-hour', type=float, default=12.0)
  ap.add_argument('--stream-hours', type=float, default=1.0)
  ap.add_argument('--replay-step', type=int, default=900)
  ap.add_argument('--batch-runners', default='FnApiRunner,default')
  ap.add_argument('--head', type=int, default=20,
                  help='Events of the fixed-cost run (the same job on this many events), subtracted.')
  ap.add_argument('--state-sample', type=int, default=1000, help='Identities folded for the state estimate.')
  ap.add_argument('--timeout', type=float, default=1800, help='Seconds before a job is killed.')
  ap.add_argument('--quick', action='store_true', help='500 identities, 2 h streamed: a smoke run.')
  ap.add_argument('--work', help='Keep the sample here (default: a temporary folder, removed).')
  ap.add_argument('--out', default=os.path.join(BENCH_DIR, 'out'))
  ap.add_argument('--hot-key-only', action='store_true',
                  help='Only the two one-key figures (pane combine, Pub/Sub dedup), on a 500-identity sample.')
  a = ap.parse_args(argv)
  if a.hot_key_only:
    work = tempfile.mkdtemp(prefix='postauth-scale-')
    make_sample(work, 500, 2, a.rate_scale, a.seed)
    sk = skew(read_live(work), a.hot_share, a.seed)
    pa = pane_add_rate([r for r in sk['records'] if identity_key(r) == sk['hot']])
    print(f'one AggregatePanes key, not lifted: {pa["events"]:,} events of one identity added to their panes '
          f'in {pa["cpu"]:.2f} CPU s = {pa["per_cpu_s"]:,.0f} events per CPU-second')
    dedup_section(a)
    shutil.rmtree(work, ignore_errors=True)
    return 0
  if a.quick:
    a.identities, a.stream_hours, a.state_sample = 500, 2.0, 200
  work = a.work or tempfile.mkdtemp(prefix='postauth-scale-')
  os.makedirs(work, exist_ok=True)
  logs = os.path.join(work, 'logs')
  os.makedirs(logs, exist_ok=True)
  started = time.perf_counter()
  res: Dict = {'args': vars(a), 'cpus': os.cpu_count()}

  t = time.perf_counter()
  counts = make_sample(work, a.identities, a.history_days + 1, a.rate_scale, a.seed)
  res['generate_s'] = time.perf_counter() - t
  records = read_live(work)
  n = len(records)
  active = len({identity_key(r) for r in records})
  print(f'sample: {counts["identities"]:,} identities ({active:,} active on the live day), '
        f'{counts["history_events"]:,} history events ({a.history_days} d), {n:,} live events '
        f'({n / DAY:.2f} events/s over the day); generated in {res["generate_s"]:.0f} s', flush=True)
  sk = skew(records, a.hot_share, a.seed)
  write_jsonl(f'{work}/skewed/live.jsonl', sk['records'])
  print(f'skewed day: {sk["hot"]} {sk["hot_before"]:,} -> {sk["hot_events"]:,} events '
        f'({sk["hot_share"]:.1%} of {sk["events"]:,})', flush=True)
  base_slice = hour_slice(records, a.stream_start_hour, a.stream_hours)
  skew_slice = hour_slice(sk['records'], a.stream_start_hour, a.stream_hours)
  write_jsonl(f'{work}/stream-base/live.jsonl', base_slice)
  write_jsonl(f'{work}/stream-skewed/live.jsonl', skew_slice)
  rate = len(base_slice) / (a.stream_hours * HOUR)
  hot_in_slice = sum(1 for r in skew_slice if identity_key(r) == sk['hot'])
  print(f'streamed slice: {a.stream_hours:g} h from {a.stream_start_hour:g}:00 UTC: {len(base_slice):,} events '
        f'({rate:.2f} events/s of event time, {rate / (n / DAY):.1f}x the day average); skewed '
        f'{len(skew_slice):,} ({hot_in_slice / len(skew_slice):.1%} hot)', flush=True)
  res.update(sample={**counts, 'live_events': n, 'active': active},
             skew={k: v for k, v in sk.items() if k != 'records'},
             slice={'events': len(base_slice), 'skewed_events': len(skew_slice), 'rate': rate,
                    'hot_share': hot_in_slice / len(skew_slice)})

  res['train'] = timed(cli('train', f'--events={work}/history/*', f'--inventory={work}/inventory.csv',
                           f'--model-dir={work}/model'), work, f'{logs}/train.log', a.timeout)
  print(show('train (default runner)', counts['history_events'], res['train']), flush=True)
  if 'error' in res['train']:
    return 1

  head = records[:a.head]
  write_jsonl(f'{work}/head/live.jsonl', head)
  print(f'batch, base and skewed interleaved (head: the first {len(head)} live events, the fixed cost):',
        flush=True)
  res['batch'] = {}
  for runner in [r for r in a.batch_runners.split(',') if r]:
    for variant, events, count in (('head', f'{work}/head/*', len(head)), ('base', f'{work}/live/*', n),
                                   ('skewed', f'{work}/skewed/*', sk['events'])):
      scratch = f'{work}/out/batch-{runner}-{variant}'
      r = timed(detect(work, events, scratch, [] if runner == 'default' else [f'--runner={runner}']),
                work, f'{logs}/batch-{runner}-{variant}.log', a.timeout)
      r.update(events=count, findings=_count(f'{scratch}/findings.jsonl'))
      res['batch'][f'{runner}/{variant}'] = r
      print(show(f'{runner} {variant}', count, r) + f'  findings {r["findings"]}', flush=True)

  print('streaming on Prism (file replay), base and skewed:', flush=True)
  res['streaming'] = {}
  stream_head = base_slice[:a.head]
  write_jsonl(f'{work}/stream-head/live.jsonl', stream_head)
  for variant, count in (('head', len(stream_head)), ('base', len(base_slice)), ('skewed', len(skew_slice))):
    scratch = f'{work}/out/stream-{variant}'
    r = timed(detect(work, f'{work}/stream-{variant}/*', scratch,
                     ['--streaming', '--runner=PrismRunner', f'--replay-step={a.replay_step}']),
              work, f'{logs}/stream-{variant}.log', a.timeout)
    r.update(events=count, findings=_count(f'{scratch}/findings.jsonl'))
    res['streaming'][variant] = r
    print(show(f'PrismRunner streaming {variant}', count, r) + f'  findings {r["findings"]}', flush=True)

  t = time.perf_counter()
  st = state_estimate(work, records, a.state_sample)
  hot_st = state_estimate(work, [r for r in sk['records'] if identity_key(r) == sk['hot']], 1)
  st['hot_history_bytes'], st['hot_windows_bytes'] = hot_st['history_bytes_mean'], hot_st['windows_peak_bytes']
  st['fleet_history_mib'] = st['history_bytes_mean'] * counts['identities'] / 2 ** 20
  # the sample's peak of window accumulators held at once, scaled to the active fleet
  st['fleet_windows_mib'] = st['windows_peak_bytes'] * active / st['identities_sampled'] / 2 ** 20
  res['state'] = st
  res['pane_add'] = pa = pane_add_rate([r for r in sk['records'] if identity_key(r) == sk['hot']])
  print(f'one AggregatePanes key, not lifted: the hot identity\'s {pa["events"]:,} events added to their '
        f'panes in {pa["cpu"]:.2f} CPU s = {pa["per_cpu_s"]:,.0f} events per CPU-second', flush=True)
  print(f'state (offline, the job\'s fold and coders, {st["identities_sampled"]} identities sampled, '
        f'{time.perf_counter() - t:.0f} s): history cell mean {st["history_bytes_mean"]:,.0f} B '
        f'(max {st["history_bytes_max"]:,}), hot identity {st["hot_history_bytes"]:,.0f} B; window '
        f'accumulators held at once (peak) {st["windows_peak_bytes"] / st["identities_sampled"]:,.0f} B per '
        f'active identity (hot identity {st["hot_windows_bytes"]:,.0f} B); fleet: '
        f'{st["fleet_history_mib"]:,.1f} MiB history + {st["fleet_windows_mib"]:,.1f} MiB windows', flush=True)

  print('\nmarginal cost (the run minus the same job on the head) and the projection to Dataflow '
        'workers (n1-standard-4 = 4 vCPU, Python SDK harness CPU only, 60% target utilisation):')
  rates = {}
  for name, runs, keys in [('batch FnApiRunner', res['batch'], ('FnApiRunner/head', 'FnApiRunner/base', 'FnApiRunner/skewed')),
                           ('batch default runner', res['batch'], ('default/head', 'default/base', 'default/skewed')),
                           ('streaming Prism', res['streaming'], ('head', 'base', 'skewed'))]:
    h = runs.get(keys[0])
    if not h or 'error' in h:
      continue
    for key in keys[1:]:
      r = runs.get(key)
      if not r or 'error' in r:
        continue
      events = r['events'] - h['events']
      cpu, py = r['cpu'] - h['cpu'], (r['cpu'] - r['prism_cpu']) - (h['cpu'] - h['prism_cpu'])
      rates[f'{name} {key.rsplit("/", 1)[-1]}'] = m = {
          'events': events, 'cpu': cpu, 'python_cpu': py, 'wall': r['wall'] - h['wall'],
          'per_cpu_s': events / cpu, 'per_python_cpu_s': events / py}
      need = ', '.join(f'{t:,}/s: {t / (m["per_python_cpu_s"] * VCPUS_PER_WORKER * 0.6):,.1f}' for t in TARGETS)
      print(f'  {name} {key.rsplit("/", 1)[-1]}: marginal {events:,} events in {cpu:.1f} CPU s '
            f'({py:.1f} Python): {m["per_cpu_s"]:,.0f} ev/cpu-s, {m["per_python_cpu_s"]:,.0f} ev/Python-cpu-s '
            f'-> workers for {need}', flush=True)
  res['per_vcpu'] = rates
  res['dedup'] = dedup_section(a)
  res['total_s'] = time.perf_counter() - started
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'scale.json'), 'w') as f:
    json.dump(res, f, indent=1, default=str)
  print(f'\nwhole bench {res["total_s"]:.0f} s; figures in {os.path.join(a.out, "scale.json")}')
  if not a.work:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
