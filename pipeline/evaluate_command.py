"""`postauth evaluate`: a run's findings against its labels, as tables (no Beam job: files).

With a streaming run's two logs (``--arrivals``, ``--published``) the table also shows
each attack's wall-clock delay to the sink (``pipeline/sink_delay.py``).
"""
from __future__ import annotations

import glob
import json
from typing import List

from postauth.pipeline import evaluate
from postauth.pipeline.evaluate_tables import to_markdown
from postauth.pipeline import options as opts
from postauth.transforms.options import CommandParser


def main(argv: List[str]) -> int:
  """`postauth evaluate`."""
  ap = CommandParser(prog='postauth evaluate',
                     description='Detection quality of a run\'s findings against labelled attacks '
                                 'and benign changes (no Beam job: reads the files).')
  ap.add_argument('--findings', required=True, help='Findings JSON lines written by `postauth run --findings`.')
  ap.add_argument('--labels', required=True, help='labels.json: [{identity, scenario, start, end}].')
  ap.add_argument('--benign', default=None, help='benign.json: legitimate changes that should stay low or silent.')
  ap.add_argument('--events', action='append', default=[],
                  help='Glob of the evaluated event files (repeatable): identity-days for the false-alert rate.')
  ap.add_argument('--identity-days', type=int, default=None,
                  help='Identity-days evaluated, when the events are not at hand.')
  ap.add_argument('--window-size', type=float, default=3600.0,
                  help='The run\'s --window-size in seconds (when a finding\'s first window closed).')
  ap.add_argument('--arrivals', default=None,
                  help='Streaming: finding versions as read from the sink, each with "_arrival" (epoch s).')
  ap.add_argument('--published', default=None,
                  help='Streaming: {"event_time", "published_at"} per input message, in publish order.')
  ap.add_argument('--watermark-max-delay', type=float, default=60.0,
                  help='The streaming run\'s --watermark-max-delay (which message closed a window).')
  ap.add_argument('--out', default=None, help='Write the report as JSON here.')
  ap.add_argument('--markdown', default=None, help='Write the tables as markdown here.')
  a = ap.parse_args(argv)
  from postauth.pipeline.preflight import check_output_file
  check_output_file('--out', a.out)
  check_output_file('--markdown', a.markdown)
  paths = sorted({p for g in a.events for p in glob.glob(g)})
  if a.events and not paths:
    raise opts.OptionsError(f'--events {a.events} matches no file')
  if bool(a.arrivals) != bool(a.published):
    raise opts.OptionsError('--arrivals and --published go together (the wall-clock delay needs both)')
  report = evaluate.evaluate_files(a.findings, a.labels, a.benign, paths, a.identity_days, a.window_size)
  if a.arrivals:
    from postauth.pipeline.sink_delay import sink_delays_from_files
    delays = sink_delays_from_files(a.arrivals, a.published, evaluate.read_cases(a.labels), a.watermark_max_delay)
    report['sink_delay'] = delays
    report['wall_clock'] = delays['per_attack']
  md = to_markdown(report)
  if a.out:
    with open(a.out, 'w') as f:
      json.dump(report, f, indent=1)
  if a.markdown:
    with open(a.markdown, 'w') as f:
      f.write(md)
  print(md)
  return 0
