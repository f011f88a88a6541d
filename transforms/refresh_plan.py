"""How the inventory and the model reach a running job: read once, or refreshed live.

A batch run and a bounded replay read the inventory and the model once. An unbounded
source (a file watch, Pub/Sub) re-reads them every ``--inventory-refresh`` /
``--model-refresh`` seconds so an edit or a promotion takes effect mid-stream
(transforms/updates.py): as a side input refreshed by a periodic impulse where the
runner delivers one (Dataflow, Flink), or polled by the enrich and score steps
themselves on Prism and the DirectRunner's runners, which do not. A watch or Pub/Sub
source told to stop when idle refreshes only by polling (the periodic impulse would
keep the job from ending), and a BigQuery inventory is read once (a query every few
minutes costs money).
"""
from __future__ import annotations

import typing
from typing import Any, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.transforms.options import DetectOptions, EventOptions, PubSubSourceOptions, WatchOptions
from postauth.transforms.inventory import InventoryRefresh
from postauth.transforms.score import WatchModelPointer
from postauth.transforms.updates import refresh_by_polling


class Refreshes(typing.NamedTuple):
  """What ``EnrichWindows`` and ``ScoreWindows`` take; all None when read once."""
  inventory_updates: Optional[Any] = None  # side input of inventory snapshots
  inventory_poll: Optional[Any] = None  # PolledRead of the inventory
  model_updates: Optional[Any] = None  # side input of the model pointer
  model_poll: Optional[Any] = None  # PolledRead of the model pointer


def plan_refreshes(p: beam.Pipeline, options: PipelineOptions) -> Refreshes:
  """The refreshes the flags and the runner call for; side-input reads are added to ``p``."""
  ev, det, ps = options.view_as(EventOptions), options.view_as(DetectOptions), options.view_as(PubSubSourceOptions)
  streaming = options.view_as(StandardOptions).streaming
  unbounded = streaming and not ev.events
  if not unbounded:
    return Refreshes()
  poll = refresh_by_polling(options.view_as(StandardOptions).runner)
  stops_when_idle = ((ev.events_watch and options.view_as(WatchOptions).watch_stop_idle > 0)
                     or ((ps.subscription or ps.topic) and ps.pubsub_stop_idle > 0))
  if not poll and stops_when_idle:
    return Refreshes()
  inventory_updates = inventory_poll = model_updates = model_poll = None
  if det.inventory_refresh > 0 and not det.inventory.startswith('bq://'):
    if poll:
      inventory_poll = InventoryRefresh.polled(det.inventory, det.inventory_refresh)
    else:
      refresh = InventoryRefresh(det.inventory, det.inventory_refresh)
      inventory_updates = refresh.side_input(p | 'InventoryRefresh' >> refresh)
  if det.model_refresh > 0 and not det.model_version:
    if poll:
      model_poll = WatchModelPointer.polled(det.model_dir, det.model_refresh)
    else:
      watch = WatchModelPointer(det.model_dir, det.model_refresh)
      model_updates = watch.side_input(p | 'WatchModel' >> watch)
  return Refreshes(inventory_updates, inventory_poll, model_updates, model_poll)
