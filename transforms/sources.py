"""Where events come from, chosen by the flags: one transform, four sources.

- ``--events`` in batch: whole files parsed (``ParseFiles``) into pane parts: the batch job
  needs each identity's 15 min panes, not its events, so events are aggregated where they
  are parsed and never become Beam elements (``ParseFileToPanesFn``);
- ``--events`` with ``--streaming``: the files replayed in event-time order (``ReplayFiles``);
- ``--events-watch``: new files in a folder or bucket, read once each (``WatchFiles``);
- ``--subscription``/``--topic``: Pub/Sub, Beam's native read or postauth's splittable
  reader that acks at bundle finalization (``--pubsub-reader``; docs/pubsub.md).

Every branch gives the same ``ParsedStream``: canonical events (in batch, pane parts that
``IdentityWindows`` takes as it takes events), dead letters with their
reason and raw payload, and (in streaming) the events later than ``--allowed-lateness``,
which are dead-lettered, never dropped (transforms/lateness.py). Every branch gets the same
``ReadLimits``: record and gzip bounds, and the clock skew beyond which a record's time moves
no watermark and the record is a dead letter (transforms/clock.py).
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.transforms.options import DetectOptions, EventOptions, PubSubSourceOptions, WatchOptions, WindowOptions
from postauth.transforms.lateness import LATE, LateEventGate, beam_lateness
from postauth.transforms.parse import DEAD_LETTER, ParseFiles, ParseRecords
from postauth.transforms.records import ReadLimits
from postauth.transforms.pubsub_source import ParsedStream, ReadPubSubEvents, choose_reader, pull_settings
from postauth.transforms.replay import ReplayFiles
from postauth.transforms.watch import WatchFiles


def is_replay(options: PipelineOptions) -> bool:
  """A bounded streaming run: files replayed with an advancing watermark."""
  return bool(options.view_as(StandardOptions).streaming and options.view_as(EventOptions).events)


class ReadEvents(beam.PTransform):
  """The run's events as a ``ParsedStream``, from files, a file watch or Pub/Sub.

  ``test_stream``: replay with ``TestStream`` instead of the splittable replay (the
  BundleBasedDirectRunner cannot expand an unbounded SDF; ``pipeline.prism`` decides).
  ``pane_parts=False``: batch events stay events (a step before the windows needs each one).
  """

  def __init__(self, options: PipelineOptions, test_stream: bool = False, pane_parts: bool = True):
    super().__init__()
    self._options = options
    self._test_stream = test_stream
    self._pane_parts = pane_parts  # batch: aggregate per identity-pane while parsing

  def expand(self, pbegin: beam.pvalue.PBegin) -> ParsedStream:
    o = self._options
    ev, win, ps = o.view_as(EventOptions), o.view_as(WindowOptions), o.view_as(PubSubSourceOptions)
    streaming = o.view_as(StandardOptions).streaming
    limits = ReadLimits.from_options(o)
    if not streaming:
      parsed = pbegin | 'ParseFiles' >> ParseFiles(
          ev.events, ev.format, ev.taxonomy_files, limits,
          pane_seconds=win.window_period if self._pane_parts else None)
      return ParsedStream(parsed.events, parsed.dead_letter, None)
    if ps.subscription or ps.topic:
      reader = choose_reader(ps.pubsub_reader, str(o.view_as(StandardOptions).runner or ''))
      return pbegin | 'ReadPubSub' >> ReadPubSubEvents(
          ps.subscription, ps.topic, ps.timestamp_attribute, ev.format, ev.taxonomy_files,
          ps.dedup_seconds or win.window_size + beam_lateness(win.allowed_lateness),
          window_period=win.window_period, allowed_lateness=win.allowed_lateness, reader=reader,
          pull_settings=pull_settings(ps), events_out=ps.events_out, limits=limits)
    if ev.events:
      records = pbegin | 'ReplayFiles' >> ReplayFiles(
          ev.events, o.view_as(DetectOptions).replay_step, test_stream=self._test_stream, limits=limits)
    else:
      w = o.view_as(WatchOptions)
      records = pbegin | 'WatchFiles' >> WatchFiles(ev.events_watch, w.watch_interval, w.watch_max_delay,
                                                    w.watch_idle_seconds, w.watch_idle_limit, w.watch_stop_idle,
                                                    limits=limits)
    parsed = records | 'ParseRecords' >> ParseRecords(ev.format, ev.taxonomy_files, with_raw=True, limits=limits)
    gated = parsed.events | 'LateEvents' >> LateEventGate(win.window_period, win.allowed_lateness)
    return ParsedStream(gated['events'], parsed[DEAD_LETTER], gated[LATE])
