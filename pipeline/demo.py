"""`postauth demo`: generate a labelled sample, train, run the streaming detection, summarise.

What a new user runs first (``make demo``): it ends with the top findings, how many of
the injected attacks they hold, the counters, and the HTML report's path.
"""
from __future__ import annotations

import json
import os
from typing import List

from postauth.pipeline import summary
from postauth.pipeline.sample_run import sample_run
from postauth.pipeline.options import CommandParser, refuse_bad_arguments


def main(argv: List[str]) -> int:
  """`postauth demo`: the README's first command."""
  ap = CommandParser(prog='postauth demo')
  ap.add_argument('--out', default='out')
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--seed', type=int, default=7)
  ap.add_argument('--batch', action='store_true', help='Run detection in batch mode instead of streaming.')
  ap.add_argument('--top', type=int, default=8)
  a, beam_args = ap.parse_known_args(argv)
  refuse_bad_arguments(beam_args)  # the runner's flags go to train and run: refused before generating
  from postauth.pipeline.preflight import check_output_folder
  check_output_folder('--out', a.out)
  done = sample_run(a.out, a.identities, a.days, a.seed, a.batch, beam_args,
                    echo=lambda line: print(line, flush=True))
  findings, ran, timings = done['findings'], done['ran'], done['timings']
  found = summary.read_findings(findings)
  print(summary.render(found, top=a.top))
  with open(os.path.join(done['sample'], 'labels.json')) as f:
    labels = json.load(f)
  hit = {l['identity'] for l in labels} & {f['identity'] for f in found[:len(labels)]}
  print(f'\ninjected attacks among the top {len(labels)} findings: {len(hit)}/{len(labels)}')
  print(summary.render_counters(ran['counters']))
  from postauth.pipeline.report_html import write_report
  report = write_report(findings, os.path.join(os.path.abspath(a.out), 'report.html'),
                        [f'{done["sample"]}/history/*', f'{done["sample"]}/live/*'], done['model_dir'])
  print(f'findings: {findings}\ndead letters: {ran["dead_letters"]}\nmodel: {done["model_dir"]}')
  print(f'report: {report["report"]}')
  print('time: ' + ', '.join(f'{k} {v:.1f}s' for k, v in timings.items())
        + f', total {sum(timings.values()):.1f}s')
  return 0
