"""`postauth run`: the detection pipeline, the same transforms in batch and streaming.

Read events -> per-identity sliding windows -> inventory enrichment -> identity history
-> batched scoring -> overlapping anomalous windows merged into findings (plus
unregistered identities and fleet-wide changes) -> suppression and deduplication ->
sinks; every record that cannot be used goes to the dead-letter sink with its reason.
Which source, which refresh and which sinks is decided by the transforms that own them
(``transforms/sources.py``, ``transforms/refresh_plan.py``, ``transforms/outputs.py``).
"""
from __future__ import annotations

from typing import Dict

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils import shared

from postauth.pipeline.options import AgentJoinOptions, DetectOptions, WindowOptions, disabled_rules
from postauth.pipeline.prism import lands_on_bundle_runner
from postauth.transforms.corroborate import CorroborateWithPeers
from postauth.transforms.findings import MergeOverlappingWindows
from postauth.transforms.fleet_notice import FleetChangeNotices
from postauth.transforms.history import UNREGISTERED as UNREGISTERED_WINDOWS
from postauth.transforms.history import refire_horizon, TrackHistory
from postauth.transforms.inventory import EnrichWindows, start_up_inventory
from postauth.transforms.lateness import beam_lateness
from postauth.transforms.outputs import WriteDeadLetters, WriteFindings, WriteSuppressed
from postauth.transforms.sinks import FileGathering
from postauth.transforms.timer_walk import in_global_window
from postauth.transforms.refresh_plan import plan_refreshes
from postauth.transforms.rules import FLEET_CHANGE, UNREGISTERED, RuleConfig
from postauth.transforms.agent_join import AgentPrincipals, JoinAgentCalls
from postauth.transforms.score import ScoreWindows
from postauth.transforms.sources import ReadEvents
from postauth.transforms.triage import SUPPRESSED, DeduplicateFindings, Suppress
from postauth.transforms.windowing import IdentityWindows


def build_detection(p: beam.Pipeline, options: PipelineOptions) -> Dict[str, beam.PCollection]:
  win, det = options.view_as(WindowOptions), options.view_as(DetectOptions)
  # Streaming windows keep state a margin past --allowed-lateness; later events are
  # dead-lettered by the source's gate, never dropped silently (transforms/lateness.py).
  batch = not options.view_as(StandardOptions).streaming
  lateness = 0 if batch else beam_lateness(win.allowed_lateness)
  disabled = disabled_rules(options)
  model = shared.Shared()  # one model per worker for history, scoring and fleet notices
  refresh = plan_refreshes(p, options)

  joined = AgentPrincipals.from_inventory(det.inventory)
  source = p | 'ReadEvents' >> ReadEvents(options, test_stream=lands_on_bundle_runner(options),
                                          pane_parts=not joined.agents_of)
  join = options.view_as(AgentJoinOptions)
  judged = (source.events
            | 'JoinAgentCalls' >> JoinAgentCalls(joined, join.join_clock_skew, join.join_window, lateness)
            | 'IdentityWindows' >> IdentityWindows(win.window_size, win.window_period, lateness,
                                                   grouped=batch)
            | 'Enrich' >> EnrichWindows(start_up_inventory(p, det.inventory, batch),
                                        refresh.inventory_updates, refresh.inventory_poll)
            | 'History' >> TrackHistory(det.model_dir, det.model_version,
                                        unregistered=UNREGISTERED not in disabled,
                                        period_seconds=win.window_period, shared_handle=model,
                                        ordered=not lands_on_bundle_runner(options),
                                        # batch too, so both fold the same way
                                        refire_horizon=refire_horizon(win.allowed_lateness,
                                                                      win.window_period),
                                        grouped=batch))
  # Batch: an identity's windows are scored and merged into findings where its history walked
  # them (one list per identity, no shuffle between); streaming: window by window.
  anomalies = (judged['windows']
               | 'Score' >> ScoreWindows(det.model_dir, det.threshold, det.model_version,
                                         window_period=win.window_period, allowed_lateness=lateness,
                                         rules=RuleConfig(disabled=disabled, dormant_days=det.dormant_days),
                                         shared_handle=model, model_updates=refresh.model_updates,
                                         pointer_poll=refresh.model_poll, grouped=batch)
               | 'MergeOverlapping' >> MergeOverlappingWindows(win.window_size, lateness, grouped=batch)
               | 'AskPeers' >> CorroborateWithPeers(judged['windows'], det.corroboration_delay,
                                                    det.corroboration_peers))
  unregistered = in_global_window(judged[UNREGISTERED_WINDOWS], 'UnregisteredGlobal')
  fleet = ([judged['windows'] | 'FleetChanges' >> FleetChangeNotices(
      det.model_dir, det.model_version, det.fleet_change_identities, model, lateness)]
           if FLEET_CHANGE not in disabled else [])

  # Each kind of finding is triaged where it is made and handed to the dedup as it is: one
  # Flatten of whole finding versions before a step would be a stage of its own, which every
  # version crosses encoded (transforms/timer_walk.py GroupWithTimestamps).
  triaged = [kind | f'Suppress{i}' >> Suppress(det.allowlist)
             for i, kind in enumerate([*anomalies, unregistered] + fleet)]
  findings = tuple(t.findings for t in triaged) | 'Deduplicate' >> DeduplicateFindings(det.dedup_period)
  suppressed = [t[SUPPRESSED] for t in triaged] | 'AllSuppressed' >> beam.Flatten()
  files = FileGathering()  # batch: the job's JSON-lines files, written by one step
  undelivered = findings | 'WriteFindings' >> WriteFindings(options, files=files)
  suppressed | 'WriteSuppressed' >> WriteSuppressed(options, files=files)
  dead_letters = [source.dead_letter] + ([source.late] if source.late is not None else []) + undelivered
  if len(dead_letters) > 1:
    dead_letters = dead_letters | 'AllDeadLetters' >> beam.Flatten()
  else:
    dead_letters = dead_letters[0]
  dead_letters | 'WriteDeadLetters' >> WriteDeadLetters(options, files=files)
  files.write()
  return {'findings': findings, 'dead_letter': dead_letters, 'events': source.events, 'late': source.late,
          'suppressed': suppressed}
