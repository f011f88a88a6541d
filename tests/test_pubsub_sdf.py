"""The splittable-DoFn Pub/Sub reader (transforms/pubsub_sdf.py) against the local pstest server.

At least once: messages are acked at bundle finalization, never at pull time; a job killed
mid-stream and restarted on the same subscription counts every event exactly once. A backlog
read in short pulls is scored, not dead-lettered as late; the reader slots split, and the parts
read the subscription concurrently.
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
  # a short pull is no evidence that the backlog is empty: the watermark follows the oldest event read
  assert estimator.current_watermark() == Timestamp.of(T - 30)
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
  fn = _PullFn(topic, True, PullSettings(max_messages=10, readers=2))
  # made before the parts split (no setup() runs where the runner pairs the restriction):
  # every part reads the same subscription, or each would get every message
  parts = list(fn.split(topic, fn.initial_restriction(topic)))
  assert len(parts) == 2 and len({p.subscription for p in parts}) == 1
  assert parts[0].subscription.startswith(f'{PROJECT}/subscriptions/postauth-')
  fn.setup()
  try:
    out, _, residual, _ = _process_once(fn, topic, parts[0])  # nothing to read yet
    assert out == [] and residual.subscription == parts[0].subscription
    ids = [pubsub_v1.PublisherClient().publish(topic, b'{}').result(10) for _ in range(3)]
    out, finalizer, residual2, _ = _process_once(fn, topic, residual)
    assert residual2.subscription == residual.subscription  # the same one, not a new one per call
    assert sorted(o.value.ref for o in out) == sorted(f'pubsub:{topic}#{i}' for i in ids)
  finally:
    fn.teardown()


def test_a_topic_reads_other_parts_end_once_the_first_to_stop_deleted_its_subscription(pubsub):
  from google.api_core.exceptions import NotFound
  from google.cloud import pubsub_v1
  from postauth.transforms.pubsub_sdf import PullSettings, _PullFn
  topic, _ = _names('topicstop')
  local_pubsub.create_topic(topic)
  fn = _PullFn(topic, True, PullSettings(max_messages=10, readers=2, stop_idle=0.5))
  first, second = fn.split(topic, fn.initial_restriction(topic))
  fn.setup()
  try:
    time.sleep(0.6)
    _, _, residual, _ = _process_once(fn, topic, first)  # no newer event for 0.5 s: it stops
    assert residual is None
    with pubsub_v1.SubscriberClient() as client, pytest.raises(NotFound):
      client.get_subscription(subscription=first.subscription)  # deleted
    # the other part just read something new (it would not stop by itself), and ends anyway
    out, finalizer, residual, _ = _process_once(fn, topic, second._replace(last_newer=time.time()))
    assert out == [] and residual is None and len(finalizer.callbacks) == 1
  finally:
    fn.teardown()


# --- the watermark: a short pull is no evidence that the backlog is empty ---------------------

def test_a_backlog_older_than_the_allowed_lateness_read_in_short_pulls_is_not_late(pubsub):
  """After an outage, 40 events of 3.5 h to 2 h ago wait on the subscription. Another reader (a
  job being killed) holds half of them, spread over the same hours, so the restarted reader's
  pulls come back short, then empty, while that half remains; then it is given back. No record
  may be behind the watermark the late-event gate can have learned before it arrives by more than
  the allowed lateness (transforms/lateness.py), and no pull raises the watermark past its oldest
  event. Before, the first short pull meant "backlog drained": the watermark jumped to the
  newest event (2 h ago) and the held half, up to 3.5 h old, was dead-lettered as late."""
  from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
  from google.cloud import pubsub_v1
  from postauth.transforms.lateness import DEFAULT_ALLOWED_LATENESS, pane_end
  from postauth.transforms.pubsub_sdf import PullSettings, _PullFn
  topic, sub = _topic_with_subscription('backlog', ack_deadline=60)
  now = time.time()
  publisher = pubsub_v1.PublisherClient()
  event_time = {}
  for i in range(40):
    t = now - 12600 + i * 5400 / 39
    event_time[publisher.publish(topic, b'{}', t=str(int(t * 1000))).result(10)] = t
  # no timestamp attribute ahead of the clock, no idle wait: only the evidence rule holds it
  fn = _PullFn(sub, False, PullSettings(timestamp_attribute='t', max_messages=5, max_delay=60,
                                        idle_seconds=0))
  read, late, state, mark = [], [], None, MIN_TIMESTAMP

  def calls(n):
    nonlocal state, mark
    for _ in range(n):
      out, finalizer, state, estimator = _process_once(fn, sub, state)
      for o in out:
        read.append(o.value.ref.rsplit('#', 1)[1])
        if pane_end(float(o.timestamp), 900) + DEFAULT_ALLOWED_LATENESS < float(mark):
          late.append(round(now - float(o.timestamp)))
      if out:  # a pull raises it at most to its oldest event (minus the max delay)
        assert estimator.current_watermark() <= max(mark, min(o.timestamp for o in out) - 60)
      mark = estimator.current_watermark()
      for callback in finalizer.callbacks:
        callback()

  with pubsub_v1.SubscriberClient() as other:
    held = list(other.pull(subscription=sub, max_messages=100, timeout=5).received_messages)
    assert len(held) == 40
    held.sort(key=lambda r: event_time[r.message.message_id])
    other.modify_ack_deadline(subscription=sub, ack_ids=[r.ack_id for r in held[1::2]],
                              ack_deadline_seconds=0)
    fn.setup()
    try:
      calls(3)  # pulls of 5, 5, 5, 5, then empty answers: the other half is still held
      assert len(read) == 20 and mark <= Timestamp.of(min(event_time.values()) + 5400 / 39 - 60)
      other.modify_ack_deadline(subscription=sub, ack_ids=[r.ack_id for r in held[0::2]],
                                ack_deadline_seconds=0)
      calls(2)
    finally:
      fn.teardown()
  assert sorted(read) == sorted(event_time)
  assert late == [], f'{len(late)} of 40 records late (seconds old): {late}'


def test_only_a_run_of_empty_pulls_over_time_lets_the_watermark_pass_the_data():
  from postauth.transforms.pubsub_sdf import PullOutcome, PullSettings, PullState, advance
  s = PullSettings(max_delay=60, idle_seconds=10, idle_limit=14400, caught_up_pulls=3,
                   caught_up_seconds=30)
  now = 1_700_000_000.0
  st = advance(PullState('s', None, float('-inf'), now), [now - 7200, now - 3600],
               [PullOutcome(now, 2)], now, s)
  assert (st.newest, st.watermark) == (now - 3600, now - 7260)  # the oldest read, not the newest
  # one empty answer, or three within less than 30 s, prove nothing
  st = advance(st, [], [PullOutcome(now + 1, 0)], now + 2, s)
  assert (st.watermark, st.empty_pulls, st.empty_since) == (now - 7260, 1, now + 1)
  st = advance(st, [], [PullOutcome(now + 2, 0), PullOutcome(now + 28, 0)], now + 30.5, s)
  assert (st.watermark, st.empty_pulls) == (now - 7260, 3)
  # a message, or a failed pull, starts the run again
  assert advance(st, [now - 7000], [PullOutcome(now + 31, 1)], now + 32, s)[:3] == (
      's', now - 3600, now - 7060)
  assert advance(st, [], [PullOutcome(now + 31, -1)], now + 40, s).watermark == now - 7260
  # 3 empty answers over >= 30 s: caught up. Idle >= 10 s: wall clock - max delay (at most
  # idle_limit past the newest event); idle less long: the newest event - max delay.
  assert advance(st, [], [PullOutcome(now + 31, 0)], now + 31, s).watermark == now + 31 - 60
  assert advance(st, [], [PullOutcome(now + 31, 0)], now + 31,
                 s._replace(idle_limit=60)).watermark == now - 3600 + 60
  assert advance(st, [], [PullOutcome(now + 31, 0)], now + 31,
                 s._replace(idle_seconds=100)).watermark == now - 3660
  # never before the first message; never ahead of wall clock - max delay
  idle = advance(PullState('s', None, float('-inf'), now), [],
                 [PullOutcome(now + i * 20, 0) for i in range(4)], now + 100, s)
  assert idle.watermark == float('-inf') and idle.empty_pulls == 4
  assert advance(idle, [now + 200], [PullOutcome(now + 101, 1)], now + 101, s).watermark == now + 41


# --- reader slots: more than one worker reads the subscription --------------------------------

def test_reader_slots_split_at_the_start_and_when_the_runner_asks():
  from postauth.transforms.pubsub_sdf import PullSettings, PullState, _PullFn
  fn = _PullFn('projects/p/subscriptions/s', False, PullSettings(readers=4))
  whole = fn.initial_restriction('projects/p/subscriptions/s')
  parts = list(fn.split('projects/p/subscriptions/s', whole))
  assert [(p.slot_start, p.slot_end) for p in parts] == [(0, 1), (1, 2), (2, 3), (3, 4)]
  assert [fn.restriction_size(None, r) for r in (whole, parts[0])] == [4, 1]
  # a runner that asks for a split of an unsplit restriction gets slots; the claim keeps its own
  tracker = fn.create_tracker(whole)
  primary, residual = tracker.try_split(0.5)
  assert (primary.slot_start, primary.slot_end, residual.slot_start, residual.slot_end) == (0, 2, 2, 4)
  assert not residual.done
  assert tracker.try_claim(whole._replace(newest=5.0))
  primary, residual = tracker.try_split(0.5)  # the claimed state goes with the slots given away
  assert (primary.slot_end, residual.slot_start, residual.slot_end, residual.newest) == (1, 1, 2, 5.0)
  assert tracker.try_split(0.5) is None  # one slot is one pull loop: not divisible
  primary, residual = tracker.try_split(0)  # a checkpoint keeps the slots
  assert primary.done and (residual.slot_start, residual.slot_end, residual.newest) == (0, 1, 5.0)
  assert isinstance(residual, PullState)


def test_parts_read_the_subscription_concurrently_each_a_share_none_lost_or_twice(pubsub):
  """Three parts of one restriction, each on its own worker (DoFn instance and client), pull
  one subscription at once: each gets a share of the 150 messages, every message is read once."""
  import threading
  from google.cloud import pubsub_v1
  from postauth.transforms.pubsub_sdf import PullSettings, _PullFn
  topic, sub = _topic_with_subscription('slots', ack_deadline=60)
  publisher = pubsub_v1.PublisherClient()
  ids = [f.result(10) for f in [publisher.publish(topic, b'{}') for _ in range(150)]]
  settings = PullSettings(max_messages=5, max_pulls=1, readers=3)
  parts = list(_PullFn(sub, False, settings).split(sub, _PullFn(sub, False, settings).initial_restriction(sub)))
  assert len(parts) == 3
  got, lock, deadline = {i: [] for i in range(3)}, threading.Lock(), time.time() + 30
  errors = []

  def worker(slot):
    fn = _PullFn(sub, False, settings)
    fn.setup()
    try:
      state = parts[slot]
      while time.time() < deadline:
        with lock:
          if sum(map(len, got.values())) >= len(ids):
            return
        out, finalizer, state, _ = _process_once(fn, sub, state)
        assert (state.slot_start, state.slot_end) == (slot, slot + 1)
        with lock:
          got[slot] += [o.value.ref.rsplit('#', 1)[1] for o in out]
        for callback in finalizer.callbacks:  # acked once the bundle is committed
          callback()
    except Exception as e:  # (surfaced below: an assertion in a thread would be lost)
      errors.append(e)
    finally:
      fn.teardown()

  threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(40)
  assert errors == []
  shares = [len(got[slot]) for slot in range(3)]
  everything = [i for slot in range(3) for i in got[slot]]
  print(f'\nmessages read by each of 3 parts: {shares}')
  assert all(n > 0 for n in shares), shares
  assert sorted(everything) == sorted(ids)  # none lost, none read twice (all acked in time)
  with pubsub_v1.SubscriberClient() as client:
    assert client.pull(subscription=sub, max_messages=100, timeout=5).received_messages == []


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


def test_prism_scores_a_backlog_older_than_the_allowed_lateness_read_in_short_pulls(
    pubsub, sample, model_dir, tmp_path):
  """The whole job on Prism after an outage: 60 events of 3.5 h to 2 h ago wait on the
  subscription. Another reader holds every other one (by event time) while the job starts and
  reads the rest -- its pulls come back short, then empty, while a backlog remains -- and then
  gives them back. Every event is counted (``--events-out``), none dead-lettered as late. Before,
  the first short pull moved the watermark to the newest event and the oldest of the held half
  (more than the allowed hour behind it) were dead-lettered as late."""
  import datetime
  from google.cloud import pubsub_v1
  from postauth.pipeline import prism
  from test_pubsub import _parts
  if prism.local_binary() is None:
    pytest.skip(f'no Prism binary at {prism.binary_path()}: run `make prism`')
  now = time.time()
  iso = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
  records = sorted(_live_records(sample), key=lambda r: r['eventTime'])[:60]
  records = [dict(r, eventTime=iso(now - 12600 + i * 5400 / 59)) for i, r in enumerate(records)]
  topic, sub = _topic_with_subscription('outage')
  publisher = pubsub_v1.PublisherClient()
  event_id = {f.result(30): r['eventID'] for f, r in [
      (publisher.publish(topic, json.dumps(r).encode(), eventTime=r['eventTime']), r) for r in records]}
  counted = lambda: collections.Counter(e['event_id'] for e in read_events_out(str(tmp_path / 'events')))
  order = {r['eventID']: i for i, r in enumerate(records)}
  with pubsub_v1.SubscriberClient() as other:
    held = list(other.pull(subscription=sub, max_messages=100, timeout=5).received_messages)
    assert len(held) == 60
    held.sort(key=lambda m: order[event_id[m.message.message_id]])
    given, kept = held[1::2], held[0::2]
    other.modify_ack_deadline(subscription=sub, ack_ids=[m.ack_id for m in given], ack_deadline_seconds=0)
    job = _start_job(pubsub, sub, tmp_path, sample, model_dir, stop_idle=20)
    try:
      first = {event_id[m.message.message_id] for m in given}
      deadline = time.time() + 240  # (a loaded machine: Prism takes its time to start)
      while time.time() < deadline and not first <= set(counted()):
        assert job.poll() is None, _log_tail(tmp_path)
        other.modify_ack_deadline(subscription=sub, ack_ids=[m.ack_id for m in kept],
                                  ack_deadline_seconds=ACK_DEADLINE)  # still held
        time.sleep(1)
      assert first <= set(counted()), _log_tail(tmp_path)
      other.modify_ack_deadline(subscription=sub, ack_ids=[m.ack_id for m in kept], ack_deadline_seconds=0)
      job.wait(300)
    finally:
      if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f'the job did not stop on its own:\n{_log_tail(tmp_path)}')
  got, late = counted(), [d for d in _parts(tmp_path / 'dead-letter.jsonl') if d['reason'] == 'late']
  print(f'\nbacklog of 60 events 2-3.5 h old: {len(got)} counted, {len(late)} dead-lettered as late')
  assert late == [], f'{len(late)} late: {[d.get("detail") for d in late][:3]}'
  assert set(got) == set(event_id.values()) and max(got.values()) == 1, _log_tail(tmp_path)
  assert job.returncode == 0, _log_tail(tmp_path)


def test_reader_slots_are_a_checked_flag_with_one_pull_loop_by_default():
  """One slot unless asked: a part holds the watermark until it reads a message, so a second
  part that a quiet subscription never feeds would hold every window open."""
  import pytest as _pytest
  from postauth.pipeline import options as opts
  from postauth.pipeline.jobs import pipeline_options
  from postauth.transforms.pubsub_source import pull_settings
  from postauth.transforms.options import PubSubSourceOptions
  assert pull_settings(pipeline_options([]).view_as(PubSubSourceOptions)).readers == 1
  assert pull_settings(pipeline_options(['--pubsub-readers=3']).view_as(PubSubSourceOptions)).readers == 3
  with _pytest.raises(opts.OptionsError, match='--pubsub-readers 0 is out of range'):
    opts.validate_limits(pipeline_options(['--pubsub-readers=0']))
  assert pull_settings(pipeline_options([]).view_as(PubSubSourceOptions)).interval == 1.0
  assert pull_settings(pipeline_options(['--pubsub-pull-interval=0.2']).view_as(PubSubSourceOptions)).interval == 0.2
