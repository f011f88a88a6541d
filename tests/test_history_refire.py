"""A window that fires again for late events replaces its earlier firing in the history.

Streaming windows accumulate: a late event re-fires each window holding it with the whole,
updated aggregate. The history must fold each window once, as its last firing, so that the
profile a window is judged against equals the batch one over the same events; and a window is
never judged against its own earlier firing. Shown on the history class, and on Prism with
events delivered after the watermark passed them (``ScriptedStream``).
"""
from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.util import assert_that, equal_to

from postauth.domain.event import Event
from postauth.domain.window import WindowAggregate
from postauth.models.history import DAY, IdentityHistory
from postauth.pipeline import prism
from postauth.transforms.history import TrackHistory, refire_horizon
from postauth.transforms.lateness import beam_lateness
from postauth.transforms.windowing import IdentityWindows
from postauth.pipeline.prism import without_timer_splits
from scripted_stream import ScriptedStream
from conftest import missing_tool

D0 = 1_800_028_800 - 1_800_028_800 % DAY  # midnight UTC
H, Q = 3600, 900
HORIZON = refire_horizon(3600, 900)


def ev(t: float, action: str = 'GetObject', identity: str = 'role/etl') -> Event:
  return Event(f'{identity}-{t}-{action}', float(t), identity, 'AssumedRole', identity, '', 'aws', 's3',
               action, 'data_read', 'b/k', 'us-east-1', '10.0.0.1', 'aws-cli/2', True, '', True, 'x#0')


def agg(*events: Event) -> WindowAggregate:
  a = WindowAggregate()
  for e in events:
    a.add(e, Q)
  return a


def view(profile):
  return profile.windows, profile.events, dict(profile.category_events)


# -- the history class --------------------------------------------------------------------------
def _exact(profile) -> str:
  """Everything a profile holds, its seen-sets' key order included (it breaks pruning ties)."""
  import json
  return json.dumps(profile.to_dict(), default=str)


def test_the_ledger_keeps_aggregates_and_folds_them_as_their_profiles_merged():
  """A ledger window is kept as its aggregate and folded with ``update`` only when it settles:
  the same profile, bit for bit, as building the window's own profile and merging it, over days
  of windows with spilling seen-sets; a window that would prune a seen-set alone is kept as its
  profile; the pickled state holds profiles, as ever."""
  import pickle
  from postauth.models import history as history_module
  from postauth.models.profile import IdentityProfile, prunes_alone
  wide = agg(*[ev(D0 + 10 * H + i, f'Get{i}') for i in range(3)])
  for i in range(90):  # networks: a seen-set of 64, pruned past 80
    wide.networks[f'10.{i}.0.0/24'] = 1
  assert prunes_alone(wide) and not prunes_alone(agg(ev(D0)))
  assert isinstance(history_module.ledger_entry(wide, D0 + 11 * H), IdentityProfile)
  lazy, eager = IdentityHistory(), IdentityHistory()
  eager_entry = lambda a, end: IdentityProfile().update(a, end)  # what the ledger kept before
  actions = set()
  for day in range(3):
    for q in range(0, 96, 3):
      start = D0 + day * DAY + q * Q
      events = [ev(start + j * 7, f'Act{day}.{q}.{j % (q % 7 + 4)}') for j in range(12)]
      actions.update(e.action for e in events)
      a = agg(*events)
      if q == 30:
        a = wide
      got = lazy.observe(a, start + H, start, HORIZON)
      original = history_module.ledger_entry
      history_module.ledger_entry = eager_entry
      try:
        want = eager.observe(a, start + H, start, HORIZON)
      finally:
        history_module.ledger_entry = original
      assert _exact(got) == _exact(want)
  assert _exact(lazy.final_profile()) == _exact(eager.final_profile())
  assert len(lazy.final_profile().seen['actions']) < len(actions)  # the actions' seen-set was pruned
  assert any(isinstance(p, history_module._Firing) for _, p in lazy.open.values())
  restored = pickle.loads(pickle.dumps(lazy))
  assert all(isinstance(p, IdentityProfile) for _, p in restored.open.values())
  assert _exact(restored.final_profile()) == _exact(eager.final_profile())


def test_a_refired_window_replaces_its_first_firing():
  live, batch = IdentityHistory(), IdentityHistory()
  first, late = ev(D0 + 10 * H), ev(D0 + 10 * H + 60, 'PutObject')
  start = D0 + 10 * H
  live.observe(agg(first), start + H, start, HORIZON)
  live.observe(agg(first, late), start + H, start, HORIZON)  # the late firing: the whole window again
  batch.observe(agg(first, late), start + H, start, HORIZON)
  nxt = D0 + DAY + H  # a window of the next day sees the day before
  assert view(live.observe(agg(ev(nxt - 60)), nxt, nxt - H, HORIZON)) == \
      view(batch.observe(agg(ev(nxt - 60)), nxt, nxt - H, HORIZON)) == (1, 2, {'data_read': 2})
  assert view(live.final_profile()) == view(batch.final_profile())


def test_without_a_horizon_each_firing_counts_as_a_window():
  """What training does (each window comes once), and what live scoring did before."""
  h = IdentityHistory()
  start = D0 + 10 * H
  h.observe(agg(ev(start)), start + H)
  h.observe(agg(ev(start), ev(start + 60)), start + H)
  assert view(h.final_profile())[:2] == (2, 3)


def test_a_late_firing_of_the_day_before_is_judged_against_that_days_base_not_itself():
  h = IdentityHistory()
  burst = [ev(D0 + DAY - 30 * 60 + i, 'GetSecretValue') for i in range(5)]
  last = D0 + DAY - H  # the day's last window: 23:00-24:00
  h.observe(agg(ev(D0 + 2 * H)), D0 + 3 * H, D0 + 2 * H, HORIZON)
  assert view(h.observe(agg(*burst), D0 + DAY, last, HORIZON)) == (0, 0, {})
  # the next day starts: its first window sees the day before, burst included
  assert view(h.observe(agg(ev(D0 + DAY + 60)), D0 + DAY + Q, D0 + DAY + Q - H, HORIZON))[:2] == (2, 6)
  # a late event re-fires the burst's window after midnight: judged as on time (nothing of its
  # day), never against its own first firing
  again = h.observe(agg(*burst, ev(D0 + DAY - 60, 'GetSecretValue')), D0 + DAY, last, HORIZON)
  assert view(again) == (0, 0, {})
  # later windows of the new day see the day before once, with the late event
  after = h.observe(agg(ev(D0 + DAY + 2 * H)), D0 + DAY + 2 * H + Q, D0 + DAY + H + Q, HORIZON)
  assert view(after)[:2] == (2, 7)
  assert h.previous is None and all(end > D0 + DAY for end, _ in h.open.values())


def test_the_ledger_stays_within_the_horizon():
  """Within a day, the windows of the last horizon; across midnight, also the day before's."""
  h = IdentityHistory()
  for k in range(4 * 24):  # a day of windows every 15 min (the last four end the next day)
    start = D0 + k * Q
    h.observe(agg(ev(start + 1)), start + H, start, HORIZON)
    assert len(h.open) <= 2 * (HORIZON // Q) + 1
    if start + H < D0 + DAY:
      assert len(h.open) <= HORIZON // Q + 1
  assert h.final_profile().windows == 96


def test_state_written_before_the_ledger_still_loads():
  h = IdentityHistory()
  h.observe(agg(ev(D0 + 60)), D0 + H)
  state = h.__getstate__()
  for k in ('open', 'previous'):
    state.pop(k)
  old = IdentityHistory.__new__(IdentityHistory)
  old.__setstate__(state)
  old.observe(agg(ev(D0 + H + 60)), D0 + 2 * H, D0 + H, HORIZON)
  assert old.final_profile().windows == 2


# -- on Prism, with late events ------------------------------------------------------------------
def _events_and_script():
  """Day 1: an event every 10 min, 06:00-24:00; day 2: every 10 min, 00:00-04:00. Late: a third
  of day 1's afternoon events arrive 40 min after the watermark passed them, and a burst at
  23:50 arrives after midnight (watermark 00:30)."""
  day1 = [ev(D0 + 6 * H + 600 * i) for i in range(18 * 6)]
  day2 = [ev(D0 + DAY + 600 * i) for i in range(4 * 6)]
  late = [e for e in day1 if 12 * H <= e.event_time - D0 < 18 * H and int(e.event_time) % 1800 == 0]
  burst = [ev(D0 + DAY - 600 + i, 'ListBuckets') for i in range(3)]
  on_time = [e for e in day1 + day2 if e not in late]
  steps, mark, t = [], D0 + 6 * H, D0 + 6 * H
  while t < D0 + DAY + 5 * H:
    t += 300
    batch = [(e, e.event_time) for e in on_time if t - 300 <= e.event_time < t]
    batch += [(e, e.event_time) for e in late if t - 300 <= e.event_time + 40 * 60 < t]
    if t - 300 <= D0 + DAY + 30 * 60 < t:
      batch += [(e, e.event_time) for e in burst]
    steps.append((batch, t - 1))
  steps.append(([], t + DAY))  # a finite drain step before the end, as the file replay has
  return day1 + day2 + burst, steps


def _options(argv):
  o = PipelineOptions(argv)
  o.view_as(StandardOptions).streaming = True
  without_timer_splits(o)
  return o


def _history_views(windows):
  return (windows
          | 'Context' >> beam.Map(lambda w: (w, {'registered': 'true'}))
          | 'History' >> TrackHistory(None, refire_horizon=HORIZON))['windows'] \
      | 'View' >> beam.Map(lambda x: (int(x.window.window_end - D0), x.window.agg.count, x.history.windows,
                                      x.history.events))


def _prism_argv():
  if prism.local_binary() is None:
    missing_tool(f'no Prism binary at {prism.binary_path()}: run `make prism`')
  return ['--runner=PrismRunner', f'--prism_location={prism.local_binary()}']


class _Append(beam.DoFn):
  """Writes each element as a JSON line to a file of its own under ``out`` (any runner)."""

  def __init__(self, out: str):
    self._out = out

  def process(self, row):
    import json, uuid
    with open(os.path.join(self._out, uuid.uuid4().hex), 'w') as f:
      f.write(json.dumps(row))


def _collect(run, out: str):
  import json
  os.makedirs(out)
  run(out)
  rows = []
  for name in os.listdir(out):
    with open(os.path.join(out, name)) as f:
      rows.append(tuple(json.load(f)))
  return rows


def _last_firings(rows):
  """end -> (events, history windows, history events) of each window's last firing (most events)."""
  last = {}
  for end, count, windows, n in rows:
    if end not in last or count >= last[end][0]:
      last[end] = (count, windows, n)
  return last


def test_streaming_history_equals_batch_under_late_data_on_prism(tmp_path):
  events, steps = _events_and_script()
  assert sum(len(b) for b, _ in steps) == len(events)

  def batch(out):
    with beam.Pipeline(runner='FnApiRunner') as p:
      _history_views(p | beam.Create(events) | IdentityWindows(H, Q)) | beam.ParDo(_Append(out))

  def live(out):
    with beam.Pipeline(options=_options(_prism_argv())) as p:
      (_history_views(p | ScriptedStream(steps, pace=0.15) | IdentityWindows(H, Q, HORIZON))
       | beam.ParDo(_Append(out)))

  expected = _last_firings(_collect(batch, str(tmp_path / 'batch')))
  got = _last_firings(_collect(live, str(tmp_path / 'live')))
  # every window's final aggregate is the batch one: the late events re-fired their windows
  assert {e: v[0] for e, v in got.items()} == {e: v[0] for e, v in expected.items()}
  assert len(expected) > 80
  # day one's windows were judged against nothing (its first day), late firings included
  assert all(v[1:] == (0, 0) for e, v in got.items() if e <= DAY)
  # the next day's windows that close after the last late event (00:30) saw the whole day before,
  # each of its windows once, as in batch
  after = lambda d: sorted((e, v) for e, v in d.items() if e > DAY + 30 * 60 + H)
  assert after(expected) and all(v[1] > 0 for _, v in after(expected))
  assert after(got) == after(expected)


def test_a_firing_with_nothing_new_is_a_repeat_and_a_late_one_after_settling_is_not_folded_again():
  h = IdentityHistory()
  start = D0 + 10 * H
  a = agg(ev(start + 60))
  assert h.firing(start, start + H, a.count) == 'first'
  h.observe(a, start + H, start, HORIZON)
  assert h.firing(start, start + H, a.count) == 'repeat'  # a closing re-fire: nothing new
  assert h.firing(start, start + H, a.count + 1) == 'again'
  later = start + H + HORIZON  # a window far enough on settles the first one
  h.observe(agg(ev(later)), later + H, later, HORIZON)
  assert start not in h.open and h.firing(start, start + H, a.count) == 'repeat'
  assert h.firing(start, start + H, a.count + 1) == 'late'
  h.observe(agg(ev(start + 60), ev(start + 120)), start + H, start, HORIZON)
  assert h.final_profile().windows == 2  # scored, never folded twice


def test_a_later_firing_of_a_window_the_history_no_longer_holds_is_never_folded_again():
  """A busy runner can deliver a window's re-fire after the history ran more than a day past
  it: its pane index says it is not a first firing, so it is dropped, not counted twice."""
  h = IdentityHistory()
  start = D0 + 10 * H
  a = agg(ev(start + 60))
  h.observe(a, start + H, start, HORIZON)
  far = start + DAY + 2 * HORIZON
  h.observe(agg(ev(far)), far + H, far, HORIZON)
  assert start not in h.open and start not in h.closed
  assert h.firing(start, start + H, a.count, 1) == 'forgotten'
  assert h.firing(start, start + H, a.count, 0) == 'first'  # a window never seen: its first firing
  # a later firing that overtook the window's first one (within a day): taken as its first
  assert IdentityHistory().firing(start, start + H, a.count + 1, 1) == 'first'


def test_windows_of_two_days_arriving_together_in_reverse_are_folded_in_event_time_order_on_prism(tmp_path):
  """A watermark jump delivers an identity's windows of two days at once, the newest first:
  each sets its own ordering timer (a timer family), and every window is folded once and judged
  as in batch: day two's against day one, day one's against nothing. (Prism hands a key's
  elements over in timestamp order; the fold's own ordering, whatever order its timers fire
  in, is tests/test_state_bounds.py's.)"""
  from postauth.transforms.windowing import EPSILON, IdentityWindow
  ends = [D0 + H, D0 + 2 * H, D0 + DAY + H, D0 + DAY + 2 * H]
  windows = [IdentityWindow('role/etl', end - H, end, agg(ev(end - 600), ev(end - 300, 'PutObject')))
             for end in ends]
  steps = [([(w, w.window_end - EPSILON) for w in reversed(windows)], D0 + DAY + 3 * H)]

  def batch(out):
    with beam.Pipeline(runner='FnApiRunner') as p:
      _history_views(p | beam.Create(windows)) | beam.ParDo(_Append(out))

  def live(out):
    with beam.Pipeline(options=_options(_prism_argv())) as p:
      _history_views(p | ScriptedStream(steps)) | beam.ParDo(_Append(out))

  expected = sorted(_collect(batch, str(tmp_path / 'batch')))
  assert [row[2] for row in expected[:2]] == [0, 0] and all(row[2] > 0 for row in expected[2:])
  assert sorted(_collect(live, str(tmp_path / 'live'))) == expected
