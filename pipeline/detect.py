"""`postauth run`: the detection pipeline, the same transforms in batch and streaming.

parse -> per-identity sliding windows -> inventory enrichment (side input) ->
batched scoring -> overlapping anomalous windows merged into findings -> sinks.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils import shared

from pipeline.options import DetectOptions, EventOptions, WindowOptions, disabled_rules
from transforms.findings import MergeOverlappingWindows
from transforms.history import UNREGISTERED as UNREGISTERED_TAG
from transforms.history import TrackHistory
from transforms.inventory import EnrichWindows, InventorySnapshots
from transforms.rules import UNREGISTERED, RuleConfig
from transforms.triage import SUPPRESSED, DeduplicateFindings, Suppress
from transforms.parse import ParseFiles, ParseRecords
from transforms.replay import ReplayFiles
from transforms.score import ScoreWindows
from transforms.sinks import WriteJsonLines
from transforms.windowing import IdentityWindows


def dead_letter_path(options: PipelineOptions) -> str:
  ev, det = options.view_as(EventOptions), options.view_as(DetectOptions)
  return ev.dead_letters or os.path.join(os.path.dirname(os.path.abspath(det.findings)),
                                         'dead-letter.jsonl')


def suppressed_path(options: PipelineOptions) -> str:
  det = options.view_as(DetectOptions)
  return det.suppressed or os.path.join(os.path.dirname(os.path.abspath(det.findings)),
                                        'suppressed.jsonl')


def build_detection(p: beam.Pipeline, options: PipelineOptions) -> Dict[str, beam.PCollection]:
  ev, win, det = (options.view_as(EventOptions), options.view_as(WindowOptions),
                  options.view_as(DetectOptions))
  streaming = options.view_as(StandardOptions).streaming
  replay = streaming and bool(ev.events)
  if replay:
    records = p | 'ReplayFiles' >> ReplayFiles(ev.events, det.replay_step)
    parsed = records | 'ParseRecords' >> ParseRecords(ev.format, ev.taxonomy_files)
  else:
    parsed = p | 'ParseFiles' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files)
  # A bounded replay reads the inventory once (a periodic re-read never ends);
  # an unbounded source re-reads it every --inventory-refresh seconds.
  refresh = det.inventory_refresh if streaming and not replay else 0
  runner = str(options.view_as(StandardOptions).runner or 'DirectRunner')
  if refresh and 'Direct' in runner:
    # The DirectRunner releases a global-window side input only at the end of
    # input, so a periodically refreshed inventory would block the job forever.
    logging.warning('%s: the inventory is read once (--inventory-refresh needs Dataflow, '
                    'Flink or another runner with triggered side inputs)', runner)
    refresh = 0
  inventory = p | 'Inventory' >> InventorySnapshots(det.inventory, refresh)
  disabled = disabled_rules(options)
  model_handle = shared.Shared()  # one model per worker for history and scoring
  rule_config = RuleConfig(disabled=disabled, dormant_days=det.dormant_days)
  judged = (parsed.events
            | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period,
                                                   win.allowed_lateness)
            | 'Enrich' >> EnrichWindows(inventory)
            | 'History' >> TrackHistory(det.model_dir, det.model_version,
                                        unregistered=UNREGISTERED not in disabled,
                                        period_seconds=win.window_period,
                                        shared_handle=model_handle))
  merged = (judged['windows']
            | 'Score' >> ScoreWindows(det.model_dir, det.threshold, det.model_version,
                                      rules=rule_config, shared_handle=model_handle)
            | 'MergeOverlapping' >> MergeOverlappingWindows(win.window_size, win.allowed_lateness))
  triaged = ((merged, judged[UNREGISTERED_TAG] | 'UnregisteredGlobal' >> beam.WindowInto(
                 beam.transforms.window.GlobalWindows()))
             | 'AllFindings' >> beam.Flatten()
             | 'Suppress' >> Suppress(det.allowlist))
  findings = triaged.findings | 'Deduplicate' >> DeduplicateFindings(det.dedup_period)
  (findings
   | 'FindingsToJson' >> beam.Map(lambda f: json.dumps(f, sort_keys=True))
   | 'WriteFindings' >> WriteJsonLines(det.findings, streaming))
  (triaged[SUPPRESSED]
   | 'SuppressedToJson' >> beam.Map(lambda f: json.dumps(f, sort_keys=True))
   | 'WriteSuppressed' >> WriteJsonLines(suppressed_path(options), streaming))
  parsed.dead_letter | 'WriteDeadLetters' >> WriteJsonLines(dead_letter_path(options), streaming)
  return {'findings': findings, 'dead_letter': parsed.dead_letter, 'events': parsed.events,
          'suppressed': triaged[SUPPRESSED]}
