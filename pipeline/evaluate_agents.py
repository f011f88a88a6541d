"""The AI-agent fleet's evaluation (OpenTelemetry tool-call spans), beside CloudTrail's.

For each seed: ``pipeline.agent_fleet`` writes a labelled agent fleet as OTLP/JSON, postauth
trains on its history and runs the batch detection on its live day, and ``pipeline.evaluate``
scores the findings against the labels (attacks paged, pages per 1,000 agent-days, per
benign kind). Same windows, features, models and rules as for cloud logs: nothing here is
agent-specific but the input.
"""
from __future__ import annotations

import glob
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple


def describe_agents(counts: Dict) -> str:
  return (f'{counts["agents"]} agents, {counts["history_tool_calls"]} history and '
          f'{counts["live_tool_calls"]} live tool calls, {counts["labels"]} injected attacks')


def agent_sample_run(out: str, agents: int = 40, days: int = 7, seed: int = 7,
                     beam_args: Optional[List[str]] = None, echo: Callable[[str], None] = lambda line: None) -> Dict:
  """generate agents -> train -> batch detection under ``out`` (the shared ``sample_run``)."""
  from postauth.pipeline.agent_fleet import generate_agents
  from postauth.pipeline.sample_run import sample_run
  return sample_run(out, agents, days, seed, batch=True, beam_args=beam_args, echo=echo,
                    generate=generate_agents, describe=describe_agents)


def evaluate_agent_seeds(out: str, seeds: Sequence[int], agents: int = 40, days: int = 7,
                         beam_args: Optional[List[str]] = None, echo=print) -> Tuple[Dict, str]:
  """(report, markdown) over the seeds: per-seed attack table and the pages across seeds."""
  from postauth.pipeline import evaluate as ev
  from postauth.pipeline import evaluate_tables as tables
  per_seed: List[Tuple[int, Dict]] = []
  report: Dict = {'agents': agents, 'days': days, 'seeds': list(seeds), 'per_seed': {}, 'timings_s': {}}
  md: List[str] = []
  for seed in seeds:
    t = time.time()
    done = agent_sample_run(os.path.join(out, f'agents-seed-{seed}'), agents, days, seed, beam_args)
    sample = done['sample']
    result = ev.evaluate_files(done['findings'], os.path.join(sample, 'labels.json'),
                               os.path.join(sample, 'benign.json'),
                               sorted(glob.glob(os.path.join(sample, 'live', '*'))))
    per_seed.append((seed, result))
    report['per_seed'][str(seed)] = result
    report['timings_s'][f'agents_seed_{seed}'] = round(time.time() - t, 1)
    echo(f'agents seed {seed}: {result["pages"]["attacks_paged"]}/{result["attacks"]} attacks paged, '
         f'{result["pages"]["pages"]} pages matching no attack in {result["identity_days"]} agent-days '
         f'({time.time() - t:.1f}s)')
    md += [f'Agent fleet, seed {seed}: {done["counts"]["agents"]} agents x {days} days, '
           f'{done["counts"]["live_tool_calls"]} live tool calls; batch detection.', '',
           tables.to_markdown(result), '']
  report['pages'] = ev.pages_over_seeds(per_seed)
  md += [f'Agent fleet: pages (medium or above) that match no attack, seeds '
         f'{", ".join(str(s) for s, _ in per_seed)}:', '', tables.pages_markdown(report['pages'], per_seed)]
  return report, '\n'.join(md)


def joint_outcomes(findings: Sequence[dict], labels: Sequence[dict], identity_days: Optional[int] = None) -> Dict:
  """A joint fleet's attacks (``agent_fleet --joint``) against the findings, where a finding may name
  the agent (spans) or the role it runs as (cloud records): per attack, whether a finding at medium
  or above on the label's ``identity`` or its ``principal`` overlaps the label's time range; and the
  pages (medium or above) that match no attack, per 1,000 identity-days when ``identity_days`` is given."""
  from postauth.pipeline import evaluate as ev
  ranked = ev.rank_findings(ev.latest_versions(findings))

  def hit(finding: dict, label: dict) -> bool:
    return any(ev.matches(finding, dict(label, identity=who)) for who in (label['identity'], label.get('principal')) if who)

  attacks = []
  for label in labels:
    paged = [f for f in ranked if ev.is_page(f) and hit(f, label)]
    attacks.append({'scenario': label.get('scenario'), 'identity': label['identity'],
                    'principal': label.get('principal', ''), 'paged': bool(paged),
                    'paged_on': sorted({f['identity'] for f in paged})})
  false = [f for f in ranked if ev.pages_of(f) and not any(hit(f, l) for l in labels)]
  pages = sum(ev.pages_of(f) for f in false)
  return {'attacks': attacks, 'attacks_paged': sum(1 for a in attacks if a['paged']), 'pages': pages,
          'findings_paged': len(false), 'identity_days': identity_days,
          'pages_per_1000_identity_days': round(1000.0 * pages / identity_days, 2) if identity_days else None}


def joint_outcomes_files(findings: str, sample: str) -> Dict:
  """``joint_outcomes`` of a findings file on a joint sample (identity-days: its live files' events)."""
  from postauth.pipeline import evaluate as ev
  days, _, _ = ev.identity_days_of_events(sorted(glob.glob(os.path.join(sample, 'live', '*'))))
  return joint_outcomes(ev.read_json_lines(findings), ev.read_cases(os.path.join(sample, 'labels.json')), days)


def evaluate_joint_seeds(out: str, seeds: Sequence[int], agents: int = 40, days: int = 7,
                         beam_args: Optional[List[str]] = None, echo=print) -> Dict:
  """The joint fleet (spans and the roles' CloudTrail, ``agent_fleet --joint``) per seed:
  generate -> train -> batch detection -> ``joint_outcomes_files``."""
  import functools
  from postauth.pipeline.agent_fleet import generate_agents
  from postauth.pipeline.sample_run import sample_run
  report: Dict = {'agents': agents, 'days': days, 'per_seed': {}}
  for seed in seeds:
    t = time.time()
    done = sample_run(os.path.join(out, f'joint-seed-{seed}'), agents, days, seed, batch=True,
                      beam_args=beam_args, generate=functools.partial(generate_agents, joint=True),
                      describe=describe_agents)
    result = joint_outcomes_files(done['findings'], done['sample'])
    report['per_seed'][str(seed)] = result
    echo(f'joint seed {seed}: {result["attacks_paged"]}/{len(result["attacks"])} attacks paged, '
         f'{result["pages"]} pages matching no attack in {result["identity_days"]} identity-days '
         f'({time.time() - t:.1f}s)')
    for a in result['attacks']:
      echo(f'  {a["scenario"]}: {"paged on " + ", ".join(a["paged_on"]) if a["paged"] else "MISSED"}')
  return report


if __name__ == '__main__':
  import argparse
  import json
  ap = argparse.ArgumentParser(description='Evaluate the joint agent fleet (spans + CloudTrail).')
  ap.add_argument('--out', default='out/evaluate-joint')
  ap.add_argument('--seeds', default='7,8')
  ap.add_argument('--agents', type=int, default=40)
  a = ap.parse_args()
  summary = evaluate_joint_seeds(a.out, [int(s) for s in a.seeds.split(',')], a.agents)
  with open(os.path.join(a.out, 'joint.json'), 'w') as f:
    json.dump(summary, f, indent=1)
