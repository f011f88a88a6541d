"""Score identity-windows in batches with the detection model, loaded once per worker.

Bounded input is batched with ``BatchElements``. Unbounded input is batched by a
``GroupByKey`` on (cohort, shard) per window period: in streaming, a window's
results leave the GroupByKey one key (identity) per bundle and BatchElements
never batches across bundles, so every model call would score a single window;
keyed batching gathers the windows of all identities of a cohort that close
together (same end, so same fixed period window) into one vectorised call, while
the shard spreads the work over workers: a cohort gets one shard per
``IDENTITIES_PER_SHARD`` identities the model knows of its type (``shards_for``), so a
large cohort is no hot key and a scoring call stays about that many windows. A GroupByKey rather than
``GroupIntoBatches``: the latter parks windows in state behind timers, and the
Python DirectRunner does not hold the watermark for pending timers, so the
findings merge could pass a window still parked there and split one finding in
two (seen in a paced Pub/Sub replay: 11 findings for the 8 of batch; 8 of 8 with
the GroupByKey). A GroupByKey holds the watermark on every runner.
"""
from __future__ import annotations

import functools
import logging
import typing
import zlib
from typing import Dict, Iterator, List, Optional, Set, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration
from apache_beam.utils import shared

EPSILON = 1e-6

import numpy as np

from postauth.models import registry
from postauth.models.artifact import ArtifactError
from postauth.models.features import FEATURE_NAMES
from postauth.domain import evidence
from postauth.transforms import rules
from postauth.transforms.packed import Packed
from postauth.transforms.timer_walk import timer_ms
from postauth.transforms.window_context import WindowInContext
from postauth.transforms.judgment import judge
from postauth.transforms.model_cache import acquire_model
from postauth.transforms.rules import RuleConfig
from postauth.transforms.updates import PeriodicReads, PolledRead
from postauth.transforms.updates import newest as newest_read


class WatchModelPointer(beam.PTransform):
  """Streaming: the model directory's LATEST pointer, read every ``refresh_seconds``.

  Beam's model-update side input pattern (``RunInference(model_metadata_pcoll=...)``)
  in windowed form, see transforms/updates.py: a version promoted by
  ``postauth retrain`` or ``rollback`` is scored with from the next windows on.
  """

  def __init__(self, model_dir: str, refresh_seconds: float, stop_after: Optional[float] = None):
    super().__init__()
    self._reads = PeriodicReads(functools.partial(registry.current, model_dir), refresh_seconds,
                                'model_pointer', stop_after)

  def expand(self, pbegin):
    return pbegin | 'ReadLatest' >> self._reads

  def side_input(self, reads: beam.PCollection):
    return self._reads.as_side_input(reads)

  @staticmethod
  def polled(model_dir: str, refresh_seconds: float) -> PolledRead:
    """The same pointer read, polled by ``ScoreWindows`` itself (runners where the side input fails)."""
    return PolledRead(functools.partial(registry.current, model_dir), refresh_seconds, 'model_pointer')


IDENTITIES_PER_SHARD = 256  # identities of a cohort scored per key and period, about


def shards_for(identities: int, per_shard: int = IDENTITIES_PER_SHARD) -> int:
  """Scoring shards of a cohort of ``identities``: at least one, one more per ``per_shard``."""
  return max(1, -(-identities // per_shard))


class KeyByCohortShard(beam.DoFn):
  """WindowInContext -> ((identity type, shard), window), the shard a hash of the identity.

  A cohort's shard count grows with its size in the model's fleet (identities per type in
  the training history); a type the model does not know gets one shard. ``shards``: a fixed
  count for every cohort instead.
  """

  def __init__(self, model_dir: str, version: Optional[str] = None,
               shared_handle: Optional[shared.Shared] = None, shards: Optional[int] = None,
               per_shard: int = IDENTITIES_PER_SHARD):
    self._model_dir, self._version = model_dir, version
    self._shared = shared_handle or shared.Shared()
    self._fixed, self._per_shard = shards, per_shard

  def setup(self):
    self._shards: Dict[str, int] = {}
    if self._fixed is None:
      model = acquire_model(self._shared, self._model_dir, self._version)
      self._shards = {t: shards_for(n, self._per_shard) for t, n in model.fleet.identities.items()}

  def process(self, element):
    kind = element.context.get('identity_type', '')
    n = self._fixed or self._shards.get(kind, 1)
    yield (kind, zlib.crc32(element.window.identity.encode()) % n), element


def _tail_probabilities(model, x: np.ndarray, cohorts: List, rows: np.ndarray) -> Dict[int, np.ndarray]:
  """Row -> its per-feature tail probabilities against its cohort's training windows (what
  ``explain`` ranks), for a batch's flagged rows: one search per feature and cohort, not per row."""
  tails: Dict[int, np.ndarray] = {}
  for cohort, idx in model.rows_by_cohort([cohorts[i] for i in rows]):
    at = rows[idx]
    tails.update(zip(at.tolist(), model.distributions[cohort].tail_probability(x[at])))
  return tails


class ScoreBatchFn(beam.DoFn):
  """A batch of WindowInContext -> scored-window dicts for windows the model or a rule flags.

  The model scores a window only once its identity has ``warmup_days`` of
  history (as in training); rules judge every window. With a model-pointer side
  input (streaming), a newly promoted version replaces the loaded one before
  the batch is scored; a version that fails its manifest check is refused,
  counted and logged, and the current model stays in use.
  """

  def __init__(self, model_dir: str, threshold: float, version: Optional[str] = None,
               rules: Optional[RuleConfig] = None, shared_handle: Optional[shared.Shared] = None,
               pointer_poll: Optional[PolledRead] = None):
    self._model_dir = model_dir
    self._poll = pointer_poll
    self._version = version
    self._threshold = threshold
    self._rules = rules or RuleConfig()
    self._shared = shared_handle or shared.Shared()
    self.scored = Metrics.counter('postauth', 'windows_scored')
    self.warming = Metrics.counter('postauth', 'windows_warming_up')
    self.anomalous = Metrics.counter('postauth', 'windows_anomalous')
    self.ruled = Metrics.counter('postauth', 'windows_rule_fired')
    self.paging = Metrics.counter('postauth', 'windows_paging')
    self.batch_size = Metrics.distribution('postauth', 'score_batch_size')
    self.swaps = Metrics.counter('postauth', 'model_swaps')
    self.swap_errors = Metrics.counter('postauth', 'model_swap_errors')

  def setup(self):
    self._model = acquire_model(self._shared, self._model_dir, self._version)
    self._refused: Set[str] = set()

  def _follow_pointer(self, pointer_reads) -> None:
    read = newest_read(pointer_reads)
    if read is None or read[1] == self._model.version or read[1] in self._refused:
      return
    try:
      model = acquire_model(self._shared, self._model_dir, read[1])
    except ArtifactError as e:
      self._refused.add(read[1])
      self.swap_errors.inc()
      logging.error('model %s not loaded, keeping %s: %s', read[1], self._model.version, e)
      return
    logging.info('model swapped: %s -> %s', self._model.version, model.version)
    self.swaps.inc()
    self._model = model

  def process(self, batch: List[WindowInContext], pointer_reads=None):
    for item, scored in self._score(batch, pointer_reads):
      yield TimestampedValue(scored, item.window.window_end - EPSILON)

  def _score(self, batch: List[WindowInContext], pointer_reads) -> Iterator[Tuple[WindowInContext, Dict]]:
    """(window in context, its scored-window dict) for each window of ``batch`` that the model
    or a rule flags, or that carries evidence, in batch order."""
    if self._poll is not None:
      read = self._poll.poll()
      if read is not None:
        self._follow_pointer([read])
    if pointer_reads is not None:
      self._follow_pointer(pointer_reads)
    model = self._model
    warmup = int(model.manifest.get('hyperparameters', {}).get('warmup_days', 1))
    ready = [i for i, item in enumerate(batch) if item.history_days >= warmup]
    self.warming.inc(len(batch) - len(ready))
    scores = np.zeros(len(batch))
    components = np.zeros((len(batch), 2))
    x = np.zeros((len(batch), len(FEATURE_NAMES)))
    cohorts = [item.context for item in batch]  # the model picks identity_type/team or a fallback
    if ready:
      s, c, f = model.score([batch[i].window for i in ready], [cohorts[i] for i in ready],
                            [batch[i].history for i in ready])
      scores[ready], components[ready], x[ready] = s, c, f
      self.scored.inc(len(ready))
      self.batch_size.update(len(ready))
    tails = _tail_probabilities(model, x, cohorts, np.flatnonzero(scores >= self._threshold))
    for i, item in enumerate(batch):
      w, ctx = item.window, item.context
      score = float(scores[i])
      flagged = score >= self._threshold
      peers = model.peers(w.identity, ctx.get('identity_type', ''))
      fired = rules.evaluate(w, ctx, item.history, self._rules, peers)
      verdict = judge(w, ctx, item.history, peers,
                      (model.severity_of(score) or 'low') if flagged else None, fired, bare_if_quiet=True)
      if not flagged and not fired and not verdict.evidence:
        continue
      if flagged:
        self.anomalous.inc()
      if fired:
        self.ruled.inc()
      if verdict.pages():
        self.paging.inc()
      named = {r['rule'] for r in fired}
      agg = w.agg
      yield item, {
          'identity': w.identity,
          'window_start': w.window_start,
          'window_end': w.window_end,
          'score': round(score, 3),
          'score_forest': round(float(components[i, 0]), 3),
          'score_rarity': round(float(components[i, 1]), 3),
          'model_flagged': flagged,
          'severity': verdict.severity,
          'judgment': verdict.to_dict(),
          'model_version': model.version,
          'cohort': model.cohort_for(cohorts[i]),
          'reasons': model.explain(w, cohorts[i], x[i], profile=item.history, tail=tails[i]) if flagged else [],
          'rules': fired + [_evidence_reason(e) for e in verdict.evidence if e['kind'] not in named],
          'actions': dict(sorted(agg.actions.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
          'resources': dict(sorted(agg.resources.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
          'panes': {str(k): v for k, v in agg.panes.items()},
          'event_count': agg.count,
          'evidence': evidence.for_window(agg, item.history),
          'context': ctx,
      }


class ScoreIdentitiesFn(ScoreBatchFn):
  """Bounded, grouped: a batch of (identity, [its WindowInContext]) -> (identity, [(timer ms,
  scored-window dict)]) per identity with any, as ``MergeOverlappingWindows(grouped=True)`` walks
  them: an identity's windows are scored and merged where they were walked, with no shuffle
  between (the findings walk orders them itself)."""

  def process(self, identities: List[Tuple[str, List[WindowInContext]]], pointer_reads=None):
    scored: Dict[str, List[Tuple[int, Dict]]] = {}
    for item, out in self._score([item for _, items in identities for item in items], pointer_reads):
      scored.setdefault(item.window.identity, []).append((timer_ms(item.window.window_end - EPSILON), out))
    yield from scored.items()


# (identity, [(timer ms, scored-window dict)]): typed so Beam sizes the dicts by PackedCoder's estimate.
STAMPED_BY_IDENTITY = typing.Tuple[str, typing.List[typing.Tuple[int, Packed]]]


def _window_count(identity_windows: Tuple[str, List[WindowInContext]]) -> int:
  return len(identity_windows[1])


def _batches(kv, size: int):
  """A grouping's windows in lists of at most ``size``. A function bound by keyword, not a
  closure nor Map's extra arguments: this module may run compiled (setup.py COMPILED), and Beam
  calls a compiled function with the element alone."""
  windows = list(kv[1])
  for i in range(0, len(windows), size):
    yield windows[i:i + size]


def _evidence_reason(e):
  """A judgment's evidence as a window reason (``actions`` only when it names some, as rules do)."""
  reason = {'rule': e['kind'], 'severity': e['severity'], 'detail': e['detail']}
  if e['actions']:
    reason['actions'] = list(e['actions'])
  return reason


DELAYED_WINDOWS = 86400  # seconds of extra lateness the scoring grouping allows (see expand)


class ScoreWindows(beam.PTransform):
  """WindowInContext -> scored-window dicts the model (above the threshold) or a rule flags.

  ``grouped`` (bounded input): (identity, [WindowInContext]) per identity in, batched by their
  window count, and (identity, [(timer ms, scored-window dict)]) out (``ScoreIdentitiesFn``)."""

  def __init__(self, model_dir: str, threshold: float, version: Optional[str] = None,
               max_batch_size: int = 4096, shards: Optional[int] = None, window_period: int = 900,
               allowed_lateness: int = 0, rules: Optional[RuleConfig] = None,
               shared_handle: Optional[shared.Shared] = None, model_updates=None,
               pointer_poll: Optional[PolledRead] = None, grouped: bool = False):
    super().__init__()
    fn_args = (model_dir, threshold, version, rules, shared_handle, pointer_poll)
    self._fn = (ScoreIdentitiesFn if grouped else ScoreBatchFn)(*fn_args)
    self._grouped = grouped
    self._key = KeyByCohortShard(model_dir, version, shared_handle, shards)
    self._updates = [] if model_updates is None else [model_updates]
    self._max = max_batch_size
    self._period = window_period
    self._lateness = allowed_lateness

  def expand(self, enriched):
    # Bounded: batches of a fixed size. Beam's adaptive sizing fits a regression of batch times
    # after every batch (and starts at single identities); a window's score does not depend on
    # its batch, and a vectorised call costs about the same per window from a few hundred on.
    if self._grouped:
      if not enriched.is_bounded:
        raise ValueError('grouped scoring is for bounded input')
      return (enriched
              | 'BatchIdentities' >> beam.BatchElements(min_batch_size=self._max, max_batch_size=self._max,
                                                         element_size_fn=_window_count)
              | 'ScoreIdentities' >> beam.ParDo(self._fn, *self._updates).with_output_types(STAMPED_BY_IDENTITY))
    if enriched.is_bounded:
      return (enriched
              | 'BatchWindows' >> beam.BatchElements(min_batch_size=self._max, max_batch_size=self._max)
              | 'ScoreBatch' >> beam.ParDo(self._fn, *self._updates))
    late = {}
    if self._lateness > 0:  # a late, re-fired window is scored again, alone (discarding)
      # A day beyond the windows' own lateness: a busy Prism can let the watermark pass windows
      # still on their way here (timers of a split bundle, apache/beam#35771), and this
      # grouping would drop them. Discarding panes keep nothing once fired.
      late = dict(trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                  allowed_lateness=Duration(seconds=self._lateness + DELAYED_WINDOWS))
    # Windows are stamped at their end: those closing together share one fixed period window.
    return (enriched
            | 'KeyByCohortShard' >> beam.ParDo(self._key).with_output_types(
                typing.Tuple[typing.Tuple[str, int], WindowInContext])
            | 'ClosingTogether' >> beam.WindowInto(
                window.FixedWindows(self._period),
                accumulation_mode=trigger.AccumulationMode.DISCARDING, **late)
            | 'BatchPerCohort' >> beam.GroupByKey()
            | 'Batches' >> beam.FlatMap(functools.partial(_batches, size=self._max))
            | 'ScoreBatch' >> beam.ParDo(self._fn, *self._updates))
