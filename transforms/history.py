"""Per-identity history in event time: keyed state in streaming, a sorted walk in batch.

Both paths fold windows through ``models.history.IdentityHistory`` (the same
class the training job uses), so an identity-window is judged against exactly
the history the model was trained to expect. The history starts from the
profile the model learned for the identity (if any) and then keeps learning
from the live stream, bounded by the profile's caps.

Identities absent from the inventory raise one ``unregistered_identity``
finding per identity and 24 h of event time from its first report (shadow NHIs),
from the same state (the clock is in transforms/unregistered.py).

Expiry (identities that stop: CI namespaces, short-lived agents, rotated keys). An
identity without a window for ``retention`` (``HISTORY_RETENTION``, 35 days) loses
its history; what is kept is when it was last seen and last active (a *departed*
record, a few dozen bytes), for ``departed`` (``DEPARTED_RETENTION``, 400 days)
after its last activity, then nothing. An identity that comes back after its
history expired starts again from the profile the model holds for it (read again
from the model; the live-learned days are gone), or as a new identity (warm-up)
if the model has none; either way with its real last sighting, so
``dormant_identity_revived`` still fires for a key silent for a month or a year
(the daily retrain keeps a week of history, so the model alone would not know).
The rule is a function of the windows alone (``_resume``), applied when a window
arrives, in batch and streaming alike; the streaming timer (last activity +
retention + ``EXPIRY_GRACE``) only frees the state of identities that never
come back. Counters: ``history_expired``, ``history_forgotten``,
``history_returned``.
"""
from __future__ import annotations

import copy
import math
import typing
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils import shared
from apache_beam.utils.timestamp import Duration, Timestamp

from postauth.models.history import IdentityHistory
from postauth.models.profile import IdentityProfile
from postauth.transforms.findings import unregistered_finding
from postauth.transforms.history_cell import IdentityState, IdentityStateCoder, Kept
from postauth.transforms.lateness import DEFAULT_ALLOWED_LATENESS, beam_lateness
from postauth.transforms.model_cache import acquire_model
from postauth.transforms.packed import PackedStateCoder
from postauth.transforms.unregistered import due
from postauth.transforms.window_context import IDENTITY_WINDOWS_IN_CONTEXT, WindowInContext
from postauth.transforms.windowing import EPSILON, IdentityWindow

UNREGISTERED = 'unregistered'
DAY = 86400
# Longer than a month: an identity that works once a month (month-end close, monthly
# rotation) keeps its history from one run to the next instead of warming up again.
HISTORY_RETENTION = 35 * DAY
# Longer than a year: a key used yearly, or abandoned for a year (a favourite target), still
# reads as returning after a silence (dormant_identity_revived), not as a new identity.
DEPARTED_RETENTION = 400 * DAY
# The streaming timer fires this long after the expiry instant, so a window within the
# allowed lateness (default 1 h, plus the gate's 10 min margin) of that instant still finds
# the history the batch walk would: invariant, --allowed-lateness + 10 min < EXPIRY_GRACE.
EXPIRY_GRACE = DAY


def refire_horizon(allowed_lateness: int, period: int) -> int:
  """How long after its end a history keeps a window's firing apart, so that a later one
  replaces it instead of counting twice (models/history.py): the windows' state lifetime
  (transforms/lateness.py), when a runner last re-fires them, plus one period, so windows
  folded while the closing re-fire is on its way do not settle it first."""
  return beam_lateness(allowed_lateness) + period


REFIRE_HORIZON = refire_horizon(DEFAULT_ALLOWED_LATENESS, 900)

def _fold_order(wc) -> Tuple[float, float, int]:
  """Windows in event-time order; firings of one window in the order they fired."""
  return wc[0].window_end, wc[0].window_start, wc[0].firing


def _by_identity(wc):
  """(identity, (window, context)): a function, not a lambda (this module may run compiled)."""
  return wc[0].identity, wc


def _take_due(pending, until: float) -> List:
  """The pending windows due by ``until``, in fold order, taken out of ``pending``."""
  waiting = sorted(pending.read(), key=_fold_order)
  if not waiting:
    return []
  due = [wc for wc in waiting if wc[0].window_end - EPSILON <= until + 1e-3]  # a prefix: sorted by end
  pending.clear()
  for wc in waiting[len(due):]:
    pending.add(wc)
  return due


class _HistoryFn(beam.DoFn):
  """What both paths share: the model's profiles as starting points and the per-window step."""

  def __init__(self, model_dir: Optional[str], version: Optional[str] = None,
               unregistered: bool = True, shared_handle=None,
               retention: float = HISTORY_RETENTION, departed: float = DEPARTED_RETENTION,
               refire_horizon: Optional[float] = None):
    self._unregistered_enabled = unregistered
    self._refire_horizon = REFIRE_HORIZON if refire_horizon is None else refire_horizon
    self._retention, self._departed = retention, max(departed, retention)
    self._model_dir = model_dir
    self._version = version
    self._shared = shared_handle or shared.Shared()
    self.windows = Metrics.counter('postauth', 'history_windows')
    self.new_identities = Metrics.counter('postauth', 'history_new_identities')
    self.unregistered = Metrics.counter('postauth', 'findings_unregistered_identity')
    self.expired = Metrics.counter('postauth', 'history_expired')
    self.forgotten = Metrics.counter('postauth', 'history_forgotten')
    self.returned = Metrics.counter('postauth', 'history_returned')
    self.replaced = Metrics.counter('postauth', 'history_windows_replaced')
    self.repeats = Metrics.counter('postauth', 'identity_windows_repeated')
    self.forgotten_firings = Metrics.counter('postauth', 'identity_windows_refired_after_forgotten')
    self.settled_late = Metrics.counter('postauth', 'history_windows_late_after_settling')

  def setup(self):
    self._profiles = (acquire_model(self._shared, self._model_dir, self._version).profiles
                      if self._model_dir else {})

  def _new_history(self, identity: str) -> IdentityHistory:
    base = self._profiles.get(identity)
    if base is None:
      self.new_identities.inc()
    return IdentityHistory(base)

  def _resume(self, identity: str, kept: Optional[Kept], at: float) -> IdentityHistory:
    """The history a window ending at ``at`` is judged against, given what the state keeps.

    Kept unless idle for more than ``retention`` before ``at``; then it starts again from the
    model's profile with the identity's last sighting (a departed record), or from nothing
    once idle for more than ``departed``. Late windows (``at`` before the last) never expire it."""
    if kept is None:
      return self._new_history(identity)
    if isinstance(kept, IdentityHistory):
      if kept.last_active is None or at - kept.last_active <= self._retention:
        return kept
      self.expired.inc()
      kept = (kept.last_seen(), kept.last_active)
    last_seen, last_active = kept
    if at - last_active > self._departed:
      self.forgotten.inc()
      return self._new_history(identity)
    self.returned.inc()
    base = self._profiles.get(identity)
    base = copy.deepcopy(base) if base is not None else IdentityProfile()  # never the model's own
    base.last_seen = max(base.last_seen, last_seen)
    return IdentityHistory(base)

  def _walk(self, identity: str, hist: Optional[Kept], items,
            stamped: bool = True) -> Tuple[IdentityHistory, List]:
    """(the history after ``items``, folded in the order given; what they emit, each window
    stamped at its end unless not ``stamped``): the one loop of the batch walk and the
    streaming fold."""
    out: List = []
    for window, context in items:
      hist = self._resume(identity, hist, window.window_end)
      if stamped:
        out.extend(beam.transforms.window.TimestampedValue(x, x.window.window_end - EPSILON)
                   if isinstance(x, WindowInContext) else x for x in self._step(hist, window, context))
      else:
        out.extend(self._step(hist, window, context))
    return hist, out

  def _step(self, hist: IdentityHistory, window: IdentityWindow, context: Dict):
    firing = hist.firing(window.window_start, window.window_end, window.agg.count, window.firing)
    if firing in ('repeat', 'forgotten'):  # a window's re-fire with nothing new: judged already
      (self.repeats if firing == 'repeat' else self.forgotten_firings).inc()
      return
    self.windows.inc()
    if firing != 'first':
      (self.replaced if firing == 'again' else self.settled_late).inc()
    before = hist.observe(window.agg, window.window_end, window.window_start, self._refire_horizon)
    yield WindowInContext(window, context, before, hist.days_of_history(window.window_end))
    if context.get('registered') == 'false' and self._unregistered_enabled:
      agg = window.agg
      first = agg.first_time if math.isfinite(agg.first_time) else window.window_start
      last = agg.last_time if math.isfinite(agg.last_time) else window.window_end - EPSILON
      clock = due(hist.unregistered_clock, first, last)
      if clock is not None:
        hist.unregistered_clock = clock
        self.unregistered.inc()
        yield beam.pvalue.TaggedOutput(
            UNREGISTERED, beam.transforms.window.TimestampedValue(
                unregistered_finding(window, context), window.window_end - EPSILON))


class TrackHistoryFn(_HistoryFn):
  """Streaming: (identity, (window, context)) -> WindowInContext, history in keyed state. A window's
  arrival appends it to ``pending`` and sets its ordering timer (no read); its fold reads and
  writes the identity's one cell (``IdentityState``): state per window, not event."""

  HISTORY = ReadModifyWriteStateSpec('history', IdentityStateCoder())
  PENDING = BagStateSpec('pending', PackedStateCoder())
  EXPIRE = TimerSpec('expire', TimeDomain.WATERMARK)
  # A timer family, one per pending window end (its tag): an arrival reads nothing to find the earliest.
  ORDER = TimerSpec('order', TimeDomain.WATERMARK)

  def __init__(self, *args, ordered: bool = True, **kwargs):
    super().__init__(*args, **kwargs)
    self._ordered = ordered

  def process(self, kv, pending=beam.DoFn.StateParam(PENDING), order=beam.DoFn.TimerParam(ORDER),
              state=beam.DoFn.StateParam(HISTORY), expire=beam.DoFn.TimerParam(EXPIRE)):
    """Windows wait for the watermark to pass their end and are folded in event-time order, as
    the batch walk folds them: windows of two days fired together (a watermark jump, a busy
    worker) must not be judged against a profile already holding their own day. Ordering needs
    the runner to hold the watermark at pending timers (the Fn API runners do); the
    BundleBasedDirectRunner does not (windows would pass scoring's grouping while parked
    here), so there (``ordered`` False) each window is folded as it arrives."""
    if self._ordered:
      end = kv[1][0].window_end
      pending.add(kv[1])
      order.set(Timestamp.of(end - EPSILON), dynamic_timer_tag=repr(end))
      return
    yield from self._fold(kv[0], [kv[1]], state, expire)

  @on_timer(ORDER)
  def fold(self, fired=beam.DoFn.TimestampParam, key=beam.DoFn.KeyParam,
           pending=beam.DoFn.StateParam(PENDING), state=beam.DoFn.StateParam(HISTORY),
           expire=beam.DoFn.TimerParam(EXPIRE)):
    """Folds every pending window due by now (none if an earlier timer folded them)."""
    due = _take_due(pending, float(fired))
    if due:
      yield from self._fold(key, due, state, expire)

  def _whole_window(self, item, firings: Dict):
    """(window, context) with the window's whole aggregate: this firing's and its earlier ones'
    (from ``firings``, which keeps it, and drops what no firing can come for any more)."""
    window, context = item
    key = (window.window_start, window.window_end)
    prior = firings.get(key)
    if prior is not None:
      window = window._replace(agg=copy.deepcopy(prior).merge(window.agg))
    firings[key] = window.agg
    oldest = max(end for _, end in firings) - self._refire_horizon
    for gone in [k for k in firings if k[1] < oldest]:
      del firings[gone]
    return window, context

  def _fold(self, identity: str, items, state, expire):
    """Folds (window, context) pairs, in the order given, into the identity's stored history."""
    kept, firings = state.read() or IdentityState(None, {})
    items = [self._whole_window(item, firings) for item in items]
    hist, out = self._walk(identity, kept, items)
    yield from out
    state.write(IdentityState(hist, firings))
    # First to drop the firings kept for late data (none can come a re-fire horizon after the
    # newest window); then, from there, at the retention. A day, not the horizon: each firing
    # of this timer is a bundle of the stage on Prism, and identities idle for longer than the
    # horizon are common: firing that often delays the findings behind them.
    expire.set(Timestamp.of(hist.last_active + max(self._refire_horizon, EXPIRY_GRACE)))

  @on_timer(EXPIRE)
  def expire(self, fired=beam.DoFn.TimestampParam, key=beam.DoFn.KeyParam, state=beam.DoFn.StateParam(HISTORY),
             expire=beam.DoFn.TimerParam(EXPIRE), pending=beam.DoFn.StateParam(PENDING)):
    """A day after the newest window, its firings are dropped (none can fire again); after
    ``retention`` (+ grace) without a window, the history becomes a departed
    record; after ``departed``, the state is cleared. (A window resets the timer, so this one is
    current.) Windows still waiting for their turn (a watermark jump fired this timer first) are
    folded instead, and the timer follows them."""
    waiting = _take_due(pending, math.inf)
    if waiting:
      yield from self._fold(key, waiting, state, expire)
      return
    kept, firings = state.read() or IdentityState(None, {})
    if (isinstance(kept, IdentityHistory) and kept.last_active is not None  # None: state from before it
        and float(fired) < (until := kept.last_active + self._retention + EXPIRY_GRACE)):
      if firings:
        state.write(IdentityState(kept, {}))
      expire.set(Timestamp.of(until))
      return
    departed = self._departure(kept)
    if departed is None:
      state.clear()
    else:
      state.write(IdentityState(departed, {}))
      expire.set(Timestamp.of(departed[1] + self._departed + EXPIRY_GRACE))

  def _departure(self, kept: Optional[Kept]) -> Optional[Tuple[float, float]]:
    """What the expiry timer leaves of ``kept``: of a history, (last seen, last active); of
    that departed record, nothing."""
    if isinstance(kept, IdentityHistory):
      self.expired.inc()
      return kept.last_seen(), kept.last_seen() if kept.last_active is None else kept.last_active
    if kept is not None:
      self.forgotten.inc()
    return None


class WalkHistoryFn(_HistoryFn):
  """Batch: (identity, all its (window, context)) -> WindowInContext, in event-time order;
  with ``grouped``, one (identity, [its WindowInContext]) instead, for the steps after it to take
  an identity's windows at once (scoring them in one batch, merging them into findings without
  a shuffle; ``window_context.windows_of``)."""

  def __init__(self, *args, grouped: bool = False, **kwargs):
    super().__init__(*args, **kwargs)
    self._grouped = grouped

  def process(self, kv):
    identity, items = kv
    out = self._walk(identity, None, sorted(items, key=_fold_order), stamped=not self._grouped)[1]
    if not self._grouped:
      yield from out
      return
    yield identity, [x for x in out if isinstance(x, WindowInContext)]
    yield from (x for x in out if not isinstance(x, WindowInContext))  # unregistered findings


class TrackHistory(beam.PTransform):
  """(IdentityWindow, context) -> WindowInContext (main) and unregistered-identity findings.

  ``grouped`` (bounded input): the input is (identity, [(window, context)]) per identity, as
  ``IdentityWindows(grouped=True)`` and ``EnrichWindows`` give it, and is walked without a
  shuffle of its own, and the ``windows`` output is one (identity, [WindowInContext]) per identity
  (``ScoreWindows(grouped=True)``; fleet notices and peers read either form)."""

  def __init__(self, model_dir: Optional[str], version: Optional[str] = None,
               unregistered: bool = True, period_seconds: int = 900,
               shared_handle: Optional[shared.Shared] = None,
               retention: float = HISTORY_RETENTION, departed: float = DEPARTED_RETENTION,
               ordered: bool = True, refire_horizon: Optional[float] = None, grouped: bool = False):
    super().__init__()
    self._refire_horizon = refire_horizon
    self._grouped = grouped  # bounded input already (identity, [(window, context)]) per identity
    self._ordered = ordered  # False on a runner that ignores timer holds (TrackHistoryFn)
    self._shared = shared_handle or shared.Shared()
    self._expiry = (retention, departed)
    self._period = period_seconds
    self._model_dir = model_dir
    self._version = version
    self._unregistered = unregistered

  def expand(self, enriched):
    if enriched.is_bounded and self._grouped:  # (identity, [(window, context)]): walked as is
      walked = enriched | 'WalkHistory' >> beam.ParDo(WalkHistoryFn(
          self._model_dir, self._version, self._unregistered, self._shared,
          *self._expiry, refire_horizon=self._refire_horizon, grouped=True)).with_output_types(
              IDENTITY_WINDOWS_IN_CONTEXT).with_outputs(UNREGISTERED, main='windows')
      return {'windows': walked.windows, UNREGISTERED: walked[UNREGISTERED]}
    # Typed so the shuffle encodes the window with IdentityWindowCoder, not Beam's pickle.
    keyed = enriched | 'KeyByIdentity' >> beam.Map(_by_identity).with_output_types(
        typing.Tuple[str, typing.Tuple[IdentityWindow, typing.Any]])
    if enriched.is_bounded:
      walked = (keyed
                | 'GroupByIdentity' >> beam.GroupByKey()
                | 'WalkHistory' >> beam.ParDo(WalkHistoryFn(
                    self._model_dir, self._version, self._unregistered, self._shared,
                    *self._expiry, refire_horizon=self._refire_horizon)).with_outputs(
                        UNREGISTERED, main='windows'))
      return {'windows': walked.windows, UNREGISTERED: walked[UNREGISTERED]}
    tracked = (keyed
               # State must be per identity, not per (identity, sliding window).
               | 'GlobalWindow' >> beam.WindowInto(beam.transforms.window.GlobalWindows())
               | 'History' >> beam.ParDo(TrackHistoryFn(
                   self._model_dir, self._version, self._unregistered, self._shared,
                   *self._expiry, refire_horizon=self._refire_horizon,
                   ordered=self._ordered)).with_output_types(WindowInContext).with_outputs(
                       UNREGISTERED, main='windows'))
    # Back into short event-time windows (each element's timestamp is its window's
    # end), so downstream batching flushes as the watermark passes, not at the end. A window's
    # later firing (late events) is stamped at its end too, behind the watermark, and a busy
    # Prism can let the watermark pass windows still on their way (timers of a split bundle,
    # apache/beam#35771): the windows allow a day beyond the re-fire horizon, or a runner that
    # drops late data at a stage's input would drop them before scoring. Nothing downstream
    # keeps more than a batch per window, so the longer lifetime costs next to nothing.
    horizon = REFIRE_HORIZON if self._refire_horizon is None else self._refire_horizon
    windows = tracked.windows | 'ByWindowEnd' >> beam.WindowInto(
        beam.transforms.window.FixedWindows(self._period),
        allowed_lateness=Duration(seconds=int(horizon) + DAY))
    return {'windows': windows, UNREGISTERED: tracked[UNREGISTERED]}
