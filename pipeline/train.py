"""`postauth train`: a batch Beam job from history files to a versioned model.

It runs the detection job's own parsing, windowing and feature code; the only
training-specific step is the walk through each identity's history in time
order, so each training window is featurised against the profile the identity
had *before* that day (what scoring will see live), never against itself.
"""
from __future__ import annotations

import datetime
import logging
import os
import time
import typing
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

from postauth.models import budget, registry
from postauth.models import report as training_report
from postauth.models.features import feature_vector
from postauth.models.fleet import FleetProfile, network_keys
from postauth.models.history import IdentityHistory
from postauth.models.model import SEVERITIES, DetectionModel, cohort_key, levels_from_medium
from postauth.models.train_config import TrainConfig
from postauth.models.profile import IdentityProfile, seen_key
from postauth.transforms.agent_join import AgentPrincipals, JoinAgentCalls
from postauth.transforms import rules
from postauth.transforms.judgment import judge
from postauth.pipeline.options import AgentJoinOptions, EventOptions, TrainOptions, WindowOptions
from postauth.transforms.inventory import ReadInventory, context_for
from postauth.transforms.parse import ParseFiles
from postauth.transforms.records import ReadLimits
from postauth.transforms.sinks import WriteJsonLines
from postauth.transforms.windowing import IdentityWindow, IdentityWindows

DAY = 86400
DEFAULT_PAGE_BUDGET = 5.0
PROFILES = 'profiles'
MEMBERS = 'members'
_log = logging.getLogger('postauth.train')


def _actions_used(windows: Iterable[IdentityWindow]) -> set:
  """The hashed actions and networks of an identity's windows: what the fleet table counts it with.

  Networks with the coarser prefixes they lie in (``network_keys``: private /16 and
  block, public /16), so scoring can tell a new /24 of a range the fleet calls from
  from an internet network no identity used (``PeerView.network_standing``).
  """
  used = set()
  networks = set()
  for w in windows:
    used.update(seen_key(a) for a in w.agg.actions)
    networks.update(w.agg.networks)
  used.update(network_keys(networks))
  return used


@beam.typehints.with_output_types(typing.Tuple[str, typing.Any])
class ActionsPerIdentity(beam.DoFn):
  """(identity, its windows) -> (identity_type, hashed actions and networks it used): one identity of the fleet table."""

  def process(self, kv, inventory):
    identity, windows = kv
    windows = list(windows)
    yield context_for(identity, windows[0].agg.identity_type, inventory)['identity_type'], _actions_used(windows)


class FleetTableFn(beam.CombineFn):
  """(identity_type, actions) per identity -> the FleetProfile of the whole history."""

  def create_accumulator(self) -> FleetProfile:
    return FleetProfile()

  def add_input(self, acc: FleetProfile, element) -> FleetProfile:
    return acc.add(*element)

  def merge_accumulators(self, accs) -> FleetProfile:
    accs = iter(accs)
    first = next(accs)
    for a in accs:
      first.merge(a)
    return first

  def extract_output(self, acc: FleetProfile) -> FleetProfile:
    return acc


@beam.typehints.with_output_types(typing.Tuple[str, typing.Any])
class WalkIdentityHistory(beam.DoFn):
  """(identity, its windows) -> (cohort, (HeldOutWindow, feature vector)) per trainable window, and its profile.

  The cohort is the finest one ("identity_type/team" from the inventory);
  ``DetectionModel.fit`` decides which cohorts get a model of their own.

  The same fold as live scoring (``models.history.IdentityHistory``): windows of
  day D are featurised against the profile of days < D, which then absorbs day
  D, and against the fleet's use of actions without this identity's own. Windows
  with fewer than ``warmup_days`` days of history behind them only build the
  profile, exactly as the live scorer skips them. Each vector carries whether a rule
  would page on its window, for the page-budget calibration. GroupByKey is right
  here (not a CombineFn) because the walk needs order.
  """

  def __init__(self, warmup_days: int):
    self._warmup = warmup_days
    self._rules = rules.RuleConfig()
    self.vectors = Metrics.counter('postauth', 'training_windows')

  def process(self, kv, inventory, fleet):
    identity, windows = kv
    windows: List[IdentityWindow] = sorted(windows, key=lambda w: (w.window_end, w.window_start))
    context = context_for(identity, windows[0].agg.identity_type, inventory)
    cohort = cohort_key(context['identity_type'], context.get('team', ''))
    peers = fleet.view(context['identity_type'], _actions_used(windows))
    history = IdentityHistory()
    for w in windows:
      before = history.observe(w.agg, w.window_end)
      if before.windows and history.days_of_history(w.window_end) >= self._warmup:
        self.vectors.inc()
        fired = rules.evaluate(w, context, before, self._rules, peers)
        verdict = judge(w, context, before, peers, None, fired)  # what scoring pages on, as it judges
        yield cohort, (budget.HeldOutWindow(identity, w.window_start, w.window_end, verdict.pages(),
                                            verdict.model_may_page()),
                       feature_vector(w.agg, before, w.window_end, peers))
    yield beam.pvalue.TaggedOutput(PROFILES, (identity, history.final_profile()))
    yield beam.pvalue.TaggedOutput(MEMBERS, (cohort, 1))


_SAVED = Metrics.counter('postauth', 'model_versions_saved')
_VECTOR, _PROFILE, _MEMBERS, _FLEET, _BOUNDS = 'vector', 'profile', 'members', 'fleet', 'bounds'


def _unpack_fit_inputs(tagged: Iterable[Tuple[str, Any]]):
  """(kind, value) items -> (bounds, {cohort: [(HeldOutWindow, vector)]}, {identity: profile},
  {cohort: identities}, fleet table)."""
  cohorts: Dict[str, List] = defaultdict(list)
  profiles: Dict[str, IdentityProfile] = {}
  members: Dict[str, int] = {}
  bounds, fleet = None, None
  for kind, value in tagged:
    if kind == _VECTOR:
      cohorts[value[0]].append(value[1])
    elif kind == _PROFILE:
      profiles[value[0]] = value[1]
    elif kind == _MEMBERS:
      members[value[0]] = value[1]
    elif kind == _FLEET:
      fleet = value
    else:
      bounds = value
  return bounds, dict(cohorts), profiles, members, fleet


class _FitAndSave(beam.DoFn):
  """Fits the cohort forests, writes the version with its training report, promotes it if asked."""

  def __init__(self, model_dir: str, config: TrainConfig, promote: bool, started: float,
               page_budget: float = DEFAULT_PAGE_BUDGET):
    self._page_budget = page_budget
    self._model_dir = model_dir
    self._config = config
    self._promote = promote
    self._started = started

  def process(self, gathered: Tuple[str, Iterable[Tuple[str, Any]]]):
    """``gathered``: ('', every input tagged by kind) from ``TrainModel``'s one-key gather."""
    bounds, cohorts, profiles, members, fleet = _unpack_fit_inputs(gathered[1])
    yield from self._fit(bounds, cohorts, profiles, members, fleet)

  def _fit(self, bounds: List[float], cohorts: Dict[str, List], profiles: Dict[str, IdentityProfile],
           members: Dict[str, int], fleet: FleetProfile):
    t0 = time.time()
    cohorts = {c: sorted(v, key=lambda wx: (wx[0].window_end, wx[0].identity, wx[0].window_start))
               for c, v in cohorts.items()}
    features = {c: np.vstack([x for _, x in v]) for c, v in cohorts.items()}
    if not features:
      raise ValueError('no training windows: --events matched no events, or none fall in the '
                       'training period after the warm-up days')
    _log.info('fitting: %d training windows of %d identities in %d cohorts, %s .. %s '
              '(%.1fs since the job started)', sum(len(x) for x in features.values()),
              len(profiles), len(features), _iso(bounds[0]), _iso(bounds[1]), t0 - self._started)
    window = (bounds[0], bounds[1])
    default_medium = dict(SEVERITIES)['medium']
    medium, calibration = budget.calibrate(
        cohorts, self._config, self._page_budget, lambda x, config: DetectionModel.fit(x, {}, config, window), default_medium)
    _log.info('page budget %.1f per 1,000 identity-days: medium at %.2f (%s)', self._page_budget,
              medium, {k: v for k, v in calibration.items() if k != 'per_cohort'})
    model = DetectionModel.fit(features, profiles, self._config, window, fleet=fleet,
                               thresholds=levels_from_medium(medium), calibration_report=calibration)
    t1 = time.time()
    report = training_report.build(model, features, members, {'fit_seconds': t1 - t0})
    png = training_report.plot_png(report)
    t2 = time.time()
    # Parse, window and walk ran before the fit: the time from building the job to the fit.
    report['timings'].update(report_seconds=t2 - t1, seconds_before_fit=t0 - self._started)
    path = model.save(self._model_dir, promote=False,
                      extra_files=training_report.files(report, png=png))
    if self._promote:
      registry.promote(self._model_dir, model.version, reason='postauth train')
    _log.info('saved model %s (%d cohort models) with its training report to %s in %.1fs; %s',
              model.version, len(model.forests), path, time.time() - t0,
              'promoted' if self._promote else 'not promoted')
    yield model.version


def _iso(t: float) -> str:
  try:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
  except (OverflowError, ValueError, OSError):
    return str(t)


class _Bounds(beam.CombineFn):
  def create_accumulator(self):
    return [float('inf'), float('-inf')]

  def add_input(self, acc, w):
    return [min(acc[0], w.window_start), max(acc[1], w.window_end)]

  def merge_accumulators(self, accs):
    accs = list(accs)
    return [min(a[0] for a in accs), max(a[1] for a in accs)]

  def extract_output(self, acc):
    return acc


class TrainModel(beam.PTransform):
  """IdentityWindows in the global window -> the name of the saved model version (one element).

  The part of training after windowing, shared by `postauth train` and `postauth retrain`.
  """

  def __init__(self, inventory: beam.PCollection, model_dir: str, config: TrainConfig,
               promote: bool, page_budget: float = DEFAULT_PAGE_BUDGET):
    super().__init__()
    self._page_budget = page_budget
    self._inventory = inventory
    self._model_dir = model_dir
    self._config = config
    self._promote = promote

  def expand(self, windows):
    by_identity = (windows
                   # Typed so the shuffle encodes windows with IdentityWindowCoder, not Beam's pickle.
                   | 'KeyByIdentity' >> beam.Map(lambda w: (w.identity, w)).with_output_types(
                       typing.Tuple[str, IdentityWindow])
                   | 'GroupByIdentity' >> beam.GroupByKey())
    fleet = (by_identity
             | 'ActionsPerIdentity' >> beam.ParDo(ActionsPerIdentity(), beam.pvalue.AsDict(self._inventory))
             | 'FleetTable' >> beam.CombineGlobally(FleetTableFn()))
    walked = (by_identity
              | 'WalkHistory' >> beam.ParDo(WalkIdentityHistory(self._config.warmup_days),
                                            beam.pvalue.AsDict(self._inventory),
                                            beam.pvalue.AsSingleton(fleet)).with_outputs(
                                                PROFILES, MEMBERS, main='vectors'))
    members = walked[MEMBERS] | 'IdentitiesPerCohort' >> beam.CombinePerKey(sum)
    bounds = windows | 'TrainingWindow' >> beam.CombineGlobally(_Bounds())
    # The fit's inputs as one element under one key, not as side inputs: on Prism a stage that
    # reads side inputs keeps the runner's scheduler spinning a core while its bundle runs,
    # and the fit is the job's longest bundle. Memory is the same: the fit holds them all.
    parts = [walked.vectors | 'TagVectors' >> beam.Map(lambda kv: ('', (_VECTOR, kv))),
             walked[PROFILES] | 'TagProfiles' >> beam.Map(lambda kv: ('', (_PROFILE, kv))),
             members | 'TagMembers' >> beam.Map(lambda kv: ('', (_MEMBERS, kv))),
             fleet | 'TagFleet' >> beam.Map(lambda f: ('', (_FLEET, f))),
             bounds | 'TagBounds' >> beam.Map(lambda b: ('', (_BOUNDS, b)))]
    version = (parts
               | 'FitInputs' >> beam.Flatten()
               | 'GatherForFit' >> beam.GroupByKey()
               | 'FitAndSave' >> beam.ParDo(_FitAndSave(self._model_dir, self._config, self._promote,
                                                        time.time(), self._page_budget)))
    # Another stage reads the version, so the fit's stage has a data output: on Prism a stage
    # without one keeps the runner spinning a core for as long as its bundle runs.
    _ = (version | 'AfterFit' >> beam.Reshuffle()
         | 'CountVersions' >> beam.Map(lambda v: _SAVED.inc()))
    return version


def build_training(p: beam.Pipeline, options: PipelineOptions, inventory_path: str,
                   model_dir: str) -> Dict[str, beam.PCollection]:
  ev, win, tr = (options.view_as(EventOptions), options.view_as(WindowOptions),
                 options.view_as(TrainOptions))
  config = TrainConfig.from_file(tr.train_config)
  parsed = p | 'ParseHistory' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files,
                                            ReadLimits.from_options(options))
  join = options.view_as(AgentJoinOptions)
  windows = (parsed.events
             | 'JoinAgentCalls' >> JoinAgentCalls(AgentPrincipals.from_inventory(inventory_path),
                                                  join.join_clock_skew, join.join_window)
             | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period, evidence=False)
             | 'GlobalWindow' >> beam.WindowInto(window.GlobalWindows()))
  inventory = p | 'ReadInventory' >> ReadInventory(inventory_path)
  if tr.page_budget <= 0:
    raise ValueError('--page-budget must be > 0')
  version = windows | 'Train' >> TrainModel(inventory, model_dir, config, tr.promote, tr.page_budget)
  dead_path = ev.dead_letters or os.path.join(model_dir, 'train-dead-letter.jsonl')
  parsed.dead_letter | 'WriteDeadLetters' >> WriteJsonLines(dead_path, streaming=False)
  return {'version': version, 'events': parsed.events, 'dead_letter': parsed.dead_letter}
