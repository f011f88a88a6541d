"""Per-identity sliding windows: TestStream semantics, late data, batch == streaming."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from postauth.domain.event import Event
from postauth.transforms.windowing import IdentityWindows
from conftest import streaming_options

T0 = 1_800_000_000  # aligned to 15 min and 1 h


def ev(identity: str, t: float, action: str = 'GetObject') -> Event:
  return Event(f'{identity}-{t}-{action}', float(t), identity, 'AssumedRole', identity, '', 'aws', 's3',
               action, 'data_read', f'b/{action}', 'us-east-1', '10.0.0.1', 'ua/1', True, '', True, 'x#0')


def summary(w):
  return (w.identity, int(w.window_start - T0), int(w.window_end - T0), w.agg.count)


def run_stream(stream, lateness=0):
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  out = (p | stream | IdentityWindows(3600, 900, allowed_lateness=lateness)
         | beam.Map(summary))
  return p, out


def test_out_of_order_events_land_in_their_event_time_windows():
  stream = (TestStream()
            .advance_watermark_to(T0)
            .add_elements([TimestampedValue(ev('a', T0 + 1000), T0 + 1000),
                           TimestampedValue(ev('a', T0 + 100), T0 + 100),  # earlier, arrives later
                           TimestampedValue(ev('b', T0 + 200), T0 + 200)])
            .advance_watermark_to_infinity())
  p, out = run_stream(stream)
  # a: event at +100 in windows ending 900..3600; event at +1000 in windows ending 1800..4500
  expected = [('a', e - 3600, e, n) for e, n in ((900, 1), (1800, 2), (2700, 2), (3600, 2), (4500, 1))]
  expected += [('b', e - 3600, e, 1) for e in (900, 1800, 2700, 3600)]
  assert_that(out, equal_to(expected))
  p.run().wait_until_finish()


def test_late_event_is_dropped_without_allowed_lateness():
  stream = (TestStream()
            .advance_watermark_to(T0)
            .add_elements([TimestampedValue(ev('a', T0 + 100), T0 + 100)])
            .advance_watermark_to(T0 + 5 * 3600)
            .add_elements([TimestampedValue(ev('a', T0 + 200), T0 + 200)])  # 5 h late
            .advance_watermark_to_infinity())
  p, out = run_stream(stream)
  assert_that(out, equal_to([('a', e - 3600, e, 1) for e in (900, 1800, 2700, 3600)]))
  p.run().wait_until_finish()


def test_late_event_within_allowed_lateness_updates_its_windows():
  stream = (TestStream()
            .advance_watermark_to(T0)
            .add_elements([TimestampedValue(ev('a', T0 + 100), T0 + 100)])
            .advance_watermark_to(T0 + 3600 + 60)  # all four windows have fired on time
            .add_elements([TimestampedValue(ev('a', T0 + 200), T0 + 200)])  # late, within 2 h
            .advance_watermark_to_infinity())
  p, out = run_stream(stream, lateness=7200)
  on_time = [('a', e - 3600, e, 1) for e in (900, 1800, 2700, 3600)]
  # Discarding: a late firing carries only the late event (the history step adds it to the
  # window's earlier firings; tests/test_history_refire.py checks the whole window is judged).
  refired = [('a', e - 3600, e, 1) for e in (900, 1800, 2700, 3600)]
  assert_that(out, equal_to(on_time + refired))
  p.run().wait_until_finish()


def oracle_windows(events, size=3600, period=900):
  """Plain-Python sliding windows: (identity, start, end, count, actions) for non-empty windows."""
  out = {}
  for e in events:
    last_start = int(e.event_time // period) * period
    for start in range(last_start - size + period, last_start + 1, period):
      key = (e.identity, float(start), float(start + size))
      count, actions = out.get(key, (0, {}))
      actions = dict(actions)
      actions[f's3:{e.action}'] = actions.get(f's3:{e.action}', 0) + 1
      out[key] = (count + 1, actions)
  return [k + (c, tuple(sorted(a.items()))) for k, (c, a) in out.items()]


def full(w):
  return (w.identity, w.window_start, w.window_end, w.agg.count, tuple(sorted(w.agg.actions.items())))


def test_batch_keyed_path_and_streaming_path_give_the_same_windows():
  import random
  rng = random.Random(3)
  events = [ev(rng.choice('abc'), T0 + rng.uniform(0, 4 * 3600), rng.choice(['GetObject', 'PutObject']))
            for _ in range(300)]
  expected = oracle_windows(events)
  assert len(expected) > 40
  batch = beam.Pipeline(runner='FnApiRunner')
  b = (batch | beam.Create([TimestampedValue(e, e.event_time) for e in events])
       | 'W' >> IdentityWindows(3600, 900) | beam.Map(full))
  assert_that(b, equal_to(expected))
  batch.run().wait_until_finish()
  stream = TestStream().advance_watermark_to(T0)
  for e in sorted(events, key=lambda e: e.event_time):
    stream.add_elements([TimestampedValue(e, e.event_time)])
  stream.advance_watermark_to_infinity()
  sp = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  s = sp | stream | 'W' >> IdentityWindows(3600, 900) | beam.Map(full)
  assert_that(s, equal_to(expected))
  sp.run().wait_until_finish()


def _evidence_by_window(events, size=3600, period=900):
  """(identity, window start) -> the window's evidence sample, each event added eagerly."""
  from postauth.domain.window import WindowAggregate
  out = {}
  for e in events:
    pane = int(e.event_time // period) * period
    for k in range(size // period):
      out.setdefault((e.identity, float(pane - k * period)), WindowAggregate()).add(e, period)
  return {key: agg.evidence for key, agg in out.items()}


def test_grouped_batch_windows_are_the_same_windows_per_identity_in_time_order():
  """IdentityWindows(grouped=True): one element per identity, its windows in time order, the
  same windows as ungrouped, and the same evidence samples (merged lazily from the panes)."""
  import random
  rng = random.Random(5)
  events = [ev(rng.choice('abc'), T0 + rng.uniform(0, 4 * 3600), rng.choice(['GetObject', 'PutObject']))
            for _ in range(300)]
  expected = oracle_windows(events)
  evidence = _evidence_by_window(events)

  def check(kv):
    identity, windows = kv
    ends = [w.window_end for w in windows]
    assert ends == sorted(ends) and all(w.identity == identity for w in windows)
    for w in windows:
      assert w.agg.evidence == evidence[(identity, w.window_start)]
    return [full(w) for w in windows]

  with beam.Pipeline(runner='FnApiRunner') as p:
    grouped = (p | beam.Create([TimestampedValue(e, e.event_time) for e in events])
               | IdentityWindows(3600, 900, grouped=True))
    assert_that(grouped | beam.FlatMap(check), equal_to(expected))
