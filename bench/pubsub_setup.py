"""What the Pub/Sub benchmarks share (bench/pubsub.py, bench/streaming.py): a labelled sample with
a trained model and its batch findings as the reference, topics on the local server (pstest),
publishing, the probe that says a job is pulling, and a reader that stamps each finding's arrival.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple

from postauth.pipeline import local_pubsub

PROJECT = 'projects/postauth-local'


def parse_time(text: str) -> float:
  return datetime.datetime.strptime(text, '%Y-%m-%dT%H:%M:%SZ').replace(
      tzinfo=datetime.timezone.utc).timestamp()


def prepare(work: str, identities: int, days: int) -> Dict:
  """Sample and model under ``work`` (reused when there), the batch run's findings, and the live
  day as publishable (body, eventTime) pairs in event-time order."""
  from postauth.pipeline.jobs import run, train
  from postauth.pipeline.generate import generate
  sample, model = os.path.join(work, 'sample'), os.path.join(work, 'model')
  if not os.path.exists(os.path.join(model, 'LATEST')):
    generate(sample, identities, days, seed=7)
    train([f'--events={sample}/history/*', f'--inventory={sample}/inventory.csv', f'--model-dir={model}',
           '--runner=FnApiRunner'])
  t = time.time()
  run([f'--events={sample}/live/*', f'--inventory={sample}/inventory.csv', f'--model-dir={model}',
       f'--findings={work}/batch.jsonl', '--runner=FnApiRunner'])
  batch_seconds = time.time() - t
  with open(f'{work}/batch.jsonl') as f:
    expected = {json.loads(line)['finding_id'] for line in f}
  records = []
  for path in sorted(glob.glob(f'{sample}/live/*')):
    with open(path) as f:
      records += [json.loads(line) for line in f if line.strip()]
  records.sort(key=lambda r: r['eventTime'])
  first = datetime.datetime.fromtimestamp(parse_time(records[0]['eventTime']) - 3600,
                                          datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
  return {'sample': sample, 'model': model, 'expected': expected, 'records': records,
          'bodies': [(json.dumps(r).encode(), r['eventTime']) for r in records],
          'first': first, 'batch_seconds': batch_seconds}


def topic_and_sub(kind: str) -> Tuple[str, str]:
  tag = uuid.uuid4().hex[:6]
  topic, sub = f'{PROJECT}/topics/{kind}-{tag}', f'{PROJECT}/subscriptions/{kind}-{tag}'
  local_pubsub.create_topic(topic)
  local_pubsub.create_subscription(sub, topic, ack_deadline_seconds=60)
  return topic, sub


def publish_all(publisher, topic: str, bodies: List[Tuple[bytes, str]]) -> None:
  futures = [publisher.publish(topic, body, eventTime=ts) for body, ts in bodies]
  for f in futures:
    f.result(60)


def wait_ready(publisher, in_topic: str, dl_sub: str, at: str, timeout: float = 180,
               alive: Optional[Callable[[], None]] = None) -> float:
  """Publishes a malformed probe and waits for its dead letter: the job is pulling.
  ``alive`` raises if the job has died meanwhile."""
  from google.cloud import pubsub_v1
  t0 = time.time()
  publisher.publish(in_topic, b'probe: not a record', eventTime=at).result(10)
  with pubsub_v1.SubscriberClient() as client:
    while time.time() - t0 < timeout:
      if alive is not None:
        alive()
      r = client.pull(subscription=dl_sub, max_messages=10, timeout=10)
      if r.received_messages:
        client.acknowledge(subscription=dl_sub, ack_ids=[m.ack_id for m in r.received_messages])
        return time.time() - t0
  raise RuntimeError(f'the job did not start pulling within {timeout:.0f}s')


class FindingsReader(threading.Thread):
  """Pulls the findings subscription continuously, stamping each arrival."""

  def __init__(self, subscription: str):
    super().__init__(daemon=True)
    self.subscription = subscription
    self.arrivals: List[Tuple[float, Dict]] = []  # (arrival time, finding)
    self.stop = threading.Event()

  def run(self):
    from google.cloud import pubsub_v1
    with pubsub_v1.SubscriberClient() as client:
      while not self.stop.is_set():
        r = client.pull(subscription=self.subscription, max_messages=100, timeout=10)
        now = time.time()
        if r.received_messages:
          client.acknowledge(subscription=self.subscription, ack_ids=[m.ack_id for m in r.received_messages])
        self.arrivals += [(now, json.loads(m.message.data)) for m in r.received_messages]
