"""``--events-out``: every event the streaming job counted, as JSON lines, one file per bundle.

Why per bundle and not the windowed part files of ``transforms.sinks``: a windowed file appears
only when its event-time window closes, so a job killed before that has written nothing, and
an audit of "which events did this job count" is needed exactly then. Each bundle writes its
events to a hidden temporary file and renames it into place in ``finish_bundle`` (before the
runner commits the bundle): a reader never sees a partial file, a killed job leaves at most a
hidden temporary file, and one event id appears once per job run (the events come after
``DeduplicatePerKey``). Local paths and any Beam filesystem (``gs://`` ...) work.
"""
from __future__ import annotations

import json
import uuid
from typing import List

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.event import Event


def event_line(e: Event) -> str:
  return json.dumps({'event_id': e.event_id, 'event_time': e.event_time, 'identity': e.identity,
                     'action': f'{e.service}:{e.action}', 'success': e.success, 'ref': e.raw_ref},
                    sort_keys=True)


class _WriteBundleFiles(beam.DoFn):
  def __init__(self, folder: str):
    self._folder = folder.rstrip('/')
    self.written = Metrics.counter('postauth', 'events_out_written')

  def setup(self):
    if not FileSystems.exists(self._folder):
      try:
        FileSystems.mkdirs(self._folder)
      except IOError:  # created meanwhile by another worker
        pass

  def start_bundle(self):
    self._lines: List[str] = []

  def process(self, event: Event):
    self._lines.append(event_line(event))

  def finish_bundle(self):
    if not self._lines:
      return
    name = f'events-{uuid.uuid4().hex}.jsonl'
    tmp = FileSystems.join(self._folder, f'.tmp-{name}')
    with FileSystems.create(tmp) as f:
      f.write(('\n'.join(self._lines) + '\n').encode())
    FileSystems.rename([tmp], [FileSystems.join(self._folder, name)])
    self.written.inc(len(self._lines))
    self._lines = []


class WriteEventsOut(beam.PTransform):
  """Events -> ``<folder>/events-<uuid>.jsonl``, one file per non-empty bundle."""

  def __init__(self, folder: str):
    super().__init__()
    self._folder = folder

  def expand(self, events):
    return events | 'WriteBundleFiles' >> beam.ParDo(_WriteBundleFiles(self._folder))


def read_events_out(folder: str) -> List[dict]:
  """Every event line written under ``folder`` (temporary files excluded)."""
  import glob
  import os
  rows = []
  for path in sorted(glob.glob(os.path.join(folder, 'events-*.jsonl'))):
    with open(path) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  return rows
