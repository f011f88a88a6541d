"""Streaming from Pub/Sub on Prism (the splittable-DoFn reader) against the BundleBasedDirectRunner
(Beam's native read), the same events, one run.

    python bench/streaming.py [--identities 60] [--days 4] [--speedup 1200]   (or: make bench-streaming)

Generates a labelled CloudTrail sample, trains a model, runs batch detection on the live day
(the reference findings), starts the local Pub/Sub server (pstest), then for each runner:

0. batch: `postauth run` (FnApiRunner) on the same live events, CPU-seconds of its process tree,
   start-up included: the baseline of the drain's events per CPU-second;
1. drain: the whole live day is published at once (timestamp attribute = eventTime) to a fresh
   subscription of a job that is already pulling; reported: the seconds until every event is in
   ``--events-out`` (read, parsed, deduplicated, written), events/s of wall time, and events per
   CPU-second of the job's whole process tree (the launcher, Prism, the SDK worker) -- events/s
   per core -- plus the seconds until every batch finding is on the findings topic, and the CPU
   the job used up to its last finding (windows, history, scoring and findings run once the
   watermark passes the day, after the reader is caught up: ``caught_up_seconds`` of pulls);
2. replay: the day is published in event-time order, ``--speedup`` event seconds per real second,
   with no idle advance: a finding version is emitted when a message moves the event-time
   watermark past the end of the window it reports (its ``window_end`` + --watermark-max-delay);
   reported: the delay from publishing that message to the version arriving on the findings topic
   (and, to compare with earlier runs, the same from one window size later).

Ratios are Prism / BundleBasedDirectRunner, and each drain / the batch job. Both streaming jobs read the
inventory and model once.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Dict, List

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
# Run as a script: the repository root on the path (``bench.*`` modules), not this folder.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

from bench.pubsub_setup import (FindingsReader, parse_time, prepare, publish_all,  # noqa: E402
                                topic_and_sub, wait_ready)
from bench.startup import timed  # noqa: E402
from postauth.pipeline import local_pubsub  # noqa: E402
from postauth.transforms.events_out import read_events_out  # noqa: E402

RUNNERS = ('BundleBasedDirectRunner', 'PrismRunner')
WINDOW = 3600


def cpu_by_process(pgid: int) -> Dict[str, float]:
  """User + system CPU seconds of the live processes of a process group, by command name
  (``python`` the launcher and its in-process SDK worker, ``prism`` the runner)."""
  tick, out = os.sysconf('SC_CLK_TCK'), {}
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      with open(f'/proc/{pid}/stat') as f:
        head, rest = f.read().rsplit(')', 1)
    except OSError:
      continue
    rest = rest.split()
    if int(rest[2]) == pgid:
      name = head.partition('(')[2]
      out[name] = out.get(name, 0.0) + (int(rest[11]) + int(rest[12])) / tick
  return out


class Job:
  """`postauth run --streaming` on one runner, in its own process group."""

  def __init__(self, server, runner, work, sample, model, extra, events_out=True):
    self.in_topic, self.in_sub = topic_and_sub('cloudtrail')
    self.out_topic, self.out_sub = topic_and_sub('findings')
    self.dl_topic, self.dl_sub = topic_and_sub('deadletters')
    self.events = os.path.join(work, f'events-{uuid.uuid4().hex[:6]}')
    cmd = [sys.executable, '-m', 'postauth.pipeline.cli', 'run', '--streaming', f'--runner={runner}',
           f'--subscription={self.in_sub}', '--timestamp-attribute=eventTime',
           f'--sink=pubsub://{self.out_topic}', f'--dead-letters=pubsub://{self.dl_topic}',
           f'--inventory={sample}/inventory.csv', f'--model-dir={model}',
           '--inventory-refresh=0', '--model-refresh=0'] + extra
    if events_out:
      cmd.append(f'--events-out={self.events}')
    self.log = open(os.path.join(work, f'{runner}-{uuid.uuid4().hex[:6]}.log'), 'w')
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=server.env(), stdout=self.log,
                                 stderr=subprocess.STDOUT, start_new_session=True)

  def wait_ready(self, publisher, at: str, timeout=240) -> float:
    """Publishes a malformed probe and waits for its dead letter: the job is pulling."""
    return wait_ready(publisher, self.in_topic, self.dl_sub, at, timeout, alive=self._alive)

  def _alive(self) -> None:
    if self.proc.poll() is not None:
      raise RuntimeError(f'job exited with {self.proc.returncode}: see {self.log.name}')

  def stop(self):
    import signal
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGTERM)
      try:
        self.proc.wait(20)
      except subprocess.TimeoutExpired:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
    self.log.close()


def drain(a, server, publisher, runner, bodies, expected, work, sample, model, first):
  job = Job(server, runner, work, sample, model,
            [f'--watermark-idle-seconds={a.idle}', f'--watermark-max-delay={a.max_delay}'],
            events_out=not a.no_events_out)
  try:
    ready = job.wait_ready(publisher, first)
    reader = FindingsReader(job.out_sub)
    reader.start()
    by0, t0 = cpu_by_process(job.proc.pid), time.time()
    cpu0, split = sum(by0.values()), {}
    publish_all(publisher, job.in_topic, bodies)
    t_events = cpu_events = None
    deadline = t0 + a.timeout
    seen, by_found = 0, None  # CPU when the arrivals last grew: the job's cost up to its findings
    while time.time() < deadline:
      if t_events is None and (a.no_events_out or len(read_events_out(job.events)) >= len(bodies)):
        t_events, by1 = time.time() - t0, cpu_by_process(job.proc.pid)
        cpu_events = sum(by1.values()) - cpu0
        split = {name: cpu - by0.get(name, 0.0) for name, cpu in by1.items()}
      if len(reader.arrivals) > seen:
        seen, by_found = len(reader.arrivals), cpu_by_process(job.proc.pid)
      if t_events is not None and expected <= {f['finding_id'] for _, f in reader.arrivals}:
        break
      last = max((t for t, _ in reader.arrivals), default=t0 + (t_events or 0.0))
      if t_events is not None and time.time() - max(last, t0 + t_events) > a.quiet:
        break  # every event read and no finding for a while: what is missing is not coming
      time.sleep(0.2)
    got = {f['finding_id'] for _, f in reader.arrivals}
    t_findings = max((t for t, f in reader.arrivals if f['finding_id'] in expected),
                     default=float('nan')) - t0
    counted = len({e['event_id'] for e in read_events_out(job.events)})
  finally:
    job.stop()
    reader.stop.set()
  n = len(bodies)
  if a.no_events_out:
    t_events = cpu_events = None
  to_findings = {name: cpu - by0.get(name, 0.0) for name, cpu in (by_found or {}).items()}
  cpu_findings = sum(to_findings.values()) if to_findings else float('nan')
  out = {'ready_s': ready, 'events_s': t_events, 'cpu_s': cpu_events, 'counted': counted,
         'events_per_s': n / t_events if t_events else float('nan'),
         'events_per_cpu_s': n / cpu_events if cpu_events else float('nan'),
         'findings_s': t_findings, 'findings': len(expected & got), 'extra': len(got - expected),
         'cpu_by_process': split, 'findings_cpu_s': cpu_findings, 'findings_cpu_by_process': to_findings,
         'events_per_cpu_s_to_findings': n / cpu_findings if to_findings else float('nan')}
  print(f'[drain {runner}{" no --events-out" if a.no_events_out else ""}] ready {ready:.1f}s after start; {counted}/{n} events counted in '
        f'{t_events or float("nan"):.1f}s = {out["events_per_s"]:.0f} events/s, '
        f'{out["events_per_cpu_s"]:.0f} events per CPU-second ({cpu_events or float("nan"):.1f} CPU-s'
        + ''.join(f', {name} {cpu:.1f}' for name, cpu in sorted(split.items())) + '); '
        f'{out["findings"]}/{len(expected)} batch findings on the topic after {t_findings:.1f}s '
        f'(idle advance {a.idle:.0f}s included); up to the last finding {cpu_findings:.1f} CPU-s'
        + ''.join(f', {name} {cpu:.1f}' for name, cpu in sorted(to_findings.items()))
        + f' = {out["events_per_cpu_s_to_findings"]:.0f} events per CPU-second', flush=True)
  return out


def batch(sample: str, model: str, work: str, n: int) -> dict:
  """`postauth run` in batch on the same live events (FnApiRunner: the batch runner with the
  least CPU per event, so the ratio is the strict one), CPU of its process tree, start-up included."""
  scratch = tempfile.mkdtemp(prefix='batch-', dir=work)
  out = timed([sys.executable, '-m', 'postauth.pipeline.cli', 'run', f'--events={sample}/live/*',
               f'--inventory={sample}/inventory.csv', f'--model-dir={model}', '--runner=FnApiRunner',
               f'--findings={scratch}/findings.jsonl', f'--dead-letters={scratch}/dead-letter.jsonl'], ROOT)
  if 'error' in out:
    raise RuntimeError(f'batch run failed: {out["error"]}')
  out['events_per_cpu_s'] = n / out['cpu']
  print(f'[batch FnApiRunner] {n} events in {out["wall"]:.1f}s, {out["cpu"]:.2f} CPU-s: '
        f'{out["events_per_cpu_s"]:.0f} events per CPU-second', flush=True)
  return out


def replay(a, server, publisher, runner, bodies, expected, work, sample, model, first):
  job = Job(server, runner, work, sample, model,
            ['--watermark-idle-seconds=100000', f'--watermark-max-delay={a.max_delay}'])
  sent = []  # (event time, publish wall time)
  try:
    job.wait_ready(publisher, first)
    reader = FindingsReader(job.out_sub)
    reader.start()
    base, t0, i = parse_time(bodies[0][1]), time.time(), 0
    while i < len(bodies):
      now_event = base + (time.time() - t0) * a.speedup
      batch = []
      while i < len(bodies) and parse_time(bodies[i][1]) <= now_event:
        batch.append(bodies[i])
        i += 1
      publish_all(publisher, job.in_topic, batch)
      stamp = time.time()
      sent += [(parse_time(ts), stamp) for _, ts in batch]
      time.sleep(0.05)
    seconds = time.time() - t0
    time.sleep(a.tail)
  finally:
    job.stop()
    reader.stop.set()
  def delays(after_end: float) -> List[float]:
    out = []
    for arrival, f in reader.arrivals:
      close = parse_time(f['window_end']) + after_end
      trigger = next((wall for ev, wall in sent if ev >= close), None)
      if trigger is not None:
        out.append(arrival - trigger)
    return sorted(out)

  # A finding version leaves when its window (``window_end``) is scored: once a message at
  # least --watermark-max-delay later moves the watermark past the window's end.
  latencies = delays(a.max_delay)
  # Earlier runs of this bench timed from one window size later (a run's close), 3 s of wall
  # time later at 1200x: kept beside it, to compare with their figures.
  run_close = delays(WINDOW + a.max_delay)
  ids = {f['finding_id'] for _, f in reader.arrivals}
  out = {'rate': len(sent) / seconds, 'findings': len(ids & expected), 'closed': len(latencies),
         'median': statistics.median(latencies) if latencies else float('nan'),
         'min': latencies[0] if latencies else float('nan'),
         'max': latencies[-1] if latencies else float('nan'),
         'median_from_run_close': statistics.median(run_close) if run_close else float('nan')}
  print(f'[replay {runner}] {len(sent)} messages at {out["rate"]:.0f}/s ({a.speedup:.0f}x); '
        f'{out["findings"]}/{len(expected)} batch findings, {out["closed"]} versions closed by a later '
        f'message: window-closing message -> finding on the topic min {out["min"]:.2f}s, '
        f'median {out["median"]:.2f}s, max {out["max"]:.2f}s (from one window later, as earlier '
        f'runs of this bench timed it: median {out["median_from_run_close"]:.2f}s)', flush=True)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--identities', type=int, default=60)
  ap.add_argument('--days', type=int, default=4)
  ap.add_argument('--speedup', type=float, default=1200.0)
  ap.add_argument('--idle', type=float, default=2.0, help='--watermark-idle-seconds for the drain.')
  ap.add_argument('--max-delay', type=int, default=60)
  ap.add_argument('--tail', type=float, default=20.0, help='Seconds to keep reading after the replay.')
  ap.add_argument('--timeout', type=float, default=600.0)
  ap.add_argument('--quiet', type=float, default=60.0,
                  help='Drain: stop waiting for findings after this many seconds without one, once every '
                       'event is read (the BundleBasedDirectRunner folds a few under other ids: runners.md).')
  ap.add_argument('--runners', default=','.join(RUNNERS))
  ap.add_argument('--phases', default='batch,drain,replay')
  ap.add_argument('--no-events-out', action='store_true',
                  help='Run without --events-out (the sdf reader then acks at bundle finalization); '
                       'the drain then reports the findings time only.')
  ap.add_argument('--work', default=None, help='Work directory; a sample and model there are reused.')
  a = ap.parse_args()
  work = a.work or tempfile.mkdtemp(prefix='postauth-bench-streaming-')
  prep = prepare(work, a.identities, a.days)
  sample, model, expected = prep['sample'], prep['model'], prep['expected']
  records, bodies, first = prep['records'], prep['bodies'], prep['first']
  print(f'sample: {len(records)} live CloudTrail events, {len(expected)} batch findings; '
        f'{os.cpu_count()} cores on this machine', flush=True)
  runners = a.runners.split(',')
  results = {}
  if 'batch' in a.phases:
    results['batch'] = batch(sample, model, work, len(records))
  server = local_pubsub.LocalPubSub()
  with server, local_pubsub.emulator_host(server.host):
    from google.cloud import pubsub_v1
    publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(
        max_messages=1000, max_bytes=9 * 10 ** 6, max_latency=0.05))
    for runner in runners:
      if 'drain' in a.phases:
        results[(runner, 'drain')] = drain(a, server, publisher, runner, bodies, expected, work,
                                           sample, model, first)
      if 'replay' in a.phases:
        results[(runner, 'replay')] = replay(a, server, publisher, runner, bodies, expected, work,
                                             sample, model, first)
  if len(runners) == 2:
    base, other = runners
    print(f'\nratios {other} / {base}:')
    if 'drain' in a.phases:
      d0, d1 = results[(base, 'drain')], results[(other, 'drain')]
      print(f'  drain events/s {d1["events_per_s"] / d0["events_per_s"]:.2f}x, events per CPU-second '
            f'{d1["events_per_cpu_s"] / d0["events_per_cpu_s"]:.2f}x, all findings on the topic after '
            f'{d1["findings_s"] / d0["findings_s"]:.2f}x the time')
    if 'replay' in a.phases:
      r0, r1 = results[(base, 'replay')], results[(other, 'replay')]
      print(f'  replay median window-closing delay {r1["median"] / r0["median"]:.2f}x '
            f'({r1["median"]:.2f}s vs {r0["median"]:.2f}s)')
  if 'batch' in a.phases and 'drain' in a.phases:
    for runner in runners:
      d = results[(runner, 'drain')]
      b = results['batch']['events_per_cpu_s']
      print(f'  {runner} drain / batch events per CPU-second: {d["events_per_cpu_s"]:.0f} / '
            f'{b:.0f} = {d["events_per_cpu_s"] / b:.2f}; up to the last finding '
            f'{d["events_per_cpu_s_to_findings"]:.0f} / {b:.0f} = {d["events_per_cpu_s_to_findings"] / b:.2f}')
  print(f'\nwork dir: {work}')


if __name__ == '__main__':
  main()
