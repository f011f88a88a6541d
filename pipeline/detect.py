"""`postauth run`: the detection pipeline, the same transforms in batch and streaming.

parse -> per-identity sliding windows -> inventory enrichment (side input) ->
batched scoring -> overlapping anomalous windows merged into findings -> sinks.
"""
from __future__ import annotations

from typing import Dict

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.options import DetectOptions, EventOptions, PubSubSourceOptions, WindowOptions
from transforms.findings import MergeOverlappingWindows
from transforms.inventory import EnrichWindows, ReadInventory
from transforms.outputs import DEAD_LETTER, FINDING, apply_sinks, dead_letter_spec, sink_specs
from transforms.parse import ParseFiles, ParseRecords
from transforms.pubsub_source import ReadPubSubEvents
from transforms.replay import ReplayFiles
from transforms.score import ScoreWindows
from transforms.windowing import IdentityWindows


def dead_letter_path(options: PipelineOptions) -> str:
  return dead_letter_spec(options).target


def build_detection(p: beam.Pipeline, options: PipelineOptions) -> Dict[str, beam.PCollection]:
  ev, win, det = (options.view_as(EventOptions), options.view_as(WindowOptions),
                  options.view_as(DetectOptions))
  streaming = options.view_as(StandardOptions).streaming
  ps = options.view_as(PubSubSourceOptions)
  if streaming and (ps.subscription or ps.topic):
    parsed = p | 'ReadPubSub' >> ReadPubSubEvents(
        ps.subscription, ps.topic, ps.timestamp_attribute, ev.format, ev.taxonomy_files,
        ps.dedup_seconds or win.window_size + win.allowed_lateness)
  elif streaming:
    records = p | 'ReplayFiles' >> ReplayFiles(ev.events, det.replay_step)
    parsed = records | 'ParseRecords' >> ParseRecords(ev.format, ev.taxonomy_files)
  else:
    parsed = p | 'ParseFiles' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files)
  inventory = p | 'ReadInventory' >> ReadInventory(det.inventory)
  findings = (parsed.events
              | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period,
                                                     win.allowed_lateness)
              | 'Enrich' >> EnrichWindows(inventory)
              | 'Score' >> ScoreWindows(det.model_dir, det.threshold, det.model_version,
                                       window_period=win.window_period,
                                       allowed_lateness=win.allowed_lateness)
              | 'MergeOverlapping' >> MergeOverlappingWindows(win.window_size, win.allowed_lateness))
  undelivered = apply_sinks(findings, sink_specs(options), FINDING, streaming, options, 'WriteFindings')
  dead_letters = parsed.dead_letter
  if undelivered:
    dead_letters = [dead_letters] + undelivered | 'AllDeadLetters' >> beam.Flatten()
  apply_sinks(dead_letters, [dead_letter_spec(options)], DEAD_LETTER, streaming, options,
              'WriteDeadLetters')
  return {'findings': findings, 'dead_letter': dead_letters, 'events': parsed.events}
