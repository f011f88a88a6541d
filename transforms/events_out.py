"""``--events-out``: every event the streaming job counted, as JSON lines, one file per bundle.

Why per bundle and not the windowed part files of ``transforms.sinks``: a windowed file appears
only when its event-time window closes, so a job killed before that has written nothing, and
an audit of "which events did this job count" is needed exactly then. Each bundle writes its
events to a hidden temporary file and renames it into place in ``finish_bundle`` (before the
runner commits the bundle): a reader never sees a partial file, a killed job leaves at most a
hidden temporary file, and one event id appears once per job run (the events come after
``transforms.dedup_events``). Local paths and any Beam filesystem (``gs://`` ...) work.

Across a restart: with the sdf reader a message is acked only after its event is written here
(``transforms.pubsub_ack``), so a job killed between the write and the ack gets those messages
again, and its dedup state is gone. Each writer therefore starts by reading the event ids of
the files written in the last ``RECENT_SECONDS`` (600 s, Pub/Sub's longest ack deadline) before
the newest one, and does not write those again: a restart counts every event once, provided
the ack step did not lag the writes by more than that.
"""
from __future__ import annotations

import json
import uuid
from typing import List, Set

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from postauth.domain.event import Event


def event_line(e: Event) -> str:
  return json.dumps({'event_id': e.event_id, 'event_time': e.event_time, 'identity': e.identity,
                     'action': f'{e.service}:{e.action}', 'success': e.success, 'ref': e.raw_ref},
                    sort_keys=True)


RECENT_SECONDS = 600  # Pub/Sub's longest ack deadline


def recent_event_ids(folder: str, seconds: float = RECENT_SECONDS) -> Set[str]:
  """Event ids in the files written within ``seconds`` before the newest one."""
  try:
    files = FileSystems.match([FileSystems.join(folder, 'events-*.jsonl')])[0].metadata_list
  except Exception:  # no folder yet, or nothing in it
    return set()
  if not files:
    return set()
  newest = max(m.last_updated_in_seconds for m in files)
  ids = set()
  for m in files:
    if m.last_updated_in_seconds >= newest - seconds:
      with FileSystems.open(m.path) as f:
        ids.update(json.loads(line)['event_id'] for line in f.read().decode().splitlines() if line)
  return ids


class _WriteBundleFiles(beam.DoFn):
  def __init__(self, folder: str):
    self._folder = folder.rstrip('/')
    self.written = Metrics.counter('postauth', 'events_out_written')
    self.again = Metrics.counter('postauth', 'events_out_already_written')

  def setup(self):
    if not FileSystems.exists(self._folder):
      try:
        FileSystems.mkdirs(self._folder)
      except IOError:  # created meanwhile by another worker
        pass
    # What a job killed after writing and before acking wrote last: its messages come back.
    self._recent = recent_event_ids(self._folder)

  def start_bundle(self):
    self._lines: List[str] = []

  def process(self, event: Event):
    if event.event_id and event.event_id in self._recent:
      self.again.inc()  # counted before a restart: not again (still "written" for the ack)
    else:
      self._lines.append(event_line(event))
    # The ref goes on only when this bundle commits, after finish_bundle renamed its file into
    # place: downstream (transforms.pubsub_ack) it means "written".
    yield event.raw_ref

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
  """Events -> ``<folder>/events-<uuid>.jsonl``, one file per non-empty bundle; returns the
  raw_ref of every event written."""

  def __init__(self, folder: str):
    super().__init__()
    self._folder = folder

  def expand(self, events):
    return events | 'WriteBundleFiles' >> beam.ParDo(_WriteBundleFiles(self._folder)).with_output_types(str)


def read_events_out(folder: str) -> List[dict]:
  """Every event line written under ``folder`` (temporary files excluded)."""
  import glob
  import os
  rows = []
  for path in sorted(glob.glob(os.path.join(folder, 'events-*.jsonl'))):
    with open(path) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  return rows
