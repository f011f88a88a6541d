"""JSON-lines file sinks that work for bounded and unbounded input.

Batch writes one file at exactly the requested path (``GatherWholeFiles``: every line
gathered under its file's key, written to a temporary name and renamed into place; one
grouping serves all of a job's files (``FileGathering``), where Beam's ``WriteToText`` applies
eleven steps per file; each step is a cost at start-up and, on Prism, stages to schedule). Streaming cannot (the file
is never "finished"), so it writes one file per event-time window and pane under
``<path>.parts/`` with ``fileio.WriteToFiles``; ``compact_parts`` joins them into
the requested path when a bounded replay ends.

Part windows accept late elements for a year (each late firing is its own pane
file): findings leave the merge step from event-time timers, and the Python
DirectRunner does not hold the watermark for pending timers, so after a large
watermark step (a replay's idle advance) a finding can arrive behind the
watermark; with the default lateness of 0 the file sink would drop it silently.

A part file's name carries its window, pane and run (``run_tag``: the time the job was built and
a random suffix): a restarted job writing the same hour never replaces the earlier run's file
(``fileio`` moves a part into place with ``rename``, which overwrites). Nothing here deletes a
part: a bounded replay moves the earlier run's parts aside (``set_aside_parts``), an unbounded
job's restart adds its parts to them.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import time
import typing
import uuid
from typing import Any, Callable, Dict, List, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration

from postauth.transforms.bundle_batches import BatchPerBundle
from postauth.transforms.packed import Packed
from postauth.transforms.versions import version_rank

PART_LATENESS = Duration(seconds=365 * 86400)


def parts_dir(path: str) -> str:
  return path + '.parts'


def run_tag() -> str:
  """This run's mark in its part files' names: sortable by start time, unique per run."""
  return time.strftime('%Y%m%dT%H%M%SZ', time.gmtime()) + '-' + uuid.uuid4().hex[:6]


def pane_file_naming(prefix: str, suffix: str, run: str = ''):
  """fileio naming with the pane index, so a late firing never overwrites the on-time file, and
  the run, so a restarted job never overwrites the earlier run's file of the same window."""
  run = run or run_tag()

  def name(win, pane, shard_index, total_shards, compression, destination):
    span = (f'{win.start.to_utc_datetime().isoformat()}-{win.end.to_utc_datetime().isoformat()}'
            if isinstance(win, window.IntervalWindow) else 'global')
    index = pane.index if pane is not None else 0
    return (f'{prefix}-{span}-pane{index:04d}-{run}-{shard_index or 0:05d}-of-{total_shards or 1:05d}'
            f'{suffix}')
  return name


class WriteParts(beam.PTransform):
  """Streaming: elements -> one file per event-time window and pane under ``<path>.parts/``."""

  def __init__(self, path: str, suffix: str, sink=None, part_window_seconds: int = 3600):
    super().__init__()
    self._path, self._suffix, self._sink = path, suffix, sink
    self._part_window = part_window_seconds

  def expand(self, records):
    prefix = os.path.basename(self._path).rsplit('.', 1)[0]
    kwargs = {'sink': self._sink} if self._sink is not None else {}
    return (records
            | 'PartWindows' >> beam.WindowInto(
                window.FixedWindows(self._part_window),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                allowed_lateness=PART_LATENESS,
                accumulation_mode=trigger.AccumulationMode.DISCARDING)
            | 'WriteParts' >> fileio.WriteToFiles(
                path=parts_dir(self._path), file_naming=pane_file_naming(prefix, self._suffix),
                shards=1, max_writers_per_bundle=0, **kwargs))


def write_whole_file(path: str, lines: List[str]) -> None:
  """``lines`` to ``path`` (any Beam filesystem; ``.gz`` compresses), never seen half written."""
  folder, name = os.path.split(path) if '://' not in path else path.rsplit('/', 1)
  if folder and not FileSystems.exists(folder):
    try:
      FileSystems.mkdirs(folder)
    except IOError:  # created meanwhile
      pass
  tmp_name = f'.tmp-{uuid.uuid4().hex}-{name}'
  tmp = FileSystems.join(folder, tmp_name) if folder else tmp_name
  with FileSystems.create(tmp) as f:
    f.write(''.join(line + '\n' for line in lines).encode())
  FileSystems.rename([tmp], [path])  # replaces an earlier file in one step (os.rename; a GCS copy)


# The render gets the lines sorted (or the entries ``to_line`` made: a tuple led by its line
# sorts as the line does, and carries what the render would otherwise parse back out of it).
Render = Callable[[List[Any]], Dict[str, List[str]]]
ToLine = Callable[[Any], Any]  # a record -> its line (or entry), applied in the keying step (one step less)
_GATHERED = typing.Tuple[str, Packed]  # a bundle's lines or entries (none: the seed); transforms/packed.py


class _LinesPerBundle(BatchPerBundle):
  """record -> (name, [the bundle's lines or entries]): the lines of one file share most of
  their text (a finding's versions repeat its evidence), which one packed list compresses."""

  def __init__(self, name: str, to_line: Optional[ToLine]):
    super().__init__(key_of=lambda _: name)
    self._to_line = to_line

  def process(self, record, ts=beam.DoFn.TimestampParam):
    yield from super().process(record if self._to_line is None else self._to_line(record), ts)


def _one_file(path: str) -> Render:
  """The render that writes the lines, as they are, to ``path``."""
  return lambda lines: {path: lines}


class _WriteGatheredFn(beam.DoFn):
  def __init__(self, renders: Dict[str, Render]):
    self._renders = renders

  def process(self, kv):
    name, batches = kv
    lines = sorted(itertools.chain.from_iterable(batches))
    for path, content in self._renders[name](lines).items():
      write_whole_file(path, content)
      yield path


class GatherWholeFiles(beam.PTransform):
  """{name: bounded lines} -> the files each ``renders[name](sorted lines)`` maps paths to;
  written even when no line comes (an empty file says "nothing", a missing one "did not run").

  One grouping for all of them (a key per name: each file's lines on one worker, as
  ``WriteToText(num_shards=1)`` does; findings and dead letters of a batch run are small),
  which gets each bundle's lines of a file as one list. Inputs are bounded, in the global
  window. Returns the paths written.
  """

  def __init__(self, renders: Dict[str, Render], to_lines: Optional[Dict[str, ToLine]] = None):
    super().__init__()
    self._renders = dict(renders)
    self._to_lines = dict(to_lines or {})

  def expand(self, inputs: Dict[str, beam.PCollection]):
    names = sorted(self._renders)
    if sorted(inputs) != names:
      raise ValueError(f'lines for {sorted(inputs)}, renders for {names}')
    keyed = [inputs[name] | f'Key{i}' >> beam.ParDo(_LinesPerBundle(name, self._to_lines.get(name))).with_output_types(
        _GATHERED) for i, name in enumerate(names)]
    seed = (next(iter(inputs.values())).pipeline | 'Impulse' >> beam.Impulse()
            | 'Seed' >> beam.FlatMap(lambda _: [(name, []) for name in names]).with_output_types(_GATHERED))
    return ((*keyed, seed) | 'WithSeed' >> beam.Flatten()
            | 'Gather' >> beam.GroupByKey()
            | 'Write' >> beam.ParDo(_WriteGatheredFn(self._renders)).with_output_types(str))


class _CountWrittenFn(beam.DoFn):
  def __init__(self):
    self.files = beam.metrics.Metrics.counter('postauth', 'files_written')

  def process(self, kv):
    self.files.inc(len(kv[1]))
    return ()


class CountFilesWritten(beam.PTransform):
  """Written paths -> the ``files_written`` counter, counted behind a grouping.

  The grouping is what matters on Prism: a stage whose outputs nothing reads has no data
  output there, and Prism's bundle loop polls such a stage's closed data channel, a core busy,
  for as long as its bundle runs (docs/performance.md): the writing stage is the job's last.
  """

  def expand(self, paths):
    return (paths
            | 'Key' >> beam.Map(lambda path: (None, path)).with_output_types(typing.Tuple[None, str])
            | 'Together' >> beam.GroupByKey()
            | 'Count' >> beam.ParDo(_CountWrittenFn()))


class WriteWholeFiles(beam.PTransform):
  """Bounded lines (or records and ``to_line``) -> one file at ``path`` (or the files
  ``render(sorted lines)`` maps paths to)."""

  def __init__(self, path: str, render: Optional[Render] = None, to_line: Optional[ToLine] = None):
    super().__init__()
    self._path = path
    self._render = render or _one_file(path)
    self._to_line = to_line

  def expand(self, lines):
    to_lines = {self._path: self._to_line} if self._to_line else None
    return {self._path: lines} | 'Gather' >> GatherWholeFiles({self._path: self._render}, to_lines)


class FileGathering:
  """The batch files of one job, written by one ``GatherWholeFiles`` step instead of a grouping
  each: every step costs at start-up, and each grouping is a stage to schedule.

  Sinks ``add`` their lines (or records and ``to_line``) while the job is built; ``write``
  applies the step once, after the last.
  """

  def __init__(self):
    self._lines: Dict[str, beam.PCollection] = {}
    self._renders: Dict[str, Render] = {}
    self._to_lines: Dict[str, ToLine] = {}

  def add(self, lines: beam.PCollection, path: str, render: Optional[Render] = None,
          to_line: Optional[ToLine] = None) -> None:
    if path in self._lines:
      raise ValueError(f'{path}: two sinks write this file')
    self._lines[path] = lines
    self._renders[path] = render or _one_file(path)
    if to_line is not None:
      self._to_lines[path] = to_line

  def write(self, label: str = 'WriteFiles') -> None:
    if self._lines:
      _ = (self._lines | label >> GatherWholeFiles(self._renders, self._to_lines)
           | f'{label}Counted' >> CountFilesWritten())


class WriteJsonLines(beam.PTransform):
  """Strings (one JSON document each) -> a JSON-lines file (batch) or windowed parts (streaming)."""

  def __init__(self, path: str, streaming: bool, part_window_seconds: int = 3600):
    super().__init__()
    self._path = path
    self._streaming = streaming
    self._part_window = part_window_seconds

  def expand(self, lines):
    if not self._streaming:
      return lines | 'WriteFile' >> WriteWholeFiles(self._path)
    return lines | 'Parts' >> WriteParts(self._path, '.jsonl', part_window_seconds=self._part_window)


def set_aside_parts(path: str) -> Optional[str]:
  """Moves the part files an earlier run left in ``<path>.parts/`` into a folder beside them,
  ``<path>.parts/earlier-<UTC time>/``, where compaction (which reads the top level) no longer
  joins them; returns that folder, or None when there was nothing to move.

  For a bounded replay, which recomputes its files: joined with its own earlier run's parts,
  its dead letters would count twice. Set aside, nothing is lost (``postauth compact
  --findings`` on a copy of that folder's files gives the earlier run's findings).
  """
  folder = parts_dir(path)
  names = sorted(n for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                 if not n.startswith('.') and os.path.isfile(os.path.join(folder, n)))
  if not names:
    return None
  aside = os.path.join(folder, 'earlier-' + run_tag())
  os.makedirs(aside)
  for name in names:
    os.replace(os.path.join(folder, name), os.path.join(aside, name))
  return aside


def compact_parts(path: str, key: str = '') -> int:
  """Joins streaming part files into ``path``; with ``key``, keeps one line per key: the
  latest version (highest ``updates``, then ``occurrences``: transforms/versions.py)."""
  files = sorted(glob.glob(os.path.join(parts_dir(path), '*.jsonl')))
  lines: List[str] = []
  by_key = {}
  for name in files:
    with open(name) as f:
      for line in f:
        line = line.rstrip('\n')
        if not line:
          continue
        if key:
          record = json.loads(line)
          rank = version_rank(record) if isinstance(record, dict) else (0, 1, '')
          if isinstance(record, dict) and 'finding_info' in record:
            rank = version_rank(record.get('unmapped') or {})  # OCSF: the version fields ride there
          value = record
          for part in key.split('.'):  # a dotted key: OCSF's finding_info.uid
            value = value[part]
          if value not in by_key or rank >= by_key[value][0]:
            by_key[value] = (rank, line)
        else:
          lines.append(line)
  if key:
    lines = [line for _, line in by_key.values()]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    for line in lines:
      f.write(line + '\n')
  return len(lines)
