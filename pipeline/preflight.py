"""Flags and input files checked before a job is built: a bad one is refused in one line, exit 2.

Why: a Beam job reads its inputs inside the pipeline, so an unreadable inventory or a
glob matching nothing surfaces as a worker traceback, or not at all (an empty findings
file). Each input kind has one check here, run by ``postauth run/train/retrain`` (and the
template launcher) after the flag checks (``validate_run``/``validate_train``, here) and before the
pipeline is built. Each raises ``PreflightError`` (an ``OptionsError``: the CLI prints
``postauth <command>: error: <message>`` and exits 2) naming the flag, the file and
what is wrong with it.

Local paths are checked; remote ones (``gs://``, ``s3://``, ``bq://``) are left to the
job, which may run with credentials the launching machine does not have.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from typing import Iterable, Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.pipeline import options as opts
from postauth.pipeline.options import (DetectOptions, EventOptions, OptionsError, TrainOptions,
                                       WatchOptions)
from postauth.transforms import sink_uris
from postauth.transforms.sink_uris import validate_io
from postauth.transforms.rules import ALL_RULE_NAMES

_log = logging.getLogger('postauth.preflight')

TAXONOMY_COLUMNS = ('service', 'action', 'category')  # plus an optional provider


class PreflightError(OptionsError):
  """An input file that cannot be used, found before the job starts."""


def is_remote(path: str) -> bool:
  return '://' in path


def validate_run(options: PipelineOptions) -> None:
  e, d = options.view_as(opts.EventOptions), options.view_as(opts.DetectOptions)
  ps = options.view_as(opts.PubSubSourceOptions)
  missing = [flag for flag, value in (('--events', e.events or e.events_watch or ps.subscription
                                       or ps.topic),
                                      ('--inventory', d.inventory), ('--model-dir', d.model_dir),
                                      ('--findings', d.findings or options.view_as(opts.SinkOptions).sinks))
             if not value]
  if missing:
    raise opts.OptionsError('postauth run needs ' + ', '.join(missing).replace(
        '--events', '--events (or --subscription/--topic) or --events-watch').replace('--findings', '--findings (or --sink)'))
  opts.validate_window(options)
  opts.validate_limits(options)
  opts.validate_watch(options)
  validate_io(options)
  if options.view_as(StandardOptions).streaming and d.replay_step <= 0:
    raise opts.OptionsError('--replay-step must be positive')
  unknown = [r for r in opts.disabled_rules(options) if r not in ALL_RULE_NAMES]
  if unknown:
    raise opts.OptionsError(f'--disable-rules: unknown rule(s) {unknown}; known: {list(ALL_RULE_NAMES)}')
  if d.fleet_change_identities < 1:
    raise opts.OptionsError('--fleet-change-identities must be >= 1 (disable with --disable-rules fleet_change)')
  if d.corroboration_delay < 0 or d.corroboration_peers < 1:
    raise opts.OptionsError('--corroboration-delay must be >= 0 and --corroboration-peers >= 1')
  if d.dedup_period < 0 or d.inventory_refresh < 0 or d.model_refresh < 0 or d.dormant_days <= 0:
    raise opts.OptionsError('--dedup-period, --inventory-refresh and --model-refresh must be >= 0, '
                       '--dormant-days > 0')
  # Input files (inventory, model, allow-list, taxonomy, --events matches): the checks below


def validate_train(options: PipelineOptions, model_dir: str, inventory: str) -> None:
  e = options.view_as(opts.EventOptions)
  missing = [flag for flag, value in (('--events', e.events), ('--inventory', inventory),
                                      ('--model-dir', model_dir)) if not value]
  if missing:
    raise opts.OptionsError('postauth train needs ' + ', '.join(missing))
  if options.view_as(StandardOptions).streaming:
    raise opts.OptionsError('postauth train is a batch job: drop --streaming')
  if options.view_as(opts.TrainOptions).page_budget <= 0:
    raise opts.OptionsError('--page-budget must be > 0 (pages per 1,000 identity-days)')
  opts.validate_window(options)
  opts.validate_limits(options)


def why(e: BaseException) -> str:
  """An OS or parse error as a few words (no errno, no repeated path)."""
  if isinstance(e, FileNotFoundError):
    return 'no such file'
  if isinstance(e, IsADirectoryError):
    return 'is a folder, not a file'
  if isinstance(e, PermissionError):
    return 'permission denied'
  if isinstance(e, UnicodeDecodeError):
    return 'not UTF-8 text'
  if isinstance(e, json.JSONDecodeError):
    return f'not valid JSON (line {e.lineno}: {e.msg})'
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def read_local(flag: str, path: str) -> bytes:
  """The bytes of a local input file, or a PreflightError saying why not."""
  if os.path.isdir(path):
    raise PreflightError(f'{flag} {path}: is a folder, not a file')
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise PreflightError(f'{flag} {path}: {why(e)}') from e


# -- one check per input kind ------------------------------------------------------------------

def check_events(pattern: Optional[str], flag: str = '--events') -> int:
  """A glob of event files must match at least one file (a folder alone is not enough)."""
  if not pattern or is_remote(pattern):
    return 0
  try:
    matched = FileSystems.match([pattern])[0].metadata_list
  except Exception as e:  # a malformed pattern
    raise PreflightError(f'{flag} {pattern!r}: {why(e)}') from e
  files = [m for m in matched if not os.path.isdir(m.path)]
  if not files:
    if matched:
      raise PreflightError(f'{flag} {pattern!r} is a folder: give a glob of its files, e.g. '
                           f'{os.path.join(pattern, "*")!r}')
    raise PreflightError(f'{flag} {pattern!r} matches no file')
  return len(files)


def note_watch_start(pattern: Optional[str], interval: float) -> int:
  """A watched glob may be empty at start (files arrive later): say so instead of refusing."""
  if not pattern or is_remote(pattern):
    return 0
  try:
    matched = [m for m in FileSystems.match([pattern])[0].metadata_list if not os.path.isdir(m.path)]
  except Exception as e:
    raise PreflightError(f'--events-watch {pattern!r}: {why(e)}') from e
  if not matched:
    _log.info('--events-watch %r matches no file yet: watching for new ones every %gs', pattern,
              interval)
  return len(matched)


def check_inventory(path: Optional[str]) -> int:
  """The inventory parses and has every required column; returns its number of identities."""
  if not path or is_remote(path):
    return 0
  from postauth.transforms.inventory import REQUIRED, InventoryError, read_inventory
  data = read_local('--inventory', path)
  if data[:4] != b'Obj\x01' and path.endswith(('.jsonl', '.json', '.ndjson')):
    _check_jsonl_fields(path, data, REQUIRED)
  try:
    rows = dict(read_inventory(path))
  except InventoryError as e:
    raise PreflightError(f'--inventory {_missing_columns(str(e), path, REQUIRED)}') from e
  except (OSError, ValueError, KeyError, TypeError) as e:  # bad JSON, bad Avro, bad encoding
    raise PreflightError(f'--inventory {path}: {why(e)}') from e
  if not rows:
    _log.warning('--inventory %s lists no identity: every identity will be reported as '
                 'unregistered', path)
  return len(rows)


def _missing_columns(message: str, path: str, required: Sequence[str]) -> str:
  """transforms.inventory's "lacks columns [...]" in the words of this module."""
  for marker in ('lacks columns ', 'lacks fields '):
    if marker in message:
      names = message.split(marker, 1)[1].strip('[] ').replace("'", '')
      return f'{path}: missing columns {names} (an inventory needs {", ".join(required)})'
  return message


def _check_jsonl_fields(path: str, data: bytes, required: Sequence[str]) -> None:
  seen = set()
  for n, line in enumerate(data.decode('utf-8-sig', errors='replace').splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise PreflightError(f'--inventory {path}: line {n} is not valid JSON ({e.msg}); '
                           'expected one JSON object per line') from e
    if not isinstance(row, dict):
      raise PreflightError(f'--inventory {path}: line {n} is not a JSON object')
    seen.update(row)
  missing = [c for c in required if c not in seen]
  if seen and missing:
    raise PreflightError(f'--inventory {path}: missing columns {", ".join(missing)} '
                         f'(an inventory needs {", ".join(required)})')


def check_taxonomy_files(paths: Optional[Iterable[str]]) -> None:
  """Each extra taxonomy CSV has the columns and only known categories."""
  from postauth.domain.taxonomy import Taxonomy
  for path in paths or ():
    if is_remote(path):
      continue
    data = read_local('--taxonomy-file', path)
    try:
      text = data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
      raise PreflightError(f'--taxonomy-file {path}: {why(e)}') from e
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith('#')]
    header = next(csv.reader(io.StringIO(lines[0])), []) if lines else []
    missing = [c for c in TAXONOMY_COLUMNS if c not in [h.strip() for h in header]]
    if missing:
      raise PreflightError(f'--taxonomy-file {path}: missing columns {", ".join(missing)} '
                           f'(header must be [provider,]service,action,category; got '
                           f'{",".join(header)[:80] or "an empty file"})')
    try:
      Taxonomy([path])
    except (ValueError, KeyError) as e:
      raise PreflightError(f'--taxonomy-file {path}: {why(e)}') from e


def check_allowlist(path: Optional[str]) -> int:
  if not path or is_remote(path):
    return 0
  from postauth.transforms.triage import load_allowlist
  read_local('--allowlist', path)
  try:
    return len(load_allowlist(path))
  except (OSError, ValueError, KeyError, TypeError) as e:
    message = why(e)  # load_allowlist's own messages start with the path
    raise PreflightError(f'--allowlist {message if message.startswith(path) else f"{path}: {message}"}') from e


def check_train_config(path: Optional[str]) -> None:
  if not path:
    return
  if not is_remote(path):
    read_local('--train-config', path)
  from postauth.models.train_config import ConfigError, TrainConfig
  try:
    TrainConfig.from_file(path)
  except ConfigError as e:
    raise PreflightError(str(e)) from e


def check_model(model_dir: Optional[str], version: Optional[str]) -> None:
  """The model version verifies: every file is there and matches its manifest hash, in a format
  this code reads. The files are not parsed here: the workers load them (a fleet's profiles
  are most of a model's load)."""
  if not model_dir:
    return
  if not is_remote(model_dir) and os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise PreflightError(f'--model-dir {model_dir}: is a file, not a model folder')
  from postauth.models.artifact import ArtifactError
  from postauth.models.model import DetectionModel
  try:
    DetectionModel.verify(model_dir, version)
  except ArtifactError:
    raise  # already names the file and the problem
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PreflightError(f'--model-dir {model_dir}: cannot load the model ({why(e)})') from e


# -- per command -------------------------------------------------------------------------------

def check_run(options: PipelineOptions) -> None:
  """Every local input of ``postauth run``."""
  ev, det = options.view_as(EventOptions), options.view_as(DetectOptions)
  check_outputs(options)
  check_events(ev.events)
  if ev.events_watch:
    note_watch_start(ev.events_watch, options.view_as(WatchOptions).watch_interval)
  check_taxonomy_files(ev.taxonomy_files)
  check_inventory(det.inventory)
  check_allowlist(det.allowlist)
  check_model(det.model_dir, det.model_version)


def check_outputs(options: PipelineOptions) -> None:
  """Every local file the run will write (findings, file sinks, dead letters, suppressed) can be
  made: not a folder itself, and under folders that are folders and can be written to. Found
  here rather than by the sink's write at the end of the job. Nothing is left behind."""
  det = options.view_as(DetectOptions)
  outputs = [('--findings' if spec.target == det.findings else '--sink', spec.target)
             for spec in sink_uris.sink_specs(options) if spec.kind in ('jsonl', 'avro')]
  dead = sink_uris.dead_letter_spec(options)
  outputs += [('--dead-letters', dead.target)] if dead.kind in ('jsonl', 'avro') else []
  outputs += [('--suppressed', sink_uris.suppressed_path(options))]
  for flag, path in outputs:
    check_output_file(flag, path)


def check_output_file(flag: str, path: Optional[str]) -> None:
  """A local file a command writes can be made; a remote one is left to the write."""
  if not path or is_remote(path):
    return
  if os.path.isdir(path):
    raise PreflightError(f'{flag} {path}: is a folder, not a file to write')
  _check_can_make(flag, path, os.path.dirname(os.path.abspath(path)))


def check_output_folder(flag: str, path: Optional[str], what: str = 'folder') -> None:
  """A local folder a command writes in (``what``: how to name it) is one or can be made."""
  if not path or is_remote(path):
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise PreflightError(f'{flag} {path}: is a file, not a {what}')
  _check_can_make(flag, path, os.path.abspath(path))


def _check_can_make(flag: str, path: str, folder: str) -> None:
  """``folder`` (``path``'s, or ``path`` itself) is a folder that can be written in, or can be
  made: the nearest folder on its way that exists can be written in."""
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise PreflightError(f'{flag} {path}: {existing} is a file, not a folder')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise PreflightError(f'{flag} {path}: cannot write in {existing}')
  _probe_folder(flag, path, existing)


def _probe_folder(flag: str, path: str, folder: str) -> None:
  """Makes and removes a folder in ``folder``: ``os.access`` answers from permission bits alone,
  and says yes where the write would still fail (root under ``/proc``, a full disk)."""
  try:
    os.rmdir(tempfile.mkdtemp(prefix='.postauth-probe-', dir=folder))
  except OSError as e:
    raise PreflightError(f'{flag} {path}: cannot write in {folder} ({e.strerror})') from None


def check_train(options: PipelineOptions, inventory: Optional[str]) -> None:
  """Every local input of ``postauth train`` and ``retrain``, and the model folder they write."""
  ev = options.view_as(EventOptions)
  check_events(ev.events)
  check_taxonomy_files(ev.taxonomy_files)
  check_inventory(inventory)
  check_train_config(options.view_as(TrainOptions).train_config)
  # the new version and the training's dead letters go there
  check_output_folder('--model-dir', options.view_as(DetectOptions).model_dir, 'model folder')

