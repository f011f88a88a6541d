"""Detection quality, regenerated in one command: the README's "Detection quality" tables.

    python bench/evaluate.py [--out out/evaluate] [--identities 200] [--days 7] [--seed 7]
                             [--more-seeds 8,9] [--no-streaming] [--real-data ../shared/data]
                             [--agent-seeds 7,8,9] [--agents 40] [--quiet-seeds 7]

Generates the labelled sample (`postauth demo`'s defaults), trains, runs the batch
detection, evaluates it (`postauth evaluate`), replays the live day as a stream and
evaluates that too, then runs batch detection with the same model over every real
sample set. Then, for each of ``--more-seeds``, the same sample, training and batch
detection again: pages per 1,000 identity-days, overall and per benign kind, over all
the seeds. Then, for each of ``--quiet-seeds``, the quiet-history mode (``generate(quiet_history=True)``:
no change on the history days, a third of the fleet changing on the live day) the same way, in
its own pages table. Then the AI-agent fleet (OpenTelemetry tool-call spans, ``pipeline/agent_fleet.py``)
for each of ``--agent-seeds``: sample, training, batch detection, the same report beside
CloudTrail's (``pipeline/evaluate_agents.py``). Writes ``OUT/report.json`` and ``OUT/report.md`` and prints the markdown.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

DEFAULT_REAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data')


def main(argv=None) -> int:
  from postauth.pipeline import evaluate as ev
  from postauth.pipeline import evaluate_tables as tables
  from postauth.pipeline.evaluate_real import evaluate_real
  from postauth.pipeline.jobs import run
  from postauth.pipeline.sample_run import sample_run
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--out', default='out/evaluate')
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--seed', type=int, default=7)
  ap.add_argument('--more-seeds', default='8,9',
                  help='Further generator seeds for the page rates (batch only; "" for none).')
  ap.add_argument('--no-streaming', action='store_true', help='Skip the streaming replay.')
  ap.add_argument('--quiet-seeds', default='7',
                  help='Generator seeds of the quiet-history mode for the page rates (batch only; "" for none).')
  ap.add_argument('--agent-seeds', default='7,8,9',
                  help='Seeds of the AI-agent fleet (OpenTelemetry tool spans) evaluation ("" for none).')
  ap.add_argument('--agents', type=int, default=40, help='Agents in each agent-fleet sample.')
  ap.add_argument('--real-data', default=DEFAULT_REAL, help='Root of the real samples ("" to skip).')
  a, beam_args = ap.parse_known_args(argv)
  out = os.path.abspath(a.out)
  t0 = time.time()
  done = sample_run(out, a.identities, a.days, a.seed, batch=True, beam_args=beam_args,
                    echo=lambda line: print(line, file=sys.stderr, flush=True))
  sample = done['sample']
  events = sorted(glob.glob(os.path.join(sample, 'live', '*')))
  labels, benign = os.path.join(sample, 'labels.json'), os.path.join(sample, 'benign.json')
  report = {'command': 'python bench/evaluate.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
            'sample': {'identities': done['counts']['identities'], 'days': a.days, 'seed': a.seed,
                       'live_events': done['counts']['live_events']},
            'timings_s': {k: round(v, 1) for k, v in done['timings'].items()}}
  report['batch'] = ev.evaluate_files(done['findings'], labels, benign, events)
  md = [f'Sample: {done["counts"]["identities"]} identities x {a.days} days (seed {a.seed}), '
        f'{done["counts"]["live_events"]} live events; batch detection.', '',
        tables.to_markdown(report['batch'])]
  if not a.no_streaming:
    t = time.time()
    streamed = os.path.join(out, 'findings-streaming.jsonl')
    run([f'--events={sample}/live/*', f'--inventory={sample}/inventory.csv', f'--model-dir={done["model_dir"]}',
         f'--findings={streamed}', '--streaming'] + beam_args)
    report['timings_s']['detect_streaming'] = round(time.time() - t, 1)
    report['streaming'] = ev.evaluate_files(streamed, labels, benign, events)
    same = all(report['streaming'][k] == report['batch'][k]
               for k in ('scenarios', 'precision_at', 'pr_auc', 'false_alerts', 'benign'))
    report['streaming_equals_batch'] = same
    s = report['streaming']
    md.append(f'Streaming replay of the same day (watermark-driven, DirectRunner): '
              f'{s["attacks_detected"]}/{s["attacks"]} detected, PR-AUC {s["pr_auc"]}, '
              f'{s["false_alerts_per_1000_identity_days"]} false alerts per 1,000 identity-days; '
              f'{"identical to" if same else "DIFFERS from"} batch.\n')
  if a.real_data and os.path.isdir(a.real_data):
    t = time.time()
    rows = evaluate_real(a.real_data, done['model_dir'], os.path.join(sample, 'inventory.csv'),
                         os.path.join(out, 'real'), beam_args)
    report['timings_s']['real_data'] = round(time.time() - t, 1)
    report['real'] = rows
    md += ['Real samples (batch detection with the model above; none of their identities is in its inventory):',
           '', tables.real_markdown(rows)]
  elif a.real_data:
    print(f'real samples skipped: {a.real_data} is absent', file=sys.stderr)
  def seed_run(name, seed, generate=None):
    t = time.time()
    more = sample_run(os.path.join(out, name), a.identities, a.days, seed, batch=True, beam_args=beam_args,
                      echo=lambda line: print(line, file=sys.stderr, flush=True), generate=generate)
    s_dir = more['sample']
    report['timings_s'][name.replace('-', '_')] = round(time.time() - t, 1)
    return ev.evaluate_files(more['findings'], os.path.join(s_dir, 'labels.json'), os.path.join(s_dir, 'benign.json'),
                             sorted(glob.glob(os.path.join(s_dir, 'live', '*'))))

  per_seed = [(a.seed, report['batch'])]
  per_seed += [(seed, seed_run(f'seed-{seed}', seed)) for seed in [int(x) for x in a.more_seeds.split(',') if x.strip()]]
  report['pages'] = ev.pages_over_seeds(per_seed)
  report['pages_per_seed'] = {str(seed): r['pages'] for seed, r in per_seed}
  md += [f'Pages (findings at medium or above) that match no attack, batch detection, seeds '
         f'{", ".join(str(s) for s, _ in per_seed)}:', '', tables.pages_markdown(report['pages'], per_seed)]
  quiet_seeds = [int(x) for x in a.quiet_seeds.split(',') if x.strip()]
  if quiet_seeds:  # the quiet history: no change before the live day, a third of the fleet changing on it
    from functools import partial
    from postauth.pipeline.generate import generate
    quiet = [(f'{seed} quiet', seed_run(f'quiet-{seed}', seed, partial(generate, quiet_history=True)))
             for seed in quiet_seeds]
    report['pages_quiet'] = ev.pages_over_seeds(quiet)
    report['pages_quiet_per_seed'] = {s: r['pages'] for s, r in quiet}
    md += [f'Quiet history (no change on the history days, a third of the fleet changing on the live day), '
           f'batch detection, seeds {", ".join(str(s) for s in quiet_seeds)}:', '',
           tables.pages_markdown(report['pages_quiet'], quiet)]
  agent_seeds = [int(x) for x in a.agent_seeds.split(',') if x.strip()]
  if agent_seeds:  # the agent fleet, beside CloudTrail (pipeline/evaluate_agents.py)
    from postauth.pipeline.evaluate_agents import evaluate_agent_seeds
    t = time.time()
    report['agents'], agent_md = evaluate_agent_seeds(
        out, agent_seeds, a.agents, a.days, beam_args,
        echo=lambda line: print(line, file=sys.stderr, flush=True))
    report['timings_s']['agents'] = round(time.time() - t, 1)
    md += ['## AI agents (OpenTelemetry GenAI tool-call spans)', '', agent_md]
  report['timings_s']['total'] = round(time.time() - t0, 1)
  md.append('Time: ' + ', '.join(f'{k} {v} s' for k, v in report['timings_s'].items()))
  text = '\n'.join(md) + '\n'
  with open(os.path.join(out, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out, 'report.md'), 'w') as f:
    f.write(text)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
