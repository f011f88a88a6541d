"""Pages per 1,000 identity-days over several generator seeds: the alert-budget check of issue 12.

    python bench/pages.py [--seeds 7,8,9] [--identities 200] [--out out/pages]

For each seed: generate the labelled sample (six kinds of everyday change on history days
and all at once on the live release day, nine attacks), train, run batch detection, and
`postauth evaluate` it. Prints, per seed and overall, the attacks that page (medium or
above), the pages that match no attack per 1,000 identity-days, per benign kind, and every
false page with its reasons. Writes OUT/pages.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))


def main(argv=None) -> int:
  from pipeline import evaluate as ev
  from pipeline.cli import sample_run
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--seeds', default='7,8,9')
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--out', default='out/pages')
  a, beam_args = ap.parse_known_args(argv)
  total = {'pages': 0, 'identity_days': 0, 'attacks': 0, 'attacks_paged': 0, 'by_kind': {}}
  rows = []
  for seed in [int(s) for s in a.seeds.split(',')]:
    t = time.time()
    done = sample_run(os.path.join(a.out, f'seed-{seed}'), a.identities, a.days, seed, batch=True,
                      beam_args=beam_args, echo=lambda line: None)
    sample = done['sample']
    events = sorted(glob.glob(os.path.join(sample, 'live', '*')))
    r = ev.evaluate_files(done['findings'], f'{sample}/labels.json', f'{sample}/benign.json', events)
    p = r['pages']
    rows.append({'seed': seed, 'seconds': round(time.time() - t, 1), 'report': r})
    total['pages'] += p['pages']
    total['identity_days'] += r['identity_days']
    total['attacks'] += r['attacks']
    total['attacks_paged'] += p['attacks_paged']
    for kind, v in p['by_kind'].items():
      k = total['by_kind'].setdefault(kind, {'cases': 0, 'pages': 0})
      k['cases'] += v['cases']
      k['pages'] += v['pages']
    print(f'seed {seed}: attacks paged {p["attacks_paged"]}/{r["attacks"]}, false pages {p["pages"]} '
          f'in {r["identity_days"]} identity-days ({p["pages_per_1000_identity_days"]} per 1,000)', flush=True)
    labels = ev.read_cases(f'{sample}/labels.json')
    benign = ev.read_cases(f'{sample}/benign.json')
    for f in ev.rank_findings(ev.read_json_lines(done['findings'])):
      if ev.is_page(f) and not any(ev.matches(f, l) for l in labels):
        kinds = [c.get('kind') or c['change'] for c in benign if ev.matches(f, c)] or ['unexplained']
        print(f'  false page {f["severity"]} {f["identity"]} ({", ".join(kinds)}): '
              + ', '.join(x.get('rule') or x.get('feature') for x in f['reasons']))
  total['pages_per_1000_identity_days'] = round(1000.0 * total['pages'] / max(1, total['identity_days']), 2)
  print(f'\nall seeds: attacks paged {total["attacks_paged"]}/{total["attacks"]}; '
        f'{total["pages"]} false pages in {total["identity_days"]} identity-days = '
        f'{total["pages_per_1000_identity_days"]} per 1,000')
  print('| benign kind | cases | pages |\n| --- | --- | --- |')
  for kind, v in sorted(total['by_kind'].items()):
    print(f'| {kind} | {v["cases"]} | {v["pages"]} |')
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'pages.json'), 'w') as f:
    json.dump({'total': total, 'seeds': rows}, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
