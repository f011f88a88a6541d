"""Issues 4 and 5: an edited inventory and a newly promoted model take effect mid-stream.

Two kinds of test: event-time semantics with TestStream (which model scores
which window), and the real thing in wall-clock time on the streaming
DirectRunner (PeriodicImpulse re-reads a file / the LATEST pointer that a
thread edits while the job runs).
"""
from __future__ import annotations

import os
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.window import TimestampedValue

from postauth.models import registry
from postauth.models.artifact import LATEST
from postauth.models.profile import IdentityProfile
from test_identity_context import ctx, ev, window
from test_registry import _save
from test_windowing import T0
from postauth.domain.event import Event
from postauth.transforms.window_context import WindowInContext
from postauth.transforms.inventory import EnrichWindows, InventoryRefresh, InventorySnapshots
from postauth.transforms.rules import RuleConfig
from postauth.transforms.score import ScoreWindows, WatchModelPointer
from postauth.transforms.updates import LaggedAsList
from postauth.transforms.windowing import EPSILON, IdentityWindows

PERIOD = 900
HEADER = 'identity,identity_type,owner,team,environment,expected_services\n'


def streaming() -> PipelineOptions:
  o = PipelineOptions()
  o.view_as(StandardOptions).streaming = True
  return o


def test_lagged_side_window_is_the_one_that_ended_a_period_before_the_main_window():
  side = beam.Pipeline() | beam.Create([1]) | beam.WindowInto(beam_window.FixedWindows(10))
  mapping = LaggedAsList(side, 10)._window_mapping_fn
  main = beam_window.IntervalWindow(100, 200)  # max timestamp 199.999999
  assert mapping(main) == beam_window.IntervalWindow(180, 190)
  assert mapping(beam_window.IntervalWindow(0, 60)) == beam_window.IntervalWindow(40, 50)


# -- issue 5: the model follows the LATEST pointer ----------------------------------------------
def _in_context(identity: str, end: float) -> WindowInContext:
  # Registered, but nothing is in its declared scope: the out_of_scope rule fires on every
  # window, so every window comes out whatever its score, with the version that scored it.
  context = dict(ctx(identity=identity, expected_services='nothing'), identity_type='api_key')
  return WindowInContext(window(identity, end, [ev(identity, end - 60)]), context,
                         IdentityProfile(), 10_000)


def test_scoring_switches_to_a_promoted_version_between_windows_with_test_stream(tmp_path):
  models = str(tmp_path / 'models')
  v1, v2, v3 = (_save(models, seed) for seed in (1, 2, 3))
  # Workers load LATEST in setup (the runner may start a fresh DoFn instance for any bundle):
  # LATEST is v2 on disk, so a refused v3 falls back to v2 on every instance. The pointer
  # reads below still start at v1, and scoring follows them.
  registry.promote(models, v2)
  # v3 is "promoted" by hand but was tampered with: refused, v2 stays in use.
  victim = next(n for n in os.listdir(os.path.join(models, v3)) if n != 'manifest.json'
                and os.path.isfile(os.path.join(models, v3, n)))
  with open(os.path.join(models, v3, victim), 'ab') as f:
    f.write(b'tampered')
  # What WatchModelPointer emits: one (read time, version) per period, v2 promoted at T0+2h,
  # v3 at T0+5h.
  reads = [(T0 + k * PERIOD + 1, v1 if k < 8 else v2 if k < 20 else v3) for k in range(32)]
  ends = [T0 + 3600, T0 + 3 * 3600, T0 + 7 * 3600]
  stream = TestStream()
  for end in ends:
    stream = (stream.add_elements([TimestampedValue(_in_context('id-a', end), end - EPSILON),
                                   TimestampedValue(_in_context('id-b', end), end - EPSILON)])
              .advance_watermark_to(end + 1))
  stream = stream.advance_watermark_to_infinity()
  with beam.Pipeline(options=streaming()) as p:
    pointer = (p | 'Reads' >> beam.Create(reads)
               | 'Stamp' >> beam.Map(lambda r: TimestampedValue(r, r[0]))
               | 'OneReadPerWindow' >> beam.WindowInto(beam_window.FixedWindows(PERIOD)))
    scored = (p | stream
              | ScoreWindows(models, threshold=1e9, window_period=PERIOD, rules=RuleConfig(),
                             model_updates=LaggedAsList(pointer, PERIOD))
              | beam.Map(lambda f: (f['identity'], f['window_end'], f['model_version'],
                                    [r['rule'] for r in f['rules']])))
    assert_that(scored, equal_to([
        (who, end, version, ['out_of_scope'])
        for end, version in zip(ends, (v1, v2, v2)) for who in ('id-a', 'id-b')]))


def test_pointer_watcher_sees_a_promotion_while_the_job_runs(tmp_path):
  models = str(tmp_path / 'models')
  v1, v2 = _save(models, 1), _save(models, 2)
  registry.promote(models, v1)
  out = tmp_path / 'reads.txt'

  class Record(beam.DoFn):
    def process(self, read):
      with open(out, 'a') as f:
        f.write(f'{read[1]}\n')

  promoter = threading.Timer(2.0, lambda: registry.promote(models, v2, reason='test'))
  promoter.start()
  try:
    with beam.Pipeline(options=streaming()) as p:
      _ = p | WatchModelPointer(models, refresh_seconds=0.5, stop_after=5) | beam.ParDo(Record())
  finally:
    promoter.cancel()
  seen = out.read_text().split()
  assert seen[0] == v1 and seen[-1] == v2, seen
  assert seen == sorted(seen, key=[v1, v2].index)  # never back to v1 once v2 is promoted


# -- issue 4: the inventory re-read mid-stream -------------------------------------------------
def test_inventory_edit_takes_effect_mid_stream_without_restart(tmp_path):
  """Live events for 'svc-new' every 0.25 s; the inventory gains it after 3 s.

  Windows of 2 s every 1 s, inventory re-read every 1 s: early windows see an
  unregistered identity, later ones its team, from the same running job.
  """
  inventory = tmp_path / 'inventory.csv'
  inventory.write_text(HEADER + 'svc-other,api_key,o,t,prod,s3\n')
  out = tmp_path / 'enriched.txt'

  class Record(beam.DoFn):
    def process(self, wc):
      w, context = wc
      with open(out, 'a') as f:
        f.write(f'{w.window_end} {context["registered"]} {context["team"] or "-"}\n')

  def event(t):
    e = ev('svc-new', t)
    return TimestampedValue(e, t)

  edit = threading.Timer(3.0, lambda: inventory.write_text(
      HEADER + 'svc-other,api_key,o,t,prod,s3\nsvc-new,workload_identity,o,payments,prod,s3\n'))
  edit.start()
  try:
    with beam.Pipeline(options=streaming()) as p:
      from apache_beam.transforms.periodicsequence import PeriodicImpulse
      start = time.time()
      refresh = InventoryRefresh(str(inventory), refresh_seconds=1, stop_after=9)
      _ = (p
           | 'Live' >> PeriodicImpulse(start_timestamp=start, stop_timestamp=start + 8, fire_interval=0.25)
           | 'ToEvent' >> beam.Map(event).with_output_types(Event)
           | IdentityWindows(2, 1)
           | EnrichWindows(p | 'Inventory' >> InventorySnapshots(str(inventory)),
                           refresh.side_input(p | 'Refresh' >> refresh))
           | beam.ParDo(Record()))
  finally:
    edit.cancel()
  rows = sorted(line.split() for line in out.read_text().splitlines())
  states = [(registered, team) for _, registered, team in rows]
  assert ('false', '-') in states and ('true', 'payments') in states, rows
  first_registered = states.index(('true', 'payments'))
  # Once the edit is visible it stays visible; before it, the start-up read applies.
  assert all(s == ('true', 'payments') for s in states[first_registered:]), rows
  assert all(s == ('false', '-') for s in states[:first_registered]), rows


def test_a_worker_starting_after_a_bad_promotion_falls_back_to_the_previous_version(tmp_path):
  from apache_beam.utils import shared
  from postauth.models.artifact import ArtifactError
  from postauth.models.model import DetectionModel
  from postauth.transforms.model_cache import acquire_model
  models = str(tmp_path / 'models')
  v1, v2 = _save(models, 1), _save(models, 2)
  registry.promote(models, v1)
  registry.promote(models, v2)
  victim = next(n for n in os.listdir(os.path.join(models, v2)) if n.endswith('.skops'))
  with open(os.path.join(models, v2, victim), 'ab') as f:
    f.write(b'tampered')
  with pytest.raises(ArtifactError, match=victim):
    DetectionModel.load(models)  # what `postauth run` checks at launch: refused
  assert acquire_model(shared.Shared(), models).version == v1  # a worker keeps scoring
  with pytest.raises(ArtifactError):
    acquire_model(shared.Shared(), models, v2)  # a pinned version never falls back
