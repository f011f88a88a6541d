"""Late events: the gate in front of the windows, with TestStream, and the local source's watermark."""
from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from postauth.domain.event import Event
from postauth.transforms.lateness import GATE_MARGIN, LATE, LateEventGate, beam_lateness, pane_end
from postauth.transforms.windowing import IdentityWindows
from conftest import streaming_options

T0 = 1_800_000_000  # aligned to 15 min and 1 h
DAY = 86400


def ev(identity: str, t: float) -> Event:
  return Event(f'{identity}-{t}', float(t), identity, 'AssumedRole', identity, '', 'aws', 's3',
               'GetObject', 'data_read', 'b/o', 'us-east-1', '10.0.0.1', 'ua/1', True, '', True,
               f'pubsub:projects/p/subscriptions/s#{identity}-{t}')


def pair(identity: str, t: float):
  raw = json.dumps({'eventTime': t, 'who': identity}).encode()
  return TimestampedValue((ev(identity, t), raw), t)


def run_gated(stream, lateness=3600):
  """stream -> LateEventGate -> IdentityWindows; returns (pipeline, windows, late dead letters)."""
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  gated = p | stream | LateEventGate(900, lateness)
  windows = (gated['events'] | IdentityWindows(3600, 900, beam_lateness(lateness))
             | beam.Map(lambda w: (w.identity, int(w.window_end - T0), w.agg.count)))
  late = gated[LATE] | beam.Map(json.loads)
  return p, windows, late


def test_pane_end_is_the_end_of_the_events_period():
  assert pane_end(T0, 900) == T0 + 900 and pane_end(T0 + 899.5, 900) == T0 + 900
  assert pane_end(T0 - 0.5, 900) == T0


def test_events_beyond_the_lateness_are_dead_lettered_with_payload_the_rest_windowed():
  jump = T0 + 30 * DAY  # a month-long watermark jump (a source's idle advance, a drain step)
  stream = (TestStream()
            .advance_watermark_to(T0)
            .add_elements([pair('a', T0 + 100), pair('b', T0 + 200)])
            .advance_watermark_to(jump)
            .add_elements([pair('a', T0 + 300),  # a month late
                           pair('c', jump - 7200),  # 2 h late: its pane closed 1.75 h ago
                           pair('d', jump - 600)])  # 10 min late: within the lateness
            .advance_watermark_to_infinity())
  p, windows, late = run_gated(stream)
  on_time = [('a', e, 1) for e in (900, 1800, 2700, 3600)] + [('b', e, 1) for e in (900, 1800, 2700, 3600)]
  d_end = int(pane_end(jump - 600, 900) - T0)
  # d was behind the watermark but within the allowed lateness: its windows fire late, with it.
  within = [('d', d_end + k * 900, 1) for k in range(4)]
  assert_that(windows, equal_to(on_time + within), label='windows')

  def check_late(lines):
    assert sorted(json.loads(l['raw'])['who'] for l in lines) == ['a', 'c'], lines
    for l in lines:
      assert l['reason'] == 'late' and l['stage'] == 'window'
      assert l['source'] == 'pubsub:projects/p/subscriptions/s'
      who = json.loads(l['raw'])['who']
      assert l['index'].startswith(who + '-')
      assert 'allowed lateness of 3600 s' in l['detail']
  assert_that(late, check_late, label='late')
  p.run().wait_until_finish()


def test_without_the_gate_beam_drops_the_same_events_silently():
  """The control: the windows alone lose the month-late event and say nothing."""
  jump = T0 + 30 * DAY
  stream = (TestStream()
            .advance_watermark_to(T0)
            .add_elements([TimestampedValue(ev('a', T0 + 100), T0 + 100)])
            .advance_watermark_to(jump)
            .add_elements([TimestampedValue(ev('a', T0 + 300), T0 + 300)])
            .advance_watermark_to_infinity())
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  out = (p | stream | IdentityWindows(3600, 900, beam_lateness(3600))
         | beam.Map(lambda w: (w.identity, int(w.window_end - T0), w.agg.count)))
  assert_that(out, equal_to([('a', e, 1) for e in (900, 1800, 2700, 3600)]))
  p.run().wait_until_finish()


def test_lateness_is_measured_from_the_pane_end_and_the_gate_keeps_up_with_small_steps():
  """Steady 15 min watermark steps: an event is late exactly when its pane closed more than the
  allowed lateness ago, as far as the gate's probes (60 s) resolve it."""
  lateness = 1800
  stream = TestStream().advance_watermark_to(T0)
  t = T0
  for _ in range(12):  # 3 h in 15 min steps, an event of identity 'x' per step
    stream = stream.add_elements([pair('x', t + 10)]).advance_watermark_to(t + 900)
    t += 900
  # watermark at T0 + 3 h: the pane [T0+7200, T0+8100) ended 2700 s ago (late: > 1800 s);
  # the pane [T0+8100, T0+9000) ended 1800 s ago: still within the lateness.
  stream = stream.add_elements([pair('late', T0 + 7200 + 5), pair('ok', T0 + 8100 + 5)])
  stream = stream.advance_watermark_to_infinity()
  p, windows, late = run_gated(stream, lateness)
  assert_that(late | beam.Map(lambda l: json.loads(l['raw'])['who']), equal_to(['late']), label='late')
  assert_that(windows | beam.Filter(lambda w: w[0] == 'ok') | beam.Map(lambda w: w[2]),
              equal_to([1, 1, 1, 1]), label='ok')
  p.run().wait_until_finish()


def test_margin_keeps_the_windows_open_past_the_gate():
  assert beam_lateness(3600) == 3600 + GATE_MARGIN and GATE_MARGIN > 60


# --- the DirectRunner Pub/Sub source's watermark before the first message -------------------

def test_an_idle_source_does_not_advance_before_its_first_message():
  from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
  from postauth.transforms.direct_pubsub import SourceClock
  wall = T0 + 30 * DAY
  clock = SourceClock(max_delay=60, idle_seconds=5, idle_limit=14400)
  # idle since start, for a long time: the watermark stays at its minimum (it used to jump to
  # wall clock, making every record published afterwards late)
  for m in (5, 50, 500):
    assert clock.advance([], drained=True, wall=wall, monotonic=m) == MIN_TIMESTAMP
  # month-old records then arrive: the watermark follows them, not the wall clock
  assert clock.advance([Timestamp.of(T0 + 3600)], drained=True, wall=wall, monotonic=501) == \
      Timestamp.of(T0 + 3600 - 60)
  # idle after data: advances, but only idle_limit past the newest event
  assert clock.advance([], drained=True, wall=wall, monotonic=507) == Timestamp.of(T0 + 3600 + 14400)
  # older logs after the quiet spell: a day later in event time they are still on time
  assert clock.advance([Timestamp.of(T0 + DAY)], drained=True, wall=wall, monotonic=508) == \
      Timestamp.of(T0 + DAY - 60)


def test_idle_limit_zero_advances_to_wall_clock():
  from apache_beam.utils.timestamp import Timestamp
  from postauth.transforms.direct_pubsub import SourceClock
  wall = T0 + 30 * DAY
  clock = SourceClock(max_delay=60, idle_seconds=5, idle_limit=0)
  clock.advance([Timestamp.of(T0)], drained=True, wall=wall, monotonic=0)
  assert clock.advance([], drained=True, wall=wall, monotonic=5) == Timestamp.of(wall - 60)
