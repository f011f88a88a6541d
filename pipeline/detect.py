"""`postauth run`: the detection pipeline, the same transforms in batch and streaming.

parse -> per-identity sliding windows -> inventory enrichment (side input) ->
batched scoring -> overlapping anomalous windows merged into findings -> sinks.
"""
from __future__ import annotations

import json
import os
from typing import Dict

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.options import DetectOptions, EventOptions, WindowOptions
from transforms.findings import MergeOverlappingWindows
from transforms.inventory import EnrichWindows, ReadInventory
from transforms.parse import ParseFiles, ParseRecords
from transforms.replay import ReplayFiles
from transforms.score import ScoreWindows
from transforms.sinks import WriteJsonLines
from transforms.windowing import IdentityWindows


def dead_letter_path(options: PipelineOptions) -> str:
  ev, det = options.view_as(EventOptions), options.view_as(DetectOptions)
  return ev.dead_letters or os.path.join(os.path.dirname(os.path.abspath(det.findings)),
                                         'dead-letter.jsonl')


def build_detection(p: beam.Pipeline, options: PipelineOptions) -> Dict[str, beam.PCollection]:
  ev, win, det = (options.view_as(EventOptions), options.view_as(WindowOptions),
                  options.view_as(DetectOptions))
  streaming = options.view_as(StandardOptions).streaming
  if streaming:
    records = p | 'ReplayFiles' >> ReplayFiles(ev.events, det.replay_step)
    parsed = records | 'ParseRecords' >> ParseRecords(ev.format, ev.taxonomy_files)
  else:
    parsed = p | 'ParseFiles' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files)
  inventory = p | 'ReadInventory' >> ReadInventory(det.inventory)
  findings = (parsed.events
              | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period,
                                                     win.allowed_lateness)
              | 'Enrich' >> EnrichWindows(inventory)
              | 'Score' >> ScoreWindows(det.model_dir, det.threshold, det.model_version)
              | 'MergeOverlapping' >> MergeOverlappingWindows(win.window_size, win.allowed_lateness))
  (findings
   | 'FindingsToJson' >> beam.Map(lambda f: json.dumps(f, sort_keys=True))
   | 'WriteFindings' >> WriteJsonLines(det.findings, streaming))
  parsed.dead_letter | 'WriteDeadLetters' >> WriteJsonLines(dead_letter_path(options), streaming)
  return {'findings': findings, 'dead_letter': parsed.dead_letter, 'events': parsed.events}
