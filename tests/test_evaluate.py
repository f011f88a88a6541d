"""`postauth evaluate`: metrics on hand-made cases (values worked out by hand), the generated
scenario library, the command on the session's sample, and detection over the real samples."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import shared_data
from postauth.pipeline import evaluate as ev
from postauth.pipeline.evaluate_real import evaluate_real
from postauth.pipeline.evaluate_tables import real_markdown, to_markdown
from postauth.pipeline.generate import generate
from postauth.pipeline.sample_layout import iso
from postauth.pipeline.scenarios import month_end_close_day

DAY0 = 1793836800.0  # 2026-11-05T00:00:00Z


def _t(hhmm: str) -> str:
  h, m = hhmm.split(':')
  return iso(DAY0 + int(h) * 3600 + int(m) * 60)


def _f(identity, start, end, score, severity):
  return {'identity': identity, 'window_start': _t(start), 'window_end': _t(end), 'score': score,
          'severity': severity}


LABELS = [{'identity': 'a', 'scenario': 'A', 'start': _t('10:00'), 'end': _t('10:30')},
          {'identity': 'b', 'scenario': 'B', 'start': _t('12:00'), 'end': _t('12:10')},
          {'identity': 'c', 'scenario': 'C', 'start': _t('15:00'), 'end': _t('15:05')}]  # never found
FINDINGS = [_f('b', '11:30', '12:45', 2.0, 'low'),     # B again, ranked 5th
            _f('x', '01:00', '02:00', 5.0, 'medium'),  # false alert (and the benign backfill)
            _f('a', '09:45', '11:15', 6.0, 'high'),    # A, ranked 1st
            _f('a', '20:00', '21:00', 3.0, 'low'),     # a's identity, not its time: false alert
            _f('b', '12:00', '13:00', 4.0, 'low')]     # B, ranked 3rd
BENIGN = [{'identity': 'x', 'change': 'backfill', 'start': _t('00:30'), 'end': _t('01:30')},
          {'identity': 'y', 'change': 'upgrade', 'start': _t('08:00'), 'end': _t('18:00')}]


def test_metrics_by_hand():
  r = ev.evaluate(FINDINGS, LABELS, BENIGN, identity_days=400)
  a, b, c = r['scenarios']
  assert (a['detected'], a['rank'], a['severity'], a['score']) == (True, 1, 'high', 6.0)
  assert a['time_to_detect_s'] == 4500  # 11:15 - 10:00
  assert a['time_to_first_window_s'] == 2700  # 09:45 + 1 h - 10:00
  assert (b['rank'], b['findings'], b['severity'], b['max_severity']) == (3, 2, 'low', 'low')
  assert b['time_to_detect_s'] == 2700  # the earlier-ending finding: 12:45 - 12:00
  assert b['time_to_first_window_s'] == 1800  # 11:30 + 1 h - 12:00
  assert (c['detected'], c['rank'], c['time_to_detect_s']) == (False, None, None)
  assert r['recall'] == round(2 / 3, 4) and r['attacks_detected'] == 2
  # ranked a(6) x(5) b(4) a'(3) b'(2): positives T F T F T, plus C missed -> 4 positives
  assert r['precision_at'] == {'3': round(2 / 3, 4), '10': 0.3}
  # AP = 1/4 * 1 + 1/4 * 2/3 + 1/4 * 3/5 = 17/30
  assert r['pr_auc'] == round(17 / 30, 4)
  assert (r['false_alerts'], r['false_alerts_by_severity']) == (2, {'low': 1, 'medium': 1, 'high': 0, 'critical': 0})
  assert r['false_alerts_per_1000_identity_days'] == 5.0
  assert r['false_alerts_medium_or_above_per_1000_identity_days'] == 2.5
  backfill, upgrade = r['benign']
  assert (backfill['findings'], backfill['max_severity'], backfill['best_rank'], backfill['ok']) == (1, 'medium', 2, False)
  assert (upgrade['findings'], upgrade['ok']) == (0, True)
  md = to_markdown(r)
  assert '| C | **no** | - |' in md and '| A | yes | 1 | high | 6.0 | 1 h 15 min | 45 min |' in md


def test_average_precision_ties_and_scikit_learn():
  # One threshold for equal scores: (1/2 recall at 1/2 precision) then (1 at 2/3) -> 7/12.
  assert ev.average_precision([1.0, 1.0, 0.5], [True, False, True]) == pytest.approx(7 / 12)
  assert ev.average_precision([1.0], [False]) is None  # no positive at all
  assert ev.average_precision([], [], missed=2) == 0.0
  assert ev.average_precision([], [], missed=0) is None
  from sklearn.metrics import average_precision_score
  rng = np.random.default_rng(3)
  for _ in range(20):
    scores = np.round(rng.uniform(0, 5, 30), 1)  # ties on purpose
    y = rng.random(30) < 0.3
    y[0] = True
    assert ev.average_precision(scores.tolist(), y.tolist()) == pytest.approx(average_precision_score(y, scores))


def test_no_findings_and_no_identity_days():
  r = ev.evaluate([], LABELS[:1])
  assert (r['recall'], r['pr_auc'], r['precision_at']['1']) == (0.0, 0.0, 0.0)
  assert r['false_alerts_per_1000_identity_days'] is None
  assert ev.evaluate([], [])['pr_auc'] is None


def _arn(record):
  ui = record['userIdentity']
  return ((ui.get('sessionContext') or {}).get('sessionIssuer') or {}).get('arn') or ui.get('arn')


def test_scenario_library(tmp_path):
  counts = generate(str(tmp_path), identities=40, days=3, seed=5)
  labels = json.loads((tmp_path / 'labels.json').read_text())
  benign = json.loads((tmp_path / 'benign.json').read_text())
  assert counts['labels'] == len(labels) == 9 == len({l['identity'] for l in labels})
  assert {'reconnaissance_access_denied_sweep', 'dormant_identity_revived', 'slow_exfiltration_new_prefixes',
          'credential_reuse_new_network_and_agent'} <= {l['scenario'] for l in labels}
  assert {'deploy_new_service_sqs', 'month_end_close_spike'} <= {b['change'] for b in benign}
  assert not {b['identity'] for b in benign} & {l['identity'] for l in labels}
  by = {l['scenario']: l for l in labels}
  slow = by['slow_exfiltration_new_prefixes']
  assert ev.parse_time(slow['end']) - ev.parse_time(slow['start']) >= 6 * 3600
  # The dormant key: one day of history 45 days before the live day, nothing since.
  history = sorted(os.listdir(tmp_path / 'history'))
  assert len(history) == 3 and history[0].endswith('20260921.json.gz')
  import gzip
  with gzip.open(tmp_path / 'history' / history[0]) as f:
    old = json.load(f)['Records']
  dormant = by['dormant_identity_revived']['identity']
  assert old and {_arn(r) for r in old} == {dormant}
  for name in history[1:]:
    with gzip.open(tmp_path / 'history' / name) as f:
      assert dormant not in {_arn(r) for r in json.load(f)['Records']}
  recon = [json.loads(line) for p in os.listdir(tmp_path / 'live') for line in open(tmp_path / 'live' / p)]
  recon = [r for r in recon if _arn(r) == by['reconnaissance_access_denied_sweep']['identity']
           and by['reconnaissance_access_denied_sweep']['start'] <= r['eventTime'] <= by['reconnaissance_access_denied_sweep']['end']]
  denied = [r for r in recon if r.get('errorCode') == 'AccessDenied']
  assert len(denied) >= 40 and len({r['eventSource'] for r in denied}) >= 10
  # Deterministic for a seed.
  again = tmp_path / 'again'
  generate(str(again), identities=40, days=3, seed=5)
  assert (again / 'labels.json').read_text() == (tmp_path / 'labels.json').read_text()


def test_month_end_close_calendar():
  day = lambda s: ev.parse_time(s + 'T00:00:00Z')
  assert month_end_close_day(day('2026-10-30'))  # Friday, last workday of October
  assert not month_end_close_day(day('2026-10-31'))  # Saturday
  assert month_end_close_day(day('2026-11-02')) and month_end_close_day(day('2026-11-05'))  # workdays 1 and 4
  assert not month_end_close_day(day('2026-11-06')) and not month_end_close_day(day('2026-11-16'))


@pytest.fixture(scope='module')
def evaluated(sample, model_dir, tmp_path_factory):
  from postauth.pipeline.cli import main
  from postauth.pipeline.jobs import run
  out = tmp_path_factory.mktemp('evaluate')
  findings = out / 'findings.jsonl'
  run([f'--events={sample["dir"]}/live/*', f'--inventory={sample["inventory"]}', f'--model-dir={model_dir}',
       f'--findings={findings}', '--runner=FnApiRunner'])
  d = sample['dir']
  assert main(['evaluate', f'--findings={findings}', f'--labels={d}/labels.json', f'--benign={d}/benign.json',
               f'--events={d}/live/*', f'--out={out}/report.json', f'--markdown={out}/report.md']) == 0
  return json.loads((out / 'report.json').read_text()), (out / 'report.md').read_text()


def test_evaluate_command_on_the_sample(evaluated, sample):
  report, md = evaluated
  assert [s['scenario'] for s in report['scenarios']] == [l['scenario'] for l in sample['labels']]
  assert report['attacks'] == 9 and report['attacks_detected'] == 9  # every scenario found
  # identity-days: every active identity of the one live day (the fleet, the identities that
  # joined it during the sample and the 2 extra identities), all in the inventory
  with open(sample['inventory']) as f:
    registered = sum(1 for _ in f) - 1
  assert report['identity_days'] == report['inputs']['identities_active']
  assert 60 < report['identity_days'] <= registered
  assert report['inputs']['days'] == 1
  assert 0 < report['pr_auc'] <= 1 and set(report['precision_at']) == {'9', '10'}
  month_end = next(b for b in report['benign'] if b['change'] == 'month_end_close_spike')
  assert month_end['ok']
  for s in report['scenarios']:
    assert s['scenario'] in md and s['rank'] >= 1 and s['time_to_detect_s'] >= s['time_to_first_window_s'] >= 0


def test_every_attack_pages_and_no_everyday_change_does(evaluated, sample):
  """Issue 12 on small data: each attack reaches medium, each benign kind stays below it."""
  report, md = evaluated
  kinds = {b['kind'] for b in report['benign']}
  # the six kinds of everyday change are all on the release day (plus the two older cases)
  assert {'rollout', 'redeploy', 'backfill', 'new_resources', 'key_rotation', 'new_identity'} <= kinds
  for s in report['scenarios']:
    assert s['max_severity'] in ('medium', 'high', 'critical'), s
  assert report['pages']['attacks_paged'] == report['attacks']
  paged = {k: v for k, v in report['pages']['by_kind'].items() if v['pages']}
  assert not paged, paged
  assert report['pages']['pages_per_1000_identity_days'] <= 5.0 * 3, report['pages']


def test_evaluate_refuses_an_events_glob_matching_nothing(tmp_path, capsys):
  from postauth.pipeline.cli import main
  (tmp_path / 'f.jsonl').write_text('')
  (tmp_path / 'l.json').write_text('[]')
  code = main(['evaluate', f'--findings={tmp_path}/f.jsonl', f'--labels={tmp_path}/l.json',
               f'--events={tmp_path}/nothing-*'])
  assert code == 2 and 'matches no file' in capsys.readouterr().err


def test_real_samples_flagged(model_dir, sample, tmp_path):
  """Detection over each real set with the sample's model: what is flagged, per set."""
  root = shared_data()
  rows = evaluate_real(root, model_dir, sample['inventory'], str(tmp_path), ['--runner=FnApiRunner'])
  print('\n' + real_markdown(rows))
  by = {r['set']: r for r in rows}
  assert set(by) >= {'otrf-aws', 'falco-k8s-audit', 'panther-rule-tests'}
  otrf = by['otrf-aws']
  assert otrf['records'] == otrf['parsed'] == 103
  # None of the real identities is in the sample's inventory: each active one is flagged unregistered.
  for r in rows:
    assert r['findings'] >= r['identities_flagged'] > 0
    assert r['rules'].get('unregistered_identity', 0) >= 1
  assert otrf['labelled_attacker_identities'] == 1 and otrf['labelled_attacker_flagged'] == 1
