"""Every postauth flag, as PipelineOptions subclasses (so Dataflow templates and
``--help`` see them), plus validation that fails before a job is submitted.

The flags the transforms read live in ``transforms/options.py`` (a transform never imports
``pipeline/``) and are re-exported here; the job-only options are defined here.
"""
from __future__ import annotations

import argparse
import difflib
import logging
from typing import Dict, List

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from postauth.transforms.options import (AgentJoinOptions, CommandParser, DetectOptions, EventOptions, OptionsError,
                                         PubSubSourceOptions, SinkOptions, WatchOptions, WindowOptions)

__all__ = ['ALL_OPTIONS', 'AgentJoinOptions', 'CommandParser', 'DetectOptions', 'EventOptions', 'JobOptions',
           'OptionsError', 'PubSubSourceOptions', 'RetrainOptions', 'SinkOptions', 'TrainOptions', 'WatchOptions',
           'WindowOptions', 'disabled_rules', 'option_actions', 'refuse_bad_arguments', 'validate_limits', 'validate_watch',
           'validate_window']


class JobOptions(PipelineOptions):
  """A job's options, whose view of each options class is made once.

  Beam asks a pipeline's options for views while it builds and launches a job (at every
  transform applied, and at every type check: ``TypeOptions``), and every ``view_as`` parses
  the command line again with the class's parser: ~370 views and ~0.1 CPU s for the
  detection job. A view holds no values of its own (all views share the options'
  ``_all_options``, and writes go there), so the first view of a class is what any later one
  would be. The views are never pickled or copied with the options (``beam.Pipeline``
  deep-copies them): a copy makes its own.
  """

  def view_as(self, cls):
    views = self.__dict__.get('_views')
    if views is None:
      views = {}
      object.__setattr__(self, '_views', views)  # PipelineOptions.__setattr__ takes flags only
    view = views.get(cls)
    if view is None:
      view = views[cls] = super().view_as(cls)
    return view

  def __getstate__(self):
    state = super().__getstate__()  # may be the instance's own __dict__: never changed here
    if '_views' in state:
      state = {k: v for k, v in state.items() if k != '_views'}
    return state


class TrainOptions(PipelineOptions):
  """The training job."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--train-config', dest='train_config', default=None,
                        help='JSON file of hyperparameters (see models.train_config.TrainConfig).')
    parser.add_argument('--no-promote', dest='promote', action='store_false', default=True,
                        help='Write the new version without pointing LATEST at it.')
    parser.add_argument('--page-budget', dest='page_budget', type=float, default=5.0,
                        help='Pages (findings at medium or above) per 1,000 identity-days the severity '
                             'levels are calibrated to allow on held-back days (default 5).')


class RetrainOptions(PipelineOptions):
  """`postauth retrain`: train a candidate, compare it with the live model, promote if not worse."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--days', dest='days', type=int, default=7,
                        help='Days of history to train the candidate on, ending where the '
                             'held-back slice starts (default 7).')
    parser.add_argument('--holdout-days', dest='holdout_days', type=int, default=1,
                        help='Most recent days held back from training to compare the candidate '
                             'with the current model (default 1).')
    parser.add_argument('--keep', dest='keep', type=int, default=5,
                        help='Versions to keep after retraining; older ones are deleted, never the '
                             'promoted one or its rollback target (default 5).')
    parser.add_argument('--labels-file', dest='labels_file', default=None,
                        help='JSON list of labelled cases {"identity", "start", "end"} (ISO-8601 or '
                             'epoch seconds); `postauth retrain --labels FILE` is the same flag '
                             '(Beam\'s Dataflow options already own --labels for job labels).')
    parser.add_argument('--force', dest='force', action='store_true', default=False,
                        help='Promote the candidate even if the gate refuses it (the comparison '
                             'is still written, marked forced).')
    parser.add_argument('--max-alert-increase', dest='max_alert_increase', type=float, default=0.10,
                        help='Gate: the candidate\'s alert rate on clean held-back windows may exceed '
                             'the current model\'s by this fraction (default 0.10) ...')
    parser.add_argument('--alert-slack', dest='alert_slack', type=float, default=0.5,
                        help='... plus this many alerts per 1,000 identity-windows (default 0.5).')


class _RefusingParser(CommandParser, _BeamArgumentParser):
  """Beam's argument parser, with ``CommandParser``'s one-line errors."""


# Runners that run the job in this process or beside it: nothing reads an option no class
# defines. Dataflow, Flink, Spark and the PortableRunner hand such options to their service or
# job server (Flink's --checkpointing_interval, say), so there only postauth's own misspellings
# are refused.
LOCAL_RUNNERS = ('directrunner', 'switchingdirectrunner', 'bundlebaseddirectrunner', 'fnapirunner', 'prismrunner')


def refuse_bad_arguments(argv: List[str]) -> None:
  """Refuses a value a flag cannot take, a stray word, and an argument no options class defines
  (postauth's, Beam's and its runners': Dataflow, Flink, Prism) where nothing would read it: on
  a local runner any, on a runner that hands unknown options on only those spelt as postauth's
  (``--kebab-case``) or within a letter or two of one of its flags. Beam itself logs and drops
  an unknown flag, so a typo (``--treshold 5``) would run the job on the default, and it prints
  its whole usage for a bad value."""
  parser = _RefusingParser(allow_abbrev=False)
  for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():  # as Beam parses them
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  known, unknown = parser.parse_known_args(argv)
  runner = str(getattr(known, 'runner', None) or 'DirectRunner')
  local = runner.lower() in LOCAL_RUNNERS or runner.lower() + 'runner' in LOCAL_RUNNERS
  ours = [f for a in option_actions().values() for f in a.option_strings]
  for i, arg in enumerate(unknown):
    name = arg.split('=', 1)[0]
    if not name.startswith('-'):
      if i and unknown[i - 1].startswith('--') and '=' not in unknown[i - 1]:
        continue  # the value of the unknown flag before it
      raise OptionsError(f'unknown argument {name}')
    near = difflib.get_close_matches(name, ours, n=1, cutoff=0.8)
    if local or '-' in name.lstrip('-') or near:
      near = near or difflib.get_close_matches(
          name, [f for a in parser._actions for f in a.option_strings], n=1)  # pylint: disable=protected-access
      raise OptionsError(f'unknown argument {name}' + (f' (did you mean {near[0]}?)' if near else ''))
    logging.getLogger('postauth').info('%s is no Python option: passed to the %s as it is', name, runner)


def option_actions() -> Dict[str, argparse.Action]:
  """dest -> argparse action of every postauth option (computed from ALL_OPTIONS)."""
  parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
  for cls in ALL_OPTIONS:
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return {a.dest: a for a in parser._actions if a.option_strings}  # pylint: disable=protected-access


def validate_window(options: PipelineOptions) -> None:
  w = options.view_as(WindowOptions)
  if w.window_size <= 0 or w.window_period <= 0:
    raise OptionsError('--window-size and --window-period must be positive')
  if w.window_size % w.window_period:
    raise OptionsError(f'--window-period ({w.window_period}) must divide --window-size ({w.window_size})')
  if w.allowed_lateness < 0:
    raise OptionsError('--allowed-lateness must be >= 0')


def validate_limits(options: PipelineOptions) -> None:
  e = options.view_as(EventOptions)
  for flag, value, least in (('--max-record-bytes', e.max_record_bytes, 1), ('--max-gzip-bytes', e.max_gzip_bytes, 1),
                             ('--max-gzip-ratio', e.max_gzip_ratio, 1), ('--max-clock-skew', e.max_clock_skew, 0)):
    if value < least:
      raise OptionsError(f'{flag} {value:g} is out of range (at least {least})')
  readers = options.view_as(PubSubSourceOptions).pubsub_readers
  if readers < 1:
    raise OptionsError(f'--pubsub-readers {readers} is out of range (at least 1)')
  j = options.view_as(AgentJoinOptions)
  for flag, value, least in (('--join-clock-skew', j.join_clock_skew, 0), ('--join-window', j.join_window, 1)):
    if value < least:
      raise OptionsError(f'{flag} {value:g} is out of range (at least {least})')


def validate_watch(options: PipelineOptions) -> None:
  e, w = options.view_as(EventOptions), options.view_as(WatchOptions)
  if not e.events_watch:
    return
  ps = options.view_as(PubSubSourceOptions)
  if not options.view_as(StandardOptions).streaming:
    raise OptionsError('--events-watch is a streaming source: add --streaming (or read the files '
                       'once with --events)')
  others = [f for f, v in (('--events', e.events), ('--subscription', ps.subscription),
                           ('--topic', ps.topic)) if v]
  if others:
    raise OptionsError(f'--events-watch reads its own files: drop {", ".join(others)}')
  if w.watch_interval <= 0 or w.watch_max_delay < 0 or w.watch_idle_seconds < 0 \
      or w.watch_idle_limit < 0 or w.watch_stop_idle < 0:
    raise OptionsError('--watch-interval must be > 0; --watch-max-delay, --watch-idle-seconds, '
                       '--watch-idle-limit and --watch-stop-idle >= 0')


def disabled_rules(options: PipelineOptions) -> list:
  value = options.view_as(DetectOptions).disabled_rules or ''
  return [r.strip() for r in value.split(',') if r.strip()]


ALL_OPTIONS = (EventOptions, WindowOptions, DetectOptions, TrainOptions, PubSubSourceOptions,
               WatchOptions, SinkOptions, RetrainOptions, AgentJoinOptions)
