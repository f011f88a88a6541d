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
import typing
from typing import Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

from models.features import feature_vector
from models.model import DetectionModel, TrainConfig
from models.history import IdentityHistory
from models.profile import IdentityProfile
from pipeline.options import EventOptions, TrainOptions, WindowOptions
from transforms.inventory import ReadInventory, context_for
from transforms.parse import ParseFiles
from transforms.sinks import WriteJsonLines
from transforms.windowing import IdentityWindow, IdentityWindows

DAY = 86400
PROFILES = 'profiles'


@beam.typehints.with_output_types(typing.Tuple[str, typing.Any])
class WalkIdentityHistory(beam.DoFn):
  """(identity, its windows) -> (cohort, feature vector) per trainable window, and its profile.

  The same fold as live scoring (``models.history.IdentityHistory``): windows of
  day D are featurised against the profile of days < D, which then absorbs day
  D. Windows with fewer than ``warmup_days`` days of history behind them only
  build the profile, exactly as the live scorer skips them. GroupByKey is right
  here (not a CombineFn) because the walk needs order.
  """

  def __init__(self, warmup_days: int):
    self._warmup = warmup_days
    self.vectors = Metrics.counter('postauth', 'training_windows')

  def process(self, kv, inventory):
    identity, windows = kv
    windows: List[IdentityWindow] = sorted(windows, key=lambda w: (w.window_end, w.window_start))
    cohort = context_for(identity, windows[0].agg.identity_type, inventory)['identity_type']
    history = IdentityHistory()
    for w in windows:
      before = history.observe(w.agg, w.window_end)
      if before.windows and history.days_of_history(w.window_end) >= self._warmup:
        self.vectors.inc()
        yield cohort, feature_vector(w.agg, before, w.window_end)
    yield beam.pvalue.TaggedOutput(PROFILES, (identity, history.final_profile()))


class _FitAndSave(beam.DoFn):
  def __init__(self, model_dir: str, config: TrainConfig, promote: bool):
    self._model_dir = model_dir
    self._config = config
    self._promote = promote

  def process(self, _, cohorts: Dict[str, List[np.ndarray]], profiles: Dict[str, IdentityProfile],
              bounds: List[float]):
    features = {c: np.vstack(v) for c, v in cohorts.items()}
    model = DetectionModel.fit(features, profiles, self._config, (bounds[0], bounds[1]))
    path = model.save(self._model_dir, promote=self._promote)
    logging.info('saved model %s to %s', model.version, path)
    yield model.version


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


def build_training(p: beam.Pipeline, options: PipelineOptions, inventory_path: str,
                   model_dir: str) -> Dict[str, beam.PCollection]:
  ev, win, tr = (options.view_as(EventOptions), options.view_as(WindowOptions),
                 options.view_as(TrainOptions))
  config = TrainConfig.from_file(tr.train_config)
  parsed = p | 'ParseHistory' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files)
  windows = (parsed.events
             | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period)
             | 'GlobalWindow' >> beam.WindowInto(window.GlobalWindows()))
  inventory = p | 'ReadInventory' >> ReadInventory(inventory_path)
  walked = (windows
            | 'KeyByIdentity' >> beam.Map(lambda w: (w.identity, w))
            | 'GroupByIdentity' >> beam.GroupByKey()
            | 'WalkHistory' >> beam.ParDo(WalkIdentityHistory(config.warmup_days),
                                          beam.pvalue.AsDict(inventory)).with_outputs(
                                              PROFILES, main='vectors'))
  cohorts = walked.vectors | 'GroupByCohort' >> beam.GroupByKey()
  bounds = windows | 'TrainingWindow' >> beam.CombineGlobally(_Bounds())
  version = (p
             | 'FitOnce' >> beam.Create([None])
             | 'FitAndSave' >> beam.ParDo(
                 _FitAndSave(model_dir, config, tr.promote),
                 beam.pvalue.AsDict(cohorts), beam.pvalue.AsDict(walked[PROFILES]),
                 beam.pvalue.AsSingleton(bounds)))
  dead_path = ev.dead_letters or os.path.join(model_dir, 'train-dead-letter.jsonl')
  parsed.dead_letter | 'WriteDeadLetters' >> WriteJsonLines(dead_path, streaming=False)
  return {'version': version, 'events': parsed.events, 'dead_letter': parsed.dead_letter}
