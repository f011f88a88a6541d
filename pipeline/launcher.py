"""Launch postauth from template parameters (Dataflow Flex Template, Airflow, Cloud Scheduler).

Orchestrators pass options as ``--name=value`` with the option's *dest* as the name
(``--model_dir=gs://...``): Dataflow template parameters and Airflow's Beam operator both
do. This module turns those into postauth's own flags (``--model-dir=...``), leaves every
other argument (``--runner``, ``--project``, ``--temp_location``, ...) to Beam, and runs
the same code as the ``postauth`` command.

Two ways to run:
- attached (any runner, no ``--template_location``): the ``postauth`` command itself runs
  and waits, exactly as on a terminal;
- detached (``--template_location`` set, which is how the Flex Template launcher calls
  its main): the pipeline is built and handed to the runner without waiting, as Dataflow
  requires. ``retrain`` has to wait for its training job before its promotion gate, so it
  is detached as a one-element Dataflow job whose worker runs ``postauth retrain`` to the end.

    python -m postauth.pipeline.launcher --command=run --events=... --model_dir=... [Beam options]
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional, Tuple

from postauth.pipeline import quiet  # noqa: F401  (first: imports Beam without its apitools warning)

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from postauth.pipeline import options as opts

COMMANDS = ('run', 'train', 'retrain')
COMMAND_PARAM = 'command'
# `postauth retrain` flags (parsed by the retrain command itself, not a PipelineOptions class).
# `labels_file`, not `labels`: Dataflow and Airflow's Beam hook both treat `labels` as job labels.
RETRAIN_FLAGS = {'days': '--days', 'keep': '--keep', 'labels_file': '--labels-file'}
TRUE, FALSE = ('true', '1', 'yes'), ('false', '0', 'no')


option_actions = opts.option_actions  # dest -> argparse action of every postauth option


def template_parameters() -> List[str]:
  """Every parameter name the launcher understands, in a stable order."""
  names = [COMMAND_PARAM] + list(option_actions())
  return names + [n for n in RETRAIN_FLAGS if n not in names]


def _bool(name: str, value: str) -> bool:
  if value.lower() in TRUE:
    return True
  if value.lower() in FALSE:
    return False
  raise opts.OptionsError(f'--{name} must be true or false, not {value!r}')


def translate(argv: List[str]) -> Tuple[str, List[str], List[str]]:
  """Template-style arguments -> (command, postauth flags, other Beam flags).

  A list-valued option (``taxonomy_files``) takes comma-separated values; a boolean one
  (``promote``) takes true/false; an empty value means "not set".
  """
  actions = option_actions()
  spelled = {flag for a in actions.values() for flag in a.option_strings}
  command, postauth, beam_args = 'run', [], []
  last = beam_args
  for arg in argv:
    if not arg.startswith('--'):  # the value of a `--flag value` pair stays with its flag
      last.append(arg)
      continue
    name, has_value, value = arg[2:].partition('=')
    if name == COMMAND_PARAM:
      command = value
      continue
    action = actions.get(name)
    if action is None and name not in RETRAIN_FLAGS:
      # a Beam/Dataflow option, or a postauth flag already spelled as one (--model-dir)
      last = postauth if arg.split('=')[0] in spelled else beam_args
      last.append(arg)
      continue
    last = postauth
    if action is not None and action.nargs == 0:  # store_true / store_false
      wanted = _bool(name, value) if has_value else True
      if wanted != action.default:
        postauth.append(action.option_strings[-1])
      continue
    if not has_value:
      raise opts.OptionsError(f'--{name} needs a value: --{name}=VALUE')
    if not value:
      continue
    if action is None:
      postauth.append(f'{RETRAIN_FLAGS[name]}={value}')
    elif isinstance(action, argparse._AppendAction):
      postauth.extend(f'{action.option_strings[-1]}={v.strip()}' for v in value.split(',') if v.strip())
    else:
      postauth.append(f'{action.option_strings[-1]}={value}')
  if command not in COMMANDS:
    raise opts.OptionsError(f'--command must be one of {", ".join(COMMANDS)}, not {command!r}')
  return command, postauth, beam_args


def pipeline_options(postauth: List[str], beam_args: List[str]) -> PipelineOptions:
  """The options the CLI would make of the same arguments (checked, local runners resolved)."""
  from postauth.pipeline.jobs import pipeline_options as job_options
  return job_options(postauth + beam_args)


class RunCommandFn(beam.DoFn):
  """Runs one ``postauth`` command to completion on a worker (FnApiRunner in-process).

  Why: a Flex Template launch must return once the job is submitted, but ``retrain``
  waits for its training job and then gates promotion. Run on a Dataflow worker, the
  whole command runs inside an ordinary batch job that the launch can hand over.
  """

  def __init__(self, command: str):
    self._command = command
    self.failed = Metrics.counter('postauth', 'detached_command_failed')

  def process(self, argv: List[str]):
    from postauth.pipeline import cli
    code = cli.main([self._command] + list(argv) + ['--runner=FnApiRunner'])
    if code != 0:
      self.failed.inc()
      raise RuntimeError(f'postauth {self._command} exited with {code}')
    yield code


def build(p: beam.Pipeline, command: str, options: PipelineOptions, postauth: List[str]) -> None:
  """The pipeline a detached launch submits: the command's own, or the retrain runner."""
  if command == 'run':
    from postauth.pipeline import preflight
    from postauth.pipeline.detect import build_detection
    preflight.validate_run(options)
    preflight.check_run(options)  # unreadable inputs, a tampered model: refused before submitting
    build_detection(p, options)
  elif command == 'train':
    from postauth.pipeline.train import build_training
    from postauth.pipeline import preflight
    det = options.view_as(opts.DetectOptions)
    preflight.validate_train(options, det.model_dir, det.inventory)
    preflight.check_train(options, det.inventory)
    build_training(p, options, det.inventory, det.model_dir)
  else:
    (p
     | 'RetrainArgs' >> beam.Create([postauth])
     | 'RunRetrain' >> beam.ParDo(RunCommandFn(command)))


def submit(command: str, postauth: List[str], beam_args: List[str]):
  """Builds and submits without waiting (a Flex Template's main must return after run)."""
  options = pipeline_options(postauth, beam_args)
  p = beam.Pipeline(options=options)
  build(p, command, options, postauth)
  return p.run()


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  from postauth.models.artifact import ArtifactError
  from postauth.models.train_config import ConfigError
  try:
    command, postauth, beam_args = translate(argv)
    logging.info('postauth %s %s %s', command, ' '.join(postauth), ' '.join(beam_args))
    if pipeline_options(postauth, beam_args).view_as(GoogleCloudOptions).template_location:
      submit(command, postauth, beam_args)
      return 0
  except (opts.OptionsError, ArtifactError, ConfigError) as e:
    print(f'postauth launcher: error: {e}', file=sys.stderr)
    return 2
  from postauth.pipeline import cli
  return cli.main([command] + postauth + beam_args)


if __name__ == '__main__':
  sys.exit(main())
