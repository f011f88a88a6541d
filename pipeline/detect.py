"""`postauth run`: the detection pipeline, the same transforms in batch and streaming.

parse -> per-identity sliding windows -> inventory enrichment (side input) ->
batched scoring -> overlapping anomalous windows merged into findings -> sinks.
"""
from __future__ import annotations

import logging
import os
from typing import Dict

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils import shared

from postauth.pipeline.prism import lands_on_bundle_runner
from postauth.pipeline.options import (DetectOptions, EventOptions, PubSubSourceOptions, WatchOptions,
                              WindowOptions, disabled_rules)
from postauth.transforms.findings import MergeOverlappingWindows
from postauth.transforms.history import UNREGISTERED as UNREGISTERED_TAG
from postauth.transforms.history import TrackHistory
from postauth.transforms.inventory import EnrichWindows, InventoryRefresh, InventorySnapshots
from postauth.transforms.outputs import (DEAD_LETTER, FINDING, SinkSpec, apply_sinks, dead_letter_spec,
                                sink_specs)
from postauth.transforms.fleet_notice import FleetChangeNotices
from postauth.transforms.rules import FLEET_CHANGE, UNREGISTERED, RuleConfig
from postauth.transforms.triage import SUPPRESSED, DeduplicateFindings, Suppress
from postauth.transforms.lateness import LATE, LateEventGate, beam_lateness
from postauth.transforms.parse import DEAD_LETTER as PARSE_DEAD_LETTER
from postauth.transforms.parse import ParseFiles, ParseRecords
from postauth.transforms.pubsub_source import ParsedStream, ReadPubSubEvents, choose_reader, pull_settings
from postauth.transforms.replay import ReplayFiles
from postauth.transforms.score import ScoreWindows, WatchModelPointer
from postauth.transforms.updates import refresh_by_polling
from postauth.transforms.watch import WatchFiles
from postauth.transforms.windowing import IdentityWindows


def dead_letter_path(options: PipelineOptions) -> str:
  return dead_letter_spec(options).target


def suppressed_path(options: PipelineOptions) -> str:
  """--suppressed, else suppressed.jsonl beside the dead-letter file."""
  det = options.view_as(DetectOptions)
  if det.suppressed:
    return det.suppressed
  base = dead_letter_path(options)
  if '://' in base:
    return base.rsplit('/', 1)[0] + '/suppressed.jsonl'
  return os.path.join(os.path.dirname(os.path.abspath(base)), 'suppressed.jsonl')


def build_detection(p: beam.Pipeline, options: PipelineOptions) -> Dict[str, beam.PCollection]:
  ev, win, det = (options.view_as(EventOptions), options.view_as(WindowOptions),
                  options.view_as(DetectOptions))
  streaming = options.view_as(StandardOptions).streaming
  ps = options.view_as(PubSubSourceOptions)
  replay = streaming and bool(ev.events)
  # Streaming: events later than --allowed-lateness are dead-lettered (reason "late") by
  # LateEventGate before the windows; the windows keep state a margin longer, so what the
  # gate lets through is not dropped silently (transforms/lateness.py).
  lateness = beam_lateness(win.allowed_lateness) if streaming else 0
  late = None
  if streaming and (ps.subscription or ps.topic):
    # Beam's native read on Dataflow and the DirectRunner, the splittable DoFn that acks at
    # bundle finalization elsewhere (--pubsub-reader; transforms/pubsub_sdf.py, docs/pubsub.md).
    reader = choose_reader(ps.pubsub_reader, str(options.view_as(StandardOptions).runner or ''))
    parsed = p | 'ReadPubSub' >> ReadPubSubEvents(
        ps.subscription, ps.topic, ps.timestamp_attribute, ev.format, ev.taxonomy_files,
        ps.dedup_seconds or win.window_size + lateness, window_period=win.window_period,
        allowed_lateness=win.allowed_lateness, reader=reader, pull_settings=pull_settings(ps),
        events_out=ps.events_out)
    late = parsed.late
  elif replay or (streaming and ev.events_watch):
    if replay:
      records = p | 'ReplayFiles' >> ReplayFiles(ev.events, det.replay_step,
                                                 test_stream=lands_on_bundle_runner(options))
    else:  # new files in a folder or bucket, read once each, event-time watermark (transforms/watch.py)
      w = options.view_as(WatchOptions)
      records = p | 'WatchFiles' >> WatchFiles(ev.events_watch, w.watch_interval, w.watch_max_delay,
                                               w.watch_idle_seconds, w.watch_idle_limit,
                                               w.watch_stop_idle)
    parsed = records | 'ParseRecords' >> ParseRecords(ev.format, ev.taxonomy_files, with_raw=True)
    gated = parsed.events | 'LateEvents' >> LateEventGate(win.window_period, win.allowed_lateness)
    parsed = ParsedStream(gated['events'], parsed[PARSE_DEAD_LETTER], gated[LATE])
    late = parsed.late
  else:
    parsed = p | 'ParseFiles' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files)
  # A bounded replay reads the inventory and the model once; an unbounded source re-reads
  # them every --inventory-refresh / --model-refresh seconds, taking effect mid-stream
  # (transforms/updates.py). Prism and the DirectRunner's runners do not deliver that
  # refreshed side input: there the enrich and score steps poll the same reads themselves.
  # (a watch told to stop after an idle spell, --watch-stop-idle, or a Pub/Sub source with
  # --pubsub-stop-idle, refreshes only by polling: the periodic impulse of the side input would
  # keep the job from ending)
  poll = streaming and not replay and refresh_by_polling(options.view_as(StandardOptions).runner)
  live = poll or (streaming and not replay and not (
      ev.events_watch and options.view_as(WatchOptions).watch_stop_idle > 0) and not (
      (ps.subscription or ps.topic) and ps.pubsub_stop_idle > 0))
  inventory = p | 'Inventory' >> InventorySnapshots(det.inventory)
  inventory_updates = inventory_poll = None
  if live and det.inventory_refresh > 0 and not det.inventory.startswith('bq://'):
    # (a BigQuery inventory is read once: re-reading a table every few minutes costs queries)
    if poll:
      inventory_poll = InventoryRefresh.polled(det.inventory, det.inventory_refresh)
    else:
      refresh = InventoryRefresh(det.inventory, det.inventory_refresh)
      inventory_updates = refresh.side_input(p | 'InventoryRefresh' >> refresh)
  model_updates = model_poll = None
  if live and det.model_refresh > 0 and not det.model_version:
    if poll:
      model_poll = WatchModelPointer.polled(det.model_dir, det.model_refresh)
    else:
      watch = WatchModelPointer(det.model_dir, det.model_refresh)
      model_updates = watch.side_input(p | 'WatchModel' >> watch)
  disabled = disabled_rules(options)
  model_handle = shared.Shared()  # one model per worker for history and scoring
  rule_config = RuleConfig(disabled=disabled, dormant_days=det.dormant_days)
  judged = (parsed.events
            | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period, lateness)
            | 'Enrich' >> EnrichWindows(inventory, inventory_updates, inventory_poll)
            | 'History' >> TrackHistory(det.model_dir, det.model_version,
                                        unregistered=UNREGISTERED not in disabled,
                                        period_seconds=win.window_period,
                                        shared_handle=model_handle))
  merged = (judged['windows']
            | 'Score' >> ScoreWindows(det.model_dir, det.threshold, det.model_version,
                                      window_period=win.window_period,
                                      allowed_lateness=lateness,
                                      rules=rule_config, shared_handle=model_handle,
                                      model_updates=model_updates, pointer_poll=model_poll)
            | 'MergeOverlapping' >> MergeOverlappingWindows(win.window_size, lateness))
  sources = [merged, judged[UNREGISTERED_TAG] | 'UnregisteredGlobal' >> beam.WindowInto(
      beam.transforms.window.GlobalWindows())]
  if FLEET_CHANGE not in disabled:
    sources.append(judged['windows'] | 'FleetChanges' >> FleetChangeNotices(
        det.model_dir, det.model_version, det.fleet_change_identities, model_handle, lateness))
  triaged = (sources
             | 'AllFindings' >> beam.Flatten()
             | 'Suppress' >> Suppress(det.allowlist))
  findings = triaged.findings | 'Deduplicate' >> DeduplicateFindings(det.dedup_period)
  undelivered = apply_sinks(findings, sink_specs(options), FINDING, streaming, options, 'WriteFindings')
  apply_sinks(triaged[SUPPRESSED], [SinkSpec('jsonl', suppressed_path(options), suppressed_path(options))],
              FINDING, streaming, options, 'WriteSuppressed')
  dead_letters = parsed.dead_letter
  extra = ([late] if late is not None else []) + list(undelivered or [])
  if extra:
    dead_letters = [dead_letters] + extra | 'AllDeadLetters' >> beam.Flatten()
  apply_sinks(dead_letters, [dead_letter_spec(options)], DEAD_LETTER, streaming, options,
              'WriteDeadLetters')
  return {'findings': findings, 'dead_letter': dead_letters, 'events': parsed.events, 'late': late,
          'suppressed': triaged[SUPPRESSED]}
