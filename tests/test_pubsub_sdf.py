"""The splittable-DoFn Pub/Sub reader (transforms/pubsub_sdf.py) against the local pstest server.

At least once: messages are acked at bundle finalization, never at pull time; a job killed
mid-stream and restarted on the same subscription counts every event exactly once.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from postauth.pipeline import local_pubsub
from test_pubsub import PROJECT, REPO, _live_records, _names, pubsub  # noqa: F401 (fixture)
from postauth.transforms.events_out import read_events_out

ACK_DEADLINE = 10  # pstest's minimum: unacked messages come back this long after a pull


def _topic_with_subscription(kind: str, ack_deadline: int = ACK_DEADLINE):
  topic, sub = _names(kind)
  local_pubsub.create_topic(topic)
  local_pubsub.create_subscription(sub, topic, ack_deadline_seconds=ack_deadline)
  return topic, sub


def test_reader_choice_keeps_the_native_read_where_it_runs():
  from postauth.transforms.pubsub_source import choose_reader
  for runner in ('DataflowRunner', 'apache_beam.runners.dataflow.dataflow_runner.DataflowRunner',
                 'DirectRunner', 'BundleBasedDirectRunner', ''):
    assert choose_reader('auto', runner) == 'native', runner
  for runner in ('PrismRunner', 'FlinkRunner', 'FnApiRunner', 'PortableRunner',
                 'apache_beam.runners.portability.prism_runner.PrismRunner'):
    assert choose_reader('auto', runner) == 'sdf', runner
  assert choose_reader('sdf', 'DataflowRunner') == 'sdf'
  assert choose_reader('native', 'PrismRunner') == 'native'


class _Finalizer:
  def __init__(self):
    self.callbacks = []

  def register(self, callback):
    self.callbacks.append(callback)


def _process_once(fn, element, state=None):
  """One process() call as a runner makes it: (outputs, finalizer, residual, watermark estimator)."""
  from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
  from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
  tracker = fn.create_tracker(state or fn.initial_restriction(element))
  estimator, finalizer = ManualWatermarkEstimator(None), _Finalizer()
  threadsafe = ThreadsafeRestrictionTracker(tracker)
  out = list(fn.process(element, finalizer=finalizer, tracker=RestrictionTrackerView(threadsafe),
                        watermark=estimator))
  deferred = threadsafe.deferred_status()  # (residual restriction, delay) after defer_remainder
  return out, finalizer, deferred[0] if deferred else None, estimator


def test_messages_are_acked_at_bundle_finalization_not_at_pull(pubsub):
  """Two subscriptions get the same messages; the reader pulls both, only one bundle is
  finalized. After the ack deadline pstest redelivers exactly the other one's messages."""
  from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
  from google.cloud import pubsub_v1
  from postauth.transforms.pubsub_sdf import PullSettings, _PullFn
  topic, committed = _topic_with_subscription('fin')
  crashed = committed.replace('/subscriptions/fin-', '/subscriptions/fin-crashed-')
  local_pubsub.create_subscription(crashed, topic, ack_deadline_seconds=ACK_DEADLINE)
  publisher = pubsub_v1.PublisherClient()
  T = 1_700_000_000  # (in the past: the watermark never passes wall clock - max delay)
  ids = [publisher.publish(topic, json.dumps({'i': i}).encode(), t=str((T + 60 * i) * 1000)).result(10)
         for i in range(8)]
  settings = PullSettings(timestamp_attribute='t', max_messages=100, max_delay=30)
  results, fns = {}, {sub: _PullFn(sub, False, settings) for sub in (committed, crashed)}
  for sub, fn in fns.items():
    fn.setup()
    results[sub] = _process_once(fn, sub)
  out, finalizer, residual, estimator = results[committed]
  # every message out, stamped with its attribute time, referenced by its message id
  assert sorted(o.value.ref for o in out) == sorted(f'pubsub:{committed}#{i}' for i in ids)
  assert sorted(o.timestamp for o in out) == [Timestamp.of(T + 60 * i) for i in range(8)]
  # the pull came back short (backlog drained): the watermark trails the newest event
  assert estimator.current_watermark() == Timestamp.of(T + 7 * 60 - 30)
  assert residual.newest == T + 7 * 60 and not residual.done  # the state the next call resumes from
  for callback in finalizer.callbacks:  # what the runner does once the bundle is committed
    callback()
  for fn in fns.values():
    fn.teardown()
  time.sleep(ACK_DEADLINE + 1.5)
  with pubsub_v1.SubscriberClient() as client:
    again = {sub: client.pull(subscription=sub, max_messages=100, timeout=5).received_messages
             for sub in (committed, crashed)}
  assert again[committed] == []
  assert sorted(m.message.message_id for m in again[crashed]) == sorted(ids)
  # a source that never read a message keeps its watermark at the minimum, idle or not
  fn = _PullFn(committed, False, settings._replace(idle_seconds=0))
  fn.setup()
  try:
    out, _, _, estimator = _process_once(fn, committed)
  finally:
    fn.teardown()
  assert out == [] and estimator.current_watermark() == MIN_TIMESTAMP


def test_topic_read_creates_its_subscription_and_keeps_it_in_the_restriction(pubsub):
  from google.cloud import pubsub_v1
  from postauth.transforms.pubsub_sdf import PullSettings, _PullFn
  topic, _ = _names('topicread')
  local_pubsub.create_topic(topic)
  fn = _PullFn(topic, True, PullSettings(max_messages=10))
  fn.setup()
  try:
    out, _, residual, _ = _process_once(fn, topic)  # creates the subscription, nothing to read yet
    assert out == [] and residual.subscription.startswith(f'{PROJECT}/subscriptions/postauth-')
    ids = [pubsub_v1.PublisherClient().publish(topic, b'{}').result(10) for _ in range(3)]
    out, finalizer, residual2, _ = _process_once(fn, topic, residual)
    assert residual2.subscription == residual.subscription  # the same one, not a new one per call
    assert sorted(o.value.ref for o in out) == sorted(f'pubsub:{topic}#{i}' for i in ids)
  finally:
    fn.teardown()


def test_dedup_reports_the_message_of_every_dropped_copy():
  import apache_beam as beam
  from apache_beam.testing.util import assert_that, equal_to
  from postauth.transforms.dedup_events import DUPLICATE, DropDuplicateEvents
  from postauth.domain.event import Event
  e = lambda eid, ref: Event(eid, 100.0, 'i', 'Role', 'i', '', 'aws', 's', 'a', 'c', '', 'r', '', '',
                             True, '', True, ref)
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = (p | beam.Create([e('a', 'pubsub:s#1'), e('b', 'pubsub:s#2'), e('a', 'pubsub:s#3'),
                            e('a', 'pubsub:s#4')])
           | beam.Map(lambda x: beam.window.TimestampedValue(x, x.event_time))
           | DropDuplicateEvents(3600))
    assert_that(out.events | beam.Map(lambda x: x.event_id), equal_to(['a', 'b']), label='unique')
    assert_that(out[DUPLICATE] | beam.Map(lambda r: r.rsplit('#')[0]), equal_to(['pubsub:s'] * 2),
                label='dropped')


# --- kill -9 mid-stream, restart on the same subscription -------------------------------------

def _start_job(server, sub, tmp_path, sample, model_dir, stop_idle: float) -> subprocess.Popen:
  cmd = [sys.executable, '-m', 'postauth.pipeline.cli', 'run', '--streaming', '--runner=PrismRunner',
         f'--subscription={sub}', '--timestamp-attribute=eventTime',
         f'--events-out={tmp_path / "events"}', f'--findings={tmp_path / "findings.jsonl"}',
         f'--dead-letters={tmp_path / "dead-letter.jsonl"}', f'--inventory={sample["inventory"]}',
         f'--model-dir={model_dir}', '--watermark-idle-seconds=300', f'--pubsub-stop-idle={stop_idle}',
         '--pubsub-max-messages=20']
  log = open(tmp_path / f'job-{time.time():.0f}.log', 'w')
  # its own process group: SIGKILL takes Prism (a child process) down with it
  return subprocess.Popen(cmd, cwd=REPO, env=server.env(), stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)


def _log_tail(tmp_path) -> str:
  logs = sorted(tmp_path.glob('job-*.log'))
  return '\n'.join(p.read_text()[-1500:] for p in logs)


def test_prism_pubsub_kill_and_restart_loses_and_duplicates_nothing(pubsub, sample, model_dir,
                                                                    tmp_path):
  """Part 1 is published and counted, the job is killed -9 (Prism with it), part 2 is published
  while it is down, the job restarts on the same subscription, part 3 follows: every event is
  in --events-out exactly once. A killed job that had not acked what it counted would count
  part 1 again after the restart (its dedup state died with it); one that acked at pull time
  would lose what it had pulled and not yet counted (the unit test above covers that case)."""
  from google.cloud import pubsub_v1
  from postauth.pipeline import prism
  if prism.local_binary() is None:
    pytest.skip(f'no Prism binary at {prism.binary_path()}: run `make prism`')
  records = sorted(_live_records(sample), key=lambda r: r['eventTime'])
  records = records[len(records) // 2:][:300]
  parts = records[:150], records[150:220], records[220:]
  topic, sub = _topic_with_subscription('kill')
  publisher = pubsub_v1.PublisherClient()
  publish = lambda batch: [f.result(30) for f in [
      publisher.publish(topic, json.dumps(r).encode(), eventTime=r['eventTime']) for r in batch]]
  events = tmp_path / 'events'
  counted = lambda: collections.Counter(e['event_id'] for e in read_events_out(str(events)))

  job = _start_job(pubsub, sub, tmp_path, sample, model_dir, stop_idle=0)
  try:
    # The first 30 of part 1 warm the job up (counted: it is pulling); then the next 60 go out
    # in a burst and the kill -9 comes as soon as the first of them are counted: some written
    # (acked or not yet), the others pulled, in flight or still waiting.
    publish(parts[0][:30])
    deadline = time.time() + 240  # (a loaded machine: Prism takes its time to start)
    while time.time() < deadline and sum(counted().values()) < 30:
      assert job.poll() is None, _log_tail(tmp_path)
      time.sleep(0.2)
    assert sum(counted().values()) == 30, _log_tail(tmp_path)
    print(f'\nwarm-up: 30 counted {time.time() - deadline + 240:.0f} s after publishing')
    for sent in range(30, 90, 5):
      publish(parts[0][sent:sent + 5])
      time.sleep(0.05)
    sent = 90
    while time.time() < deadline and sum(counted().values()) <= 30:
      time.sleep(0.05)
    before_kill = sum(counted().values())
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(10)
  finally:
    if job.poll() is None:
      os.killpg(job.pid, signal.SIGKILL)
  publish(parts[0][sent:] + parts[1])  # the rest of the trickle and part 2, while the job is down

  # The restart ends after 20 s without a message: longer than the ack deadline, so anything
  # the killed job had pulled and not acked would have been redelivered by then.
  job = _start_job(pubsub, sub, tmp_path, sample, model_dir, stop_idle=ACK_DEADLINE + 10)
  try:
    publish(parts[2])
    job.wait(300)  # (minutes under load: Prism runs every stage on one shared machine)
  finally:
    if job.poll() is None:
      os.killpg(job.pid, signal.SIGKILL)
      pytest.fail(f'the restarted job did not stop on its own:\n{_log_tail(tmp_path)}')
  got = counted()
  published = {r['eventID'] for r in records}
  print(f'\nkill -9 with {before_kill} of {sent} published events counted; after the restart '
        f'{len(set(got) & published)} of {len(published)} counted, '
        f'{sum(1 for n in got.values() if n > 1)} twice')
  assert set(got) == published, (f'lost {len(published - set(got))}, extra {len(set(got) - published)}'
                                 f'\n{_log_tail(tmp_path)}')
  assert [e for e, n in got.items() if n > 1] == []  # nothing counted twice
  assert all(e['ref'].startswith(f'pubsub:{sub}#') for e in read_events_out(str(events)))
  assert job.returncode == 0, _log_tail(tmp_path)
  # Every message was acked (the skip of what was written just before the kill must not be what
  # kept the count right): nothing comes back once the ack deadline has passed.
  time.sleep(ACK_DEADLINE + 1)
  with pubsub_v1.SubscriberClient() as client:
    left = client.pull(subscription=sub, max_messages=100, timeout=5).received_messages
  assert left == [], f'{len(left)} message(s) never acked'



def test_prism_counts_events_ahead_of_the_watermark_without_waiting_for_the_idle_advance(
    pubsub, sample, model_dir, tmp_path):
  """30 events, then 5 more at the newest one's event time, then 10 later ones: each batch is
  counted within seconds, not after --watermark-idle-seconds (300 s here). Prism will not pass
  a key's pending timer above the watermark, so before the late-event gate stamped its input
  at the start of time (transforms/lateness.py) the second batch waited behind the gate's next
  probe: 30 of 35 counted after 60 s, and 42 of 45 after the third."""
  from google.cloud import pubsub_v1
  from postauth.pipeline import prism
  if prism.local_binary() is None:
    pytest.skip(f'no Prism binary at {prism.binary_path()}: run `make prism`')
  records = sorted(_live_records(sample), key=lambda r: r['eventTime'])
  records = records[len(records) // 2:][:45]
  second = [dict(r, eventTime=records[29]['eventTime']) for r in records[30:35]]
  batches = records[:30], second, records[35:]
  topic, sub = _topic_with_subscription('ahead')
  publisher = pubsub_v1.PublisherClient()
  counted = lambda: {e['event_id'] for e in read_events_out(str(tmp_path / 'events'))}
  job = _start_job(pubsub, sub, tmp_path, sample, model_dir, stop_idle=0)
  try:
    wanted, waited = set(), []
    for n, batch in enumerate(batches):
      [f.result(30) for f in [publisher.publish(topic, json.dumps(r).encode(), eventTime=r['eventTime'])
                              for r in batch]]
      wanted |= {r['eventID'] for r in batch}
      start = time.time()  # the first batch also waits for Prism to start (minutes when loaded)
      while time.time() < start + (240 if n == 0 else 60) and not wanted <= counted():
        assert job.poll() is None, _log_tail(tmp_path)
        time.sleep(0.3)
      waited.append(round(time.time() - start, 1))
      assert wanted <= counted(), (f'batch {n + 1}: {len(wanted - counted())} of {len(wanted)} not '
                                   f'counted after {waited[-1]} s\n{_log_tail(tmp_path)}')
    print(f'\nseconds from publishing each batch to all of it counted: {waited}')
  finally:
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(10)
