"""The streaming path through a real Pub/Sub server: throughput and window-closing latency.

    python bench/pubsub.py [--identities 100] [--days 4] [--speedup 3600]   (or: make bench-pubsub)

Generates a labelled CloudTrail sample, trains a model, runs batch detection on the
live day as the reference, starts the local Pub/Sub server (Google's pstest), then
runs `postauth run --streaming --subscription ... --sink pubsub://...` on the
DirectRunner twice:

1. drain: the whole live day is published at once (timestamp attribute = eventTime);
   the time until every batch finding is on the findings topic gives the messages/s
   the pipeline sustains end to end (the idle advance that closes the last windows,
   --watermark-idle-seconds, is subtracted);
2. replay: the day is published in event-time order, `--speedup` event seconds per
   real second, with no idle advance: each finding is emitted when a message moves
   the event-time watermark past the end of its newest window (a first emission: its
   first anomalous window, `first_detected_at`; then one update per later window); its
   latency is the time from publishing that message to the version arriving on the topic.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
# Run as a script: the repository root on the path (``bench.*`` modules), not this folder.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or '.') != BENCH_DIR]

from bench.pubsub_setup import (FindingsReader, parse_time, prepare, publish_all,  # noqa: E402
                                topic_and_sub, wait_ready)
from postauth.pipeline import local_pubsub  # noqa: E402
from postauth.pipeline.sink_delay import sink_delays_from_files  # noqa: E402


def start_pipeline(server, sub, findings_topic, dl_topic, sample, model, extra):
  cmd = [sys.executable, '-m', 'postauth.pipeline.cli', 'run', '--streaming', '--runner=BundleBasedDirectRunner',
         f'--subscription={sub}', '--timestamp-attribute=eventTime', f'--sink=pubsub://{findings_topic}',
         f'--dead-letters=pubsub://{dl_topic}', f'--inventory={sample}/inventory.csv',
         f'--model-dir={model}'] + extra
  return subprocess.Popen(cmd, cwd=ROOT, env=server.env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


def stop(proc):
  proc.terminate()
  try:
    proc.wait(20)
  except subprocess.TimeoutExpired:
    proc.kill()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--identities', type=int, default=100)
  ap.add_argument('--days', type=int, default=4)
  ap.add_argument('--speedup', type=float, default=1200.0,
                  help='Event seconds per real second in the replay (keep the rate below the drain rate).')
  ap.add_argument('--phases', default='drain,replay')
  ap.add_argument('--idle', type=float, default=2.0, help='--watermark-idle-seconds for the drain run.')
  ap.add_argument('--max-delay', type=int, default=60)
  ap.add_argument('--tail', type=float, default=30.0, help='Seconds to keep reading after the replay.')
  ap.add_argument('--work', default=None, help='Work directory; a sample and model already there are reused.')
  a = ap.parse_args()
  work = a.work or tempfile.mkdtemp(prefix='postauth-bench-pubsub-')
  prep = prepare(work, a.identities, a.days)
  sample, model, expected = prep['sample'], prep['model'], prep['expected']
  records, bodies, first = prep['records'], prep['bodies'], prep['first']
  identities = sum(1 for _ in open(f'{sample}/inventory.csv')) - 1
  print(f'sample: {identities} inventory identities, {len(records)} live CloudTrail events, '
        f'{len(expected)} batch findings (batch run {prep["batch_seconds"]:.1f}s)', flush=True)

  server = local_pubsub.LocalPubSub()
  with server, local_pubsub.emulator_host(server.host):
    from google.cloud import pubsub_v1
    publisher = pubsub_v1.PublisherClient()

    # 1. drain: everything at once
    if 'drain' in a.phases:
      drain_phase(a, server, publisher, bodies, expected, sample, model, first)
    if 'replay' in a.phases:
      replay_phase(a, server, publisher, bodies, records, sample, model, first, expected, work)
  print(f'\nwork dir: {work}')


def drain_phase(a, server, publisher, bodies, expected, sample, model, first):
  in_topic, in_sub = topic_and_sub('cloudtrail')
  out_topic, out_sub = topic_and_sub('findings')
  dl_topic, dl_sub = topic_and_sub('deadletters')
  proc = start_pipeline(server, in_sub, out_topic, dl_topic, sample, model,
                        [f'--watermark-idle-seconds={a.idle}', f'--watermark-max-delay={a.max_delay}'])
  try:
    ready = wait_ready(publisher, in_topic, dl_sub, first)
    reader = FindingsReader(out_sub)
    reader.start()
    t0 = time.time()
    publish_all(publisher, in_topic, bodies)
    published = time.time() - t0
    deadline = t0 + 900
    while time.time() < deadline and not expected <= {f['finding_id'] for _, f in reader.arrivals}:
      time.sleep(0.2)
    got = {f['finding_id'] for _, f in reader.arrivals}
    last = max((t for t, f in reader.arrivals if f['finding_id'] in expected), default=float('nan'))
  finally:
    stop(proc)
    reader.stop.set()
  drain = last - t0 - a.idle
  print(f'\n[drain] pipeline ready {ready:.1f}s after start; {len(bodies)} messages published in '
        f'{published:.2f}s ({len(bodies) / published:.0f}/s); all {len(expected & got)}/{len(expected)} '
        f'batch findings on the topic {last - t0:.1f}s after the first publish '
        f'(extra findings: {len(got - expected)})')
  print(f'[drain] sustained end to end: {len(bodies) / drain:.0f} messages/s '
        f'({len(bodies)} messages in {drain:.1f}s, idle advance of {a.idle:.0f}s excluded)', flush=True)



def replay_phase(a, server, publisher, bodies, records, sample, model, first, expected, work):
  in_topic, in_sub = topic_and_sub('cloudtrail')
  out_topic, out_sub = topic_and_sub('findings')
  dl_topic, dl_sub = topic_and_sub('deadletters')
  proc = start_pipeline(server, in_sub, out_topic, dl_topic, sample, model,
                        ['--watermark-idle-seconds=100000', f'--watermark-max-delay={a.max_delay}'])
  sent = []  # (event time, publish wall time)
  try:
    wait_ready(publisher, in_topic, dl_sub, first)
    reader = FindingsReader(out_sub)
    reader.start()
    base_event = parse_time(records[0]['eventTime'])
    t0 = time.time()
    i = 0
    while i < len(bodies):
      now_event = base_event + (time.time() - t0) * a.speedup
      batch = []
      while i < len(bodies) and parse_time(bodies[i][1]) <= now_event:
        batch.append(bodies[i])
        i += 1
      publish_all(publisher, in_topic, batch)
      stamp = time.time()
      sent += [(parse_time(ts), stamp) for _, ts in batch]
      time.sleep(0.05)
    replay_seconds = time.time() - t0
    time.sleep(a.tail)
  finally:
    stop(proc)
    reader.stop.set()
  with open(os.path.join(sample, 'labels.json')) as f:
    labels = json.load(f)
  # The logs `postauth evaluate --arrivals ... --published ...` reads (pipeline/sink_delay.py).
  arrivals_path = os.path.join(work, 'replay-findings.jsonl')
  published_path = os.path.join(work, 'published.jsonl')
  with open(arrivals_path, 'w') as f:
    for arrival, finding in reader.arrivals:
      f.write(json.dumps(dict(finding, _arrival=arrival)) + '\n')
  with open(published_path, 'w') as f:
    for ev, wall in sent:
      f.write(json.dumps({'event_time': datetime.datetime.fromtimestamp(ev, datetime.timezone.utc)
                          .strftime('%Y-%m-%dT%H:%M:%SZ'), 'published_at': wall}) + '\n')
  delays = sink_delays_from_files(arrivals_path, published_path, labels, a.max_delay)
  every, first = delays['versions'], delays['first_versions']
  ids = {f['finding_id'] for _, f in reader.arrivals}
  print(f'\n[replay] {len(sent)} messages in event-time order at {a.speedup:.0f}x '
        f'({len(sent) / replay_seconds:.0f} messages/s for {replay_seconds:.0f}s); '
        f'{len(reader.arrivals)} findings ({len(ids & expected)} of the {len(expected)} batch findings, '
        f'{len(ids - expected)} others), {every["n"]} closed by a later message')
  if every['n']:
    print(f'[replay] publish of the message that closes the window -> finding version on the topic: '
          f'min {every["min_s"]:.2f}s, median {every["median_s"]:.2f}s, max {every["max_s"]:.2f}s '
          f'({every["n"]} versions)')
  if first['n']:
    print(f'[replay] first emissions only: min {first["min_s"]:.2f}s, median {first["median_s"]:.2f}s, '
          f'max {first["max_s"]:.2f}s ({first["n"]} findings)')
  print('[replay] per attack, message that closes its first anomalous window -> first version on '
        'the topic (s): ' + json.dumps(delays['per_attack'], sort_keys=True), flush=True)
  print(f'[replay] the evaluation table with this column: postauth evaluate --findings {work}/batch.jsonl '
        f'--labels {sample}/labels.json --arrivals {arrivals_path} --published {published_path} '
        f'--watermark-max-delay {a.max_delay}', flush=True)


if __name__ == '__main__':
  main()
