"""Every piece of keyed state has a bound.

- finding runs roll over after a day into a new finding that names the one before
  (``_RunMerger``; unit, and batch == streaming with TestStream);
- an identity's history expires after ``retention`` without a window, keeping only when it was
  last seen (``dormant_identity_revived``), and is forgotten after ``departed``; a returning
  identity starts again from the model's profile (unit, batch == streaming, TestStream);
- dedup state expires on a timer, not only when the identity fires again (unit, TestStream);
- peer adoptions expire on a final timer once the group falls silent (unit);
- the folder watch remembers at most ``MAX_SEEN_PATHS`` paths and reads no file twice (unit).

``bench/state_week.py`` shows the same bounds over a week of a fleet (docs/performance.md).
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import time

import apache_beam as beam
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from conftest import streaming_options
from apache_beam.coders import BytesCoder
from postauth.models.history import IdentityHistory
from postauth.models.history import _profile as ledger_profile
from postauth.models.profile import IdentityProfile
from postauth.transforms import rules, watch
from postauth.transforms.corroborate import ADOPTION_KEPT_MS, SIGHTING, _Corroborator
from postauth.transforms.findings import (MAX_RUN_WINDOWS, MergeOverlappingWindows, _RunMerger, _first_due,
                                          finding_id, rfc3339)
from postauth.transforms.history import EXPIRY_GRACE, REFIRE_HORIZON, TrackHistory, TrackHistoryFn, WalkHistoryFn
from postauth.transforms.history_cell import decode_state, encode_state
from postauth.transforms.poll_tracker import PollTracker
from postauth.transforms.triage import DeduplicateFindings, _DedupFn, _Deduplicator
from postauth.transforms.windowing import EPSILON
from test_early_findings import _stream, scored
from test_identity_context import ctx, ev, window

T0 = 1_800_000_000  # aligned to 1 h (test_early_findings' T0)
H, Q = 3600, 900
DAY = 86400


# -- finding runs ------------------------------------------------------------------------------
def _walk_merger(merger, windows):
  """(every version, the most windows any run held after a step), firing timers as the walk does."""
  out, held, waiting, now = [], 0, windows, _first_due(windows)
  while now is not None:
    emitted, waiting, now = merger.step(now, waiting)
    out += [tv.value for tv in emitted]
    held = max([held] + [len(r['windows']) for r in merger.runs])
  return out, held


def test_a_run_longer_than_a_day_rolls_over_into_a_new_finding_that_names_the_one_before():
  # an identity anomalous in every 15-minute window for three days
  windows = [scored(k * Q).value for k in range(3 * 96)]
  versions, held = _walk_merger(_RunMerger(H), windows)
  latest = {}
  for f in versions:
    latest[f['finding_id']] = f
  findings = sorted(latest.values(), key=lambda f: f['window_start'])
  # a day of windows is 93 (the first starts at T0, the last ends at T0 + 24 h): 288 -> 93+93+93+9
  assert [f['windows'] for f in findings] == [93, 93, 93, 9]
  assert 'continues' not in findings[0]
  for before, f in zip(findings, findings[1:]):
    assert f['continues'] == before['finding_id']
    assert all(v.get('continues') == before['finding_id'] for v in versions if v['finding_id'] == f['finding_id'])
  for f in findings:  # each finding spans at most a day and emits one version per window
    span = (Timestamp.from_rfc3339(f['window_end']) - Timestamp.from_rfc3339(f['window_start'])).micros / 1e6
    assert span <= DAY and f['updates'] == f['windows'] - 1
  assert findings[1]['finding_id'] == finding_id('svc-a', T0 + 93 * Q, T0 + 93 * Q + H)
  assert held <= min(93, MAX_RUN_WINDOWS)  # the run's state: at most a day of windows, not 288


def test_a_rolled_over_run_still_takes_a_rescored_window_of_its_own():
  windows = [scored(k * Q).value for k in range(95)]  # rolls over at the 94th window
  merger = _RunMerger(H, allowed_lateness=2 * H)
  now = _first_due(windows[-1:])
  versions = [tv.value for tv in merger.step(now, windows)[0]]  # every window due, in order
  first = versions[0]['finding_id']
  assert versions[-1]['continues'] == first
  late = dict(scored(90 * Q, 'critical', 7.0).value)  # a re-scored window of the first run
  out, _, _ = merger.step(now, [late])
  assert [(v.value['finding_id'], v.value['severity'], 'continues' in v.value) for v in out] == [
      (first, 'critical', False)]


def _rollover_view(f):
  return f['finding_id'], f['updates'], f.get('continues')


def test_rollover_is_the_same_in_batch_and_streaming():
  """Twelve windows, a rollover every 2 h: A (5 windows) <- B (5) <- C (2), in both paths."""
  windows = [scored(k * Q) for k in range(12)]
  a, b, c = (finding_id('svc-a', T0 + k * Q, T0 + k * Q + H) for k in (0, 5, 10))
  expected = ([(a, n, None) for n in range(5)] + [(b, n, a) for n in range(5)]
              + [(c, n, b) for n in range(2)])
  with beam.Pipeline(runner='FnApiRunner') as p:
    batch = p | beam.Create(list(reversed(windows))) | MergeOverlappingWindows(H, rollover_seconds=2 * H)
    assert_that(batch | beam.Map(_rollover_view), equal_to(expected))
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  live = p | _stream(windows) | MergeOverlappingWindows(H, rollover_seconds=2 * H)
  assert_that(live | beam.Map(_rollover_view), equal_to(expected))
  p.run().wait_until_finish()


# -- identity history --------------------------------------------------------------------------
D0 = T0 - T0 % DAY  # midnight UTC


class _Cell:
  """The history's ReadModifyWrite cell as the DirectRunner keeps it: ``value`` holds the bytes
  the state's coder wrote (``keeps_objects``: the value written, as the Fn API runners keep it
  until the bundle commits)."""

  def __init__(self, keeps_objects: bool = False):
    self.value, self._coder, self._objects = None, TrackHistoryFn.HISTORY.coder, keeps_objects

  def read(self):
    if self.value is None or self._objects:
      return self.value
    return self._coder.decode(self.value)

  def write(self, value):
    self.value = value if self._objects else self._coder.encode(value)

  def clear(self):
    self.value = None


class _Timer:
  def __init__(self):
    self.at = None

  def set(self, ts, dynamic_timer_tag=''):
    self.at = ts


class _Bag:
  """A bag state cell."""

  def __init__(self):
    self.items = []

  def add(self, x):
    self.items.append(x)

  def read(self):
    return list(self.items)

  def clear(self):
    self.items = []


def _track(fn, kv, cell, expire):
  """The streaming DoFn on one window: process it, then fire its ordering timer (the window
  arrives once the watermark passed its end)."""
  bag, order = _Bag(), _Timer()
  list(fn.process(kv, pending=bag, order=order, state=cell, expire=expire))
  return list(fn.fold(fired=order.at, key=kv[0], pending=bag, state=cell, expire=expire))


def _kept(cell):
  return decode_state(cell.value).kept


def _history_fn(cls, profiles=None):
  fn = cls(None, retention=3 * DAY, departed=10 * DAY)
  fn.setup()
  fn._profiles = profiles or {}
  return fn


def test_history_expires_to_a_departed_record_then_is_forgotten_on_the_streaming_timer():
  fn, cell, timer = _history_fn(TrackHistoryFn), _Cell(), _Timer()
  w = window('ci-ns-42', D0 + H, [ev('ci-ns-42', D0 + 600)])
  _track(fn, ('ci-ns-42', (w, ctx(identity='ci-ns-42'))), cell, timer)
  # first a day after the window: its firings go (none can come after the horizon), the history stays
  assert decode_state(cell.value).firings and timer.at == Timestamp.of(D0 + H + max(REFIRE_HORIZON, EXPIRY_GRACE))
  list(fn.expire(fired=timer.at, key=None, state=cell, expire=timer, pending=_Bag()))
  assert decode_state(cell.value).firings == {} and isinstance(_kept(cell), IdentityHistory)
  assert timer.at == Timestamp.of(D0 + H + 3 * DAY + EXPIRY_GRACE)
  # the watermark passed it: no window for 3 days (+ grace)
  list(fn.expire(fired=timer.at, key=None, state=cell, expire=timer, pending=_Bag()))
  assert _kept(cell) == (D0 + 600, D0 + H) and len(cell.value) < 160
  assert timer.at == Timestamp.of(D0 + H + 10 * DAY + EXPIRY_GRACE)
  list(fn.expire(fired=timer.at, key=None, state=cell, expire=timer, pending=_Bag()))
  assert cell.value is None


def test_a_history_stored_before_last_active_existed_still_expires_on_its_timer():
  """State written by an older job (no ``last_active``) whose timer fires before any new window:
  it departs as it did then, without failing the bundle."""
  fn, cell, timer = _history_fn(TrackHistoryFn), _Cell(), _Timer()
  w = window('ci-ns-42', D0 + H, [ev('ci-ns-42', D0 + 600)])
  _track(fn, ('ci-ns-42', (w, ctx(identity='ci-ns-42'))), cell, timer)
  old = _kept(cell)
  old.last_active = None
  cell.value = encode_state(old)
  list(fn.expire(fired=Timestamp.of(D0 + 5 * DAY), key=None, state=cell, expire=timer, pending=_Bag()))
  assert _kept(cell) == (D0 + 600, D0 + 600)  # its last event stands for its last window


def test_a_history_cell_written_before_it_held_the_firings_still_folds():
  """A cell of an older job holds the pickled history alone (its firings had a cell of their
  own): it loads with no firings and the next window folds into it."""
  fn, cell, timer = _history_fn(TrackHistoryFn), _Cell(), _Timer()
  _track(fn, ('svc-2', (window('svc-2', D0 + H, [ev('svc-2', D0 + 600)]), ctx(identity='svc-2'))), cell, timer)
  cell.value = pickle.dumps(_kept(cell), protocol=pickle.HIGHEST_PROTOCOL)  # the older cell
  assert decode_state(cell.value).firings == {}
  later = window('svc-2', D0 + DAY + H, [ev('svc-2', D0 + DAY + 600)])
  out = [x.value for x in _track(fn, ('svc-2', (later, ctx(identity='svc-2'))), cell, timer)]
  assert [x.history_days for x in out] == [1] and list(decode_state(cell.value).firings) == [
      (later.window_start, later.window_end)]


class _Timers:
  """A timer family: one timestamp per dynamic tag."""

  def __init__(self):
    self.at = {}

  def set(self, ts, dynamic_timer_tag=''):
    self.at[dynamic_timer_tag] = ts


def test_windows_arriving_newest_first_are_folded_in_event_time_order_whichever_timer_fires_first():
  """Each window's arrival sets its own ordering timer and reads nothing; a fold takes every
  pending window due by its timer, oldest first, so the day-two window is judged against day one
  even when its timer is the one that fires (a runner may fire a key's due timers in any order)."""
  fn, cell, expire, bag, order = _history_fn(TrackHistoryFn), _Cell(), _Timer(), _Bag(), _Timers()
  day1 = window('svc-1', D0 + H, [ev('svc-1', D0 + 600)])
  day2 = window('svc-1', D0 + DAY + H, [ev('svc-1', D0 + DAY + 600)])
  for w in (day2, day1):
    assert list(fn.process(('svc-1', (w, ctx(identity='svc-1'))), pending=bag, order=order, state=cell,
                           expire=expire)) == []
  assert cell.value is None and sorted(order.at.values()) == [Timestamp.of(D0 + H - EPSILON),
                                                              Timestamp.of(D0 + DAY + H - EPSILON)]
  out = [x.value for x in fn.fold(fired=max(order.at.values()), key='svc-1', pending=bag, state=cell,
                                  expire=expire) if not isinstance(x, beam.pvalue.TaggedOutput)]
  assert [x.window.window_end for x in out] == [D0 + H, D0 + DAY + H]
  assert [x.history_days for x in out] == [0, 1] and bag.items == []
  # the other timer then finds nothing waiting
  assert list(fn.fold(fired=min(order.at.values()), key='svc-1', pending=bag, state=cell, expire=expire)) == []


def _fold_one_by_one(cell):
  """Two days of an identity's windows (one re-fired with a late event) folded one ordering timer
  at a time, as a runner fires a key's timers after a watermark jump; -> (what each fold
  emitted, the cell's history)."""
  fn, expire, bag, order = _history_fn(TrackHistoryFn), _Timer(), _Bag(), _Timers()
  windows = [window('svc-3', D0 + h * H, [ev('svc-3', D0 + h * H - 600, action=f'A{h % 5}')])
             for h in range(1, 30, 2)]
  windows.insert(3, window('svc-3', windows[2].window_end, [ev('svc-3', windows[2].window_end - 300,
                                                                action='DeleteObject')])._replace(firing=1))
  out = []
  for w in windows:
    list(fn.process(('svc-3', (w, ctx(identity='svc-3'))), pending=bag, order=order, state=cell, expire=expire))
  for fired in sorted(set(order.at.values())):
    out += [x.value for x in fn.fold(fired=fired, key='svc-3', pending=bag, state=cell, expire=expire)
            if not isinstance(x, beam.pvalue.TaggedOutput)]
  # viewed after the last fold: a later fold must not have changed what an earlier one handed out
  return [(x.window.window_end, x.history.windows, sorted(x.history.seen['actions'].items()), x.history_days)
          for x in out], cell.read()


def _cell_view(state):
  """What a history cell holds, comparably (pickles of equal objects may differ in their memo; a
  ledger window is kept as its firing and stored as its profile: models/history.py)."""
  h = state.kept
  return (h.base.to_dict(), h.today.to_dict(), h.day, h.first_day, h.last_active, h.closed,
          {s: (e, ledger_profile(p).to_dict()) for s, (e, p) in h.open.items()},
          {k: a.to_dict() for k, a in state.firings.items()})


def test_a_cell_that_keeps_the_written_object_folds_as_one_that_encodes_it():
  """On the Fn API runners a bundle's read after a write returns the object written (its coder
  runs once, at commit): folding a key's windows timer by timer through such a cell emits and
  keeps what the encoding cell (the DirectRunner's) does, so no fold changes what an earlier
  one handed out or wrote."""
  kept_out, kept_state = _fold_one_by_one(_Cell(keeps_objects=True))
  coded_out, coded_state = _fold_one_by_one(_Cell())
  assert kept_out == coded_out and len(coded_out) == 16
  assert [o[1] for o in coded_out][:3] == [0, 0, 0] and coded_out[-1][3] == 1  # judged before its day
  assert _cell_view(kept_state) == _cell_view(coded_state)


def test_a_history_cell_written_as_bytes_by_the_previous_version_reads_the_same():
  """The cell's state bytes are the pickled IdentityState length-prefixed, as the BytesCoder
  the step used before wrote them: a job updated in place reads its histories."""
  fn, cell, timer = _history_fn(TrackHistoryFn), _Cell(), _Timer()
  _track(fn, ('svc-4', (window('svc-4', D0 + H, [ev('svc-4', D0 + 600)]), ctx(identity='svc-4'))), cell, timer)
  value = TrackHistoryFn.HISTORY.coder.decode(cell.value)
  nested = TrackHistoryFn.HISTORY.coder.get_impl().encode_nested(value)
  assert nested == BytesCoder().get_impl().encode_nested(encode_state(*value))
  again = TrackHistoryFn.HISTORY.coder.get_impl().decode_nested(nested)
  assert isinstance(again.kept, IdentityHistory) and list(again.firings) == list(value.firings)
  unpacked = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)  # a cell written before packing
  before = TrackHistoryFn.HISTORY.coder.get_impl().decode_nested(BytesCoder().get_impl().encode_nested(unpacked))
  assert isinstance(before.kept, IdentityHistory) and list(before.firings) == list(value.firings)


def test_an_expiry_timer_fired_before_waiting_windows_folds_them_instead():
  """A watermark jump can fire the expiry before the ordering timer of windows already waiting:
  they are folded (and scored), the history is kept and its expiry follows them."""
  fn, cell, timer = _history_fn(TrackHistoryFn), _Cell(), _Timer()
  w = window('agent-9', D0 + H, [ev('agent-9', D0 + 600)])
  _track(fn, ('agent-9', (w, ctx(identity='agent-9'))), cell, timer)
  later = window('agent-9', D0 + 2 * H, [ev('agent-9', D0 + H + 600)])
  bag = _Bag()
  bag.add((later, ctx(identity='agent-9')))
  out = list(fn.expire(fired=timer.at, key='agent-9', state=cell, expire=timer, pending=bag))
  assert [x.value.window.window_end for x in out if not isinstance(x, beam.pvalue.TaggedOutput)] == [D0 + 2 * H]
  assert isinstance(_kept(cell), IdentityHistory) and bag.items == []
  assert timer.at == Timestamp.of(D0 + 2 * H + max(REFIRE_HORIZON, EXPIRY_GRACE))


def _history_walks(profiles, windows, identity):
  """(batch walk, streaming with timers fired as the watermark reaches them) -> per window
  (history windows, last seen, days of history)."""
  def view(item):
    return item.history.windows, item.history.last_seen, min(item.history_days, 99)

  pairs = [(w, ctx(identity=identity)) for w in windows]
  batch = [view(x.value) for x in _history_fn(WalkHistoryFn, profiles).process((identity, pairs))
           if not isinstance(x, beam.pvalue.TaggedOutput)]
  fn, cell, timer, live = _history_fn(TrackHistoryFn, profiles), _Cell(), _Timer(), []
  for w, c in pairs:
    while timer.at is not None and timer.at <= Timestamp.of(w.window_end - EPSILON):
      fired, timer.at = timer.at, None
      list(fn.expire(fired=fired, key=None, state=cell, expire=timer, pending=_Bag()))
      assert timer.at is None or timer.at > fired
    live += [view(x.value) for x in _track(fn, (identity, (w, c)), cell, timer)
             if not isinstance(x, beam.pvalue.TaggedOutput)]
  return batch, live


def test_a_returning_identity_starts_again_from_the_model_with_its_last_sighting():
  day0 = [window('svc', D0 + (h + 1) * H, [ev('svc', D0 + h * H + 60)]) for h in range(3)]
  back = window('svc', D0 + 5 * DAY + H, [ev('svc', D0 + 5 * DAY + 60, action='DeleteObject')])
  late = window('svc', D0 + 20 * DAY + H, [ev('svc', D0 + 20 * DAY + 60)])
  trained = IdentityProfile().update(window('svc', D0 - 9 * DAY, [ev('svc', D0 - 9 * DAY - 60)]).agg, D0 - 9 * DAY)
  last_day0 = D0 + 2 * H + 60
  batch, live = _history_walks({'svc': trained}, day0 + [back, late], 'svc')
  assert batch == live
  # day 0 on the model's profile; back after 5 days (> 3): the model's profile again, with the
  # real last sighting; back after 20 days (> 10): forgotten, the model's profile as it is
  assert [b[0] for b in batch] == [1, 1, 1, 1, 1]
  assert batch[3][1] == last_day0 and batch[4][1] == trained.last_seen == D0 - 9 * DAY - 60
  assert trained.windows == 1 and trained.last_seen == D0 - 9 * DAY - 60  # the model's own is untouched
  # without a model profile it warms up again, and the rule still sees a 5-day silence
  batch, live = _history_walks({}, day0 + [back, late], 'svc')
  assert batch == live
  assert [(b[0], b[2]) for b in batch] == [(0, 0)] * 5
  assert batch[3][1] == last_day0 and batch[4][1] == float('-inf')
  fn = _history_fn(WalkHistoryFn)
  item = [x.value for x in fn.process(('svc', [(w, ctx(identity='svc')) for w in day0 + [back]]))][-1]
  fired = rules.dormant_identity_revived(item.window, item.context, item.history, rules.RuleConfig(dormant_days=4))
  assert fired and 'after 5 days of silence' in fired['detail']


FIRED = []  # what the expiry timers did: the in-process runner shares this module


def _spy(monkeypatch, cls, name, record):
  """Wraps ``cls.name`` so each call is recorded (the runner looks methods up on the class)."""
  original = getattr(cls, name)

  def spied(self, *args):
    out = original(self, *args)
    FIRED.append(record(self, args, out))
    return out

  monkeypatch.setattr(cls, name, spied)
  FIRED.clear()


def test_history_expiry_is_the_same_in_batch_and_streaming_on_a_runner(monkeypatch):
  """TrackHistory with its timer on the BundleBasedDirectRunner: the watermark passing the
  expiry turns the history into a departed record; the identity's return is judged alike."""
  _spy(monkeypatch, TrackHistoryFn, '_departure', lambda fn, args, out: out)
  windows = [window('agent-7', D0 + (h + 1) * H, [ev('agent-7', D0 + h * H + 60)]) for h in range(2)]
  windows.append(window('agent-7', D0 + 6 * DAY + H, [ev('agent-7', D0 + 6 * DAY + 60)]))
  pairs = [(w, ctx(identity='agent-7')) for w in windows]
  expected = [(H, 0, 0), (2 * H, 0, 0), (6 * DAY + H, 0, 0)]  # (end, windows, days)
  view = beam.Map(lambda x: (int(x.window.window_end - D0), x.history.windows, x.history_days))
  with beam.Pipeline(runner='FnApiRunner') as p:
    batch = (p | beam.Create(pairs) | TrackHistory(None, retention=3 * DAY, departed=10 * DAY))['windows']
    assert_that(batch | 'Batch' >> view, equal_to(expected))
  stream = TestStream()
  for w, c in pairs:  # each window arrives as the watermark reaches its end, as windows close
    stream = (stream.advance_watermark_to(w.window_end - 1)
              .add_elements([TimestampedValue((w, c), w.window_end - EPSILON)]).advance_watermark_to(w.window_end))
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  live = (p | stream.advance_watermark_to_infinity()
          | TrackHistory(None, retention=3 * DAY, departed=10 * DAY))['windows']
  assert_that(live | 'Live' >> view, equal_to(expected))
  p.run().wait_until_finish()
  # before the return the timer turned the history into (last seen, last active); at the end of
  # the stream (watermark at infinity) the returned history expired, then its record went too
  assert FIRED == [(D0 + H + 60, D0 + 2 * H), (D0 + 6 * DAY + 60, D0 + 6 * DAY + H), None]


# -- dedup -------------------------------------------------------------------------------------
SCOPE = {'rule': 'out_of_scope', 'detail': 'ecs:UpdateService x3 outside', 'severity': 'medium',
         'actions': ['ecs:UpdateService']}


def _version(fid, start, severity='medium'):
  return {'finding_id': fid, 'identity': 'role/ci', 'window_start': rfc3339(T0 + start),
          'window_end': rfc3339(T0 + start + H), 'first_detected_at': rfc3339(T0 + start + H), 'score': 4.0,
          'severity': severity, 'reasons': [SCOPE], 'rules': ['out_of_scope'], 'occurrences': 1,
          'actions': {'ecs:UpdateService': 3}, 'resources': {}, 'updates': 0}


def _ms(start):
  return (T0 + start + H) * 1000 - 1


def test_dedup_state_expires_on_a_timer_when_the_identity_never_fires_again():
  d = _Deduplicator(6 * H)  # kept for a day
  d.step(_ms(0), [(_ms(0), _version('f1', 0))])
  assert d.known and d.sent
  gone = (T0 + H + DAY) * 1000 + 1  # a day after the finding last grew
  assert gone - 2 <= d.expiry() <= gone
  d.expire(gone - 2)
  assert d.known and d.sent
  d.expire(gone)
  assert not d.known and not d.sent and d.expiry() is None


def test_dedup_expiry_does_not_change_what_folds_within_the_period():
  d = _Deduplicator(6 * H)
  d.step(_ms(0), [(_ms(0), _version('f1', 0))])
  d.expire(_ms(5 * H))  # an expiry timer in between changes nothing within the retention
  out, _, _ = d.step(_ms(5 * H), [(_ms(5 * H), _version('f2', 5 * H))])
  assert [(v.value['finding_id'], v.value['occurrences']) for v in out] == [('f1', 2)]


def test_dedup_state_is_cleared_on_a_runner_when_the_watermark_passes_its_expiry(monkeypatch):
  _spy(monkeypatch, _Deduplicator, 'expire', lambda d, args, out: (args[0], len(d.known), len(d.sent)))
  stream = (TestStream().add_elements([TimestampedValue(_version('f1', 0), T0 + H - EPSILON)])
            .advance_watermark_to(T0 + H).advance_watermark_to(T0 + H + 2 * DAY)
            .advance_watermark_to_infinity())
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  out = p | stream | DeduplicateFindings(6 * H)
  assert_that(out | beam.Map(lambda f: f['finding_id']), equal_to(['f1']))
  p.run().wait_until_finish()
  # the flush prunes first (nothing yet); the expiry timer a day after the version drops the
  # finding's counters, then (1 ms on) the finding shown
  day = (T0 + H + DAY) * 1000
  assert FIRED == [(_ms(0), 0, 0), (day, 1, 0), (day + 1, 0, 0)]


# -- peers -------------------------------------------------------------------------------------
def test_peer_adoptions_expire_on_a_final_timer_once_the_group_falls_silent():
  c = _Corroborator(1800.0, 2)
  ms = (T0 + H) * 1000 - 1
  sighting = (ms, {'kind': SIGHTING, 'group': 'type:ai_agent', 'identity': 'agent-1',
                   'actions': ['ses:SendEmail'], 'window_end': T0 + H})
  out, rest, nxt = c.step(ms, [sighting])
  assert out == [] and rest == [] and c.adopters == {'ses:SendEmail': {'agent-1': ms}}
  assert nxt == ms + ADOPTION_KEPT_MS + 1  # no more sightings or findings: a timer all the same
  c.step(nxt - 1, [])
  assert c.adopters
  out, rest, nxt = c.step(nxt, [])
  assert c.adopters == {} and nxt is None


# -- folder watch ------------------------------------------------------------------------------
class _Tracker(PollTracker):
  def defer_remainder(self, *_):
    pass


def _poll(fn, pattern, state):
  tracker = _Tracker(state, 'watch', watch._closed)
  out = list(fn.process(pattern, timestamp=Timestamp(0), tracker=tracker,
                        watermark=ManualWatermarkEstimator(None)))
  return out, tracker._claimed


def _delivery(folder, k, mtime):
  path = os.path.join(folder, f'part-{k}.json.gz')
  with gzip.open(path, 'wt') as f:
    json.dump({'Records': [{'eventVersion': '1.08', 'eventTime': '2026-11-05T12:00:00Z',
                            'eventID': f'e{k}', 'eventName': 'GetObject'}]}, f)
  os.utime(path, (mtime, mtime))
  return path


def test_the_watch_forgets_its_oldest_paths_beyond_the_cap_and_reads_no_file_twice(tmp_path, monkeypatch):
  monkeypatch.setattr(watch, 'MAX_SEEN_PATHS', 3, raising=False)
  base = int(time.time()) - 3600
  for k in range(5):
    _delivery(str(tmp_path), k, base + k)
  fn, pattern = watch._WatchFilesFn(30.0, 600, 900.0, 14400), os.path.join(str(tmp_path), '*.json.gz')
  out, state = _poll(fn, pattern, watch.WatchState({}, float('-inf'), None, time.time()))
  assert len(out) == 5  # every file read once
  assert sorted(os.path.basename(p) for p in state.seen) == ['part-2.json.gz', 'part-3.json.gz', 'part-4.json.gz']
  assert state.cutoff == base + 1  # the newest forgotten file: it and older ones count as read
  out, state = _poll(fn, pattern, state)
  assert out == []  # the forgotten files are not read again
  _delivery(str(tmp_path), 5, base + 5)
  out, state = _poll(fn, pattern, state)
  assert [r.value.ref.split('#')[0].rsplit('/', 1)[-1] for r in out] == ['part-5.json.gz']
  assert len(state.seen) == 3 and state.cutoff == base + 2


def test_a_late_firing_is_put_back_together_with_the_earlier_ones_and_kept_within_the_horizon():
  """The sliding windows discard: a late firing carries only its late events. The history step
  judges the whole window (earlier firings + the late one), keeps what a later firing may need
  for the re-fire horizon, and forgets it all a day after the identity's newest window."""
  fn, firings = _history_fn(TrackHistoryFn), {}
  on_time = window('ci-7', D0 + H, [ev('ci-7', D0 + 600), ev('ci-7', D0 + 900)])
  late = window('ci-7', D0 + H, [ev('ci-7', D0 + 700, action='DeleteObject')])._replace(firing=1)
  assert fn._whole_window((on_time, ctx()), firings)[0].agg.count == 2
  whole = fn._whole_window((late, ctx()), firings)[0]
  assert whole.agg.count == 3 and whole.firing == 1
  assert whole.agg.actions == {'s3:GetObject': 2, 's3:DeleteObject': 1}
  assert late.agg.count == 1  # the firing itself is not changed
  far = window('ci-7', D0 + H + fn._refire_horizon + 900, [ev('ci-7', D0 + H + fn._refire_horizon + 100)])
  fn._whole_window((far, ctx()), firings)
  assert list(firings) == [(far.window_start, far.window_end)]  # the old window can no longer fire
  cell = _Cell()  # the streaming step keeps them in the identity's cell, until its expiry timer
  _track(fn, ('ci-7', (far, ctx())), cell, _Timer())
  assert list(decode_state(cell.value).firings) == [(far.window_start, far.window_end)]
  list(fn.expire(fired=Timestamp.of(far.window_end + EXPIRY_GRACE), key=None, state=cell,
                 expire=_Timer(), pending=_Bag()))
  assert decode_state(cell.value).firings == {} and isinstance(_kept(cell), IdentityHistory)
