"""The inventory refresh taking effect mid-stream on Prism, from the folder-watch source.

On Prism the windowed side-input refresh arrives empty (tools/prism_side_input_repro.py), so
there the enrich step polls the inventory itself (transforms/updates.py ``PolledRead``). A
real Prism streaming job watches a folder; once the first file's windows are enriched, the
inventory gains the identity, and the next file's windows must see its team: same job, no
restart. Skips without the Prism binary, fails under CI=true.
"""
from __future__ import annotations

import json
import os
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.pipeline.detect import build_detection  # noqa: F401  (the module that picks polling)
from postauth.domain.event import Event
from postauth.transforms.inventory import EnrichWindows, InventoryRefresh, InventorySnapshots
from postauth.transforms.parse import ParseRecords
from postauth.transforms.updates import refresh_by_polling
from postauth.transforms.watch import WatchFiles
from postauth.transforms.windowing import IdentityWindows
from postauth.pipeline.prism import without_timer_splits

HEADER = 'identity,identity_type,owner,team,environment,expected_services\n'
T0 = 1_780_000_000 - 1_780_000_000 % 3600


def _event(identity: str, t: float, i: int) -> dict:
  e = Event(event_id=f'{identity}-{i}', event_time=float(t), identity=identity,
            identity_type='AssumedRole', principal_raw=identity, session_id='', provider='aws',
            service='s3', action='GetObject', category='data_read', resource='bucket-a',
            region='us-east-1', source_ip='10.0.0.1', user_agent='ua', success=True,
            error_code='', read_only=True, raw_ref='')
  return e._asdict()


def test_prism_and_the_direct_runner_refresh_by_polling():
  assert refresh_by_polling('PrismRunner') and refresh_by_polling('DirectRunner')
  assert refresh_by_polling(None)  # the default runner is the DirectRunner
  assert not refresh_by_polling('DataflowRunner') and not refresh_by_polling('FlinkRunner')


def test_prism_streaming_inventory_edit_takes_effect_mid_stream(prism_binary, tmp_path):
  folder, inventory, out = tmp_path / 'in', tmp_path / 'inventory.csv', tmp_path / 'enriched.txt'
  folder.mkdir()
  inventory.write_text(HEADER + 'svc-other,api_key,o,t,prod,s3\n')
  out.write_text('')
  with open(folder / 'a.jsonl', 'w') as f:  # svc-new for 40 min; another identity 3 h on
    for i in range(0, 2400, 120):
      f.write(json.dumps(_event('svc-new', T0 + i, i)) + '\n')
    f.write(json.dumps(_event('svc-other', T0 + 3 * 3600, 0)) + '\n')

  def driver():
    deadline = time.time() + 90
    while not out.read_text().strip() and time.time() < deadline:
      time.sleep(0.2)  # the first file's windows are enriched
    inventory.write_text(HEADER + 'svc-other,api_key,o,t,prod,s3\n'
                         'svc-new,workload_identity,o,payments,prod,s3\n')
    time.sleep(3)  # two poll periods
    with open(folder / 'b.part', 'w') as f:
      for i in range(0, 2400, 120):
        f.write(json.dumps(_event('svc-new', T0 + 4 * 3600 + i, 10_000 + i)) + '\n')
      f.write(json.dumps(_event('svc-other', T0 + 8 * 3600, 1)) + '\n')
    os.rename(folder / 'b.part', folder / 'b.jsonl')

  class Record(beam.DoFn):
    def process(self, wc):
      w, context = wc
      if w.identity == 'svc-new':
        with open(out, 'a') as f:
          f.write(f'{w.window_end} {context["registered"]} {context["team"] or "-"}\n')

  options = PipelineOptions(['--runner=PrismRunner', f'--prism_location={prism_binary}'])
  options.view_as(StandardOptions).streaming = True
  without_timer_splits(options)
  thread = threading.Thread(target=driver, daemon=True)
  thread.start()
  with beam.Pipeline(options=options) as p:
    parsed = (p
         | WatchFiles(str(folder / '*.jsonl'), interval=0.5, max_delay=0, idle_seconds=0,
                      stop_idle=8)
         | ParseRecords())
    _ = (parsed.events
         | IdentityWindows(1200, 600)
         | EnrichWindows(p | InventorySnapshots(str(inventory)), None,
                         InventoryRefresh.polled(str(inventory), 1.0))
         | beam.ParDo(Record()))
  thread.join(timeout=5)
  rows = sorted((float(a), b, c) for a, b, c in (l.split() for l in out.read_text().splitlines()))
  first = [(r, t) for end, r, t in rows if end <= T0 + 3 * 3600]
  second = [(r, t) for end, r, t in rows if end > T0 + 3 * 3600]
  assert first and all(s == ('false', '-') for s in first), rows
  assert second and all(s == ('true', 'payments') for s in second), rows


def test_a_polled_read_waits_a_period_then_reads_and_keeps_the_last_value_on_errors():
  from postauth.transforms.updates import PolledRead
  values = iter([1, RuntimeError('half-written'), 3])

  def read():
    v = next(values)
    if isinstance(v, Exception):
      raise v
    return v

  poll = PolledRead(read, 0.05, 'test')
  assert poll.poll() is None  # the start-up value is in use: no read on the first call
  assert poll.poll() is None  # within the period
  time.sleep(0.06)
  assert poll.poll()[1] == 1
  time.sleep(0.06)
  assert poll.poll() is None  # the read failed: nothing new, the consumer keeps what it has
  time.sleep(0.06)
  assert poll.poll()[1] == 3


def test_scoring_follows_a_promotion_by_polling_the_pointer(tmp_path):
  from postauth.models import registry
  from test_live_updates import T0 as LT0, _in_context, _save
  from postauth.transforms.rules import RuleConfig
  from postauth.transforms.score import ScoreBatchFn, WatchModelPointer
  models = str(tmp_path / 'models')
  v1, v2 = _save(models, 1), _save(models, 2)
  registry.promote(models, v1)
  fn = ScoreBatchFn(models, threshold=1e9, rules=RuleConfig(),
                    pointer_poll=WatchModelPointer.polled(models, 0.05))
  fn.setup()
  end = LT0 + 3600
  assert {f.value['model_version'] for f in fn.process([_in_context('id-a', end)])} == {v1}
  registry.promote(models, v2, reason='test')
  time.sleep(0.06)
  assert {f.value['model_version'] for f in fn.process([_in_context('id-a', end)])} == {v2}
