"""`postauth retrain`: the promotion gate on held-back data and labelled cases, end to end."""
from __future__ import annotations

import datetime
import gzip
import json
import os
import shutil

import pytest

from postauth.models import registry
from postauth.pipeline.cli import main
from postauth.pipeline.options import OptionsError
from postauth.pipeline.holdout import gate, read_labels
from postauth.pipeline.retrain import translate_labels_flag


def _ts(text: str) -> str:
  t = datetime.datetime.fromisoformat(text.replace('Z', '+00:00')) - datetime.timedelta(days=1)
  return t.strftime('%Y-%m-%dT%H:%M:%SZ')


@pytest.fixture(scope='module')
def histories(sample, tmp_path_factory):
  """The sample's history + last day (clean), and a poisoned copy.

  Poisoned: the attacked identities' whole last day (attacks included) replayed one day
  earlier, inside the training period, so a model trained on it learns the attacks as
  normal behaviour of those identities.
  """
  root = tmp_path_factory.mktemp('histories')
  labelled = {l['identity'] for l in sample['labels']}
  for name in ('clean', 'poisoned'):
    for part in ('history', 'live'):
      shutil.copytree(os.path.join(sample['dir'], part), root / name / part)
  (live,) = os.listdir(os.path.join(sample['dir'], 'live'))
  replay = []
  with open(os.path.join(sample['dir'], 'live', live)) as f:
    for line in f:
      r = json.loads(line)
      ui = r['userIdentity']
      arn = ((ui.get('sessionContext') or {}).get('sessionIssuer') or {}).get('arn') or ui.get('arn')
      if arn in labelled:
        replay.append(dict(r, eventTime=_ts(r['eventTime']), eventID=r['eventID'] + '-replayed'))
  assert len(replay) > 100
  with gzip.open(root / 'poisoned' / 'history' / 'replayed.json.gz', 'wt') as f:
    json.dump({'Records': replay}, f)
  return {name: f'{root / name}/*/*' for name in ('clean', 'poisoned')}


def _retrain(capsys, events, sample, model_dir, *extra):
  code = main(['retrain', f'--events={events}', f'--inventory={sample["inventory"]}',
               f'--model-dir={model_dir}', '--days=3', '--holdout-days=1',
               '--labels', os.path.join(sample['dir'], 'labels.json'), '--runner=FnApiRunner', *extra])
  out = capsys.readouterr().out
  comparison = json.loads(out)
  with open(os.path.join(model_dir, comparison['candidate'], 'comparison.json')) as f:
    assert json.load(f)['decision'] == comparison['decision']
  return code, comparison


def test_retrain_refuses_a_poisoned_candidate_promotes_a_good_one_and_rolls_back(
    histories, sample, model_dir, tmp_path, capsys):
  # The live model: the session's, trained on the sample's history (the same days retrain trains on).
  models = str(tmp_path / 'models')
  shutil.copytree(model_dir, models)
  live = registry.current(models)
  small = tmp_path / 'small.json'  # fewer trees: the gate, not the forest size, is under test
  small.write_text(json.dumps({'n_estimators': 30}))

  # 1. Trained on poisoned history: fewer alerts, but it misses every labelled attack -> refused.
  code, poisoned = _retrain(capsys, histories['poisoned'], sample, models, f'--train-config={small}')
  assert code == 3 and poisoned['decision'] == 'refused' and not poisoned['gate_passed']
  assert poisoned['slices'] == {'train': ['2026-11-02T00:00:00Z', '2026-11-05T00:00:00Z'],
                                'holdout': ['2026-11-05T00:00:00Z', '2026-11-06T00:00:00Z']}
  assert poisoned['current'] == live != poisoned['candidate'] and poisoned['labels_in_holdout'] == len(sample['labels'])
  failed = [c['check'] for c in poisoned['checks'] if not c['passed']]
  assert failed == ['recall of labelled held-back cases >= current']
  current = poisoned['models']['current']
  assert poisoned['models']['candidate']['recall'] < current['recall'] == 1.0
  assert current['clean_windows'] > 1000 and current['alert_rate_per_1000'] is not None
  assert registry.current(models) == live  # LATEST untouched
  assert os.path.exists(os.path.join(models, poisoned['candidate'], 'report.json'))

  # 2. Clean history, another configuration (team cohorts, another seed): not worse -> promoted.
  teams_config = tmp_path / 'teams.json'
  teams_config.write_text(json.dumps({'n_estimators': 30, 'seed': 7, 'team_cohorts': True}))
  # Team cohorts of a 60-identity fleet are small: on a release day of everyday change their
  # candidate alerts ~25% more at --threshold 3 (low) than the type cohorts; an operator
  # switching to them accepts that with --max-alert-increase.
  code, teams = _retrain(capsys, histories['clean'], sample, models, f'--train-config={teams_config}',
                         '--keep=1', '--max-alert-increase=0.3')
  assert code == 0 and teams['decision'] == 'promoted' and teams['gate_passed'], teams['checks']
  assert teams['models']['candidate']['recall'] == 1.0
  assert registry.current(models) == teams['candidate']
  with open(os.path.join(models, teams['candidate'], 'manifest.json')) as f:
    team_models = [c for c in json.load(f)['cohorts'] if '/' in c]
  assert team_models
  # The held-back windows of those teams were scored by their team model (most specific cohort).
  assert set(team_models) <= set(teams['models']['candidate']['scored_by'])
  # --keep 1: the refused candidate is pruned; the live version and its rollback target stay.
  assert teams['pruned'] == [poisoned['candidate']]
  assert {v['version'] for v in registry.list_versions(models)} == {live, teams['candidate']}

  # 3. One command rolls back to the version live before.
  assert main(['rollback', f'--model-dir={models}']) == 0
  assert json.loads(capsys.readouterr().out)['version'] == live == registry.current(models)


def test_gate_rule():
  def m(rate, recall, clean=1000):
    return {'alert_rate_per_1000': rate, 'recall': recall, 'clean_windows': clean}
  assert gate(m(2.0, 1.0), None, True, 0.1, 0.5)[0]
  assert not gate(m(None, None, clean=0), None, False, 0.1, 0.5)[0]  # nothing to evaluate on
  assert gate(m(2.7, 0.8), m(2.0, 0.8), True, 0.1, 0.5)[0]  # 2.7 <= 2.0 x 1.1 + 0.5
  ok, checks = gate(m(2.71, 0.8), m(2.0, 0.8), True, 0.1, 0.5)
  assert not ok and checks[1]['limit'] == 2.7 and not checks[1]['passed']
  assert not gate(m(1.0, 0.6), m(2.0, 0.8), True, 0.1, 0.5)[0]  # fewer alerts, lower recall
  assert gate(m(1.0, None), m(2.0, None), False, 0.1, 0.5)[0]  # no labels: alert rate only
  assert gate(m(0.5, 1.0), m(0.0, 1.0), True, 0.1, 0.5)[0]  # the slack allows noise around 0


def test_labels_file_and_flag(tmp_path):
  assert translate_labels_flag(['--labels', 'a.json', '--days=3', '--labels=b.json']) == [
      '--labels-file=a.json', '--days=3', '--labels-file=b.json']
  path = tmp_path / 'labels.json'
  path.write_text(json.dumps([{'identity': 'a', 'start': '2026-11-05T03:18:00Z', 'end': 1793935800},
                              {'identity': 'b', 'start': '2026-11-05T03:18:00', 'end': '2026-11-05T04:00:00+00:00',
                               'scenario': 's'}]))
  labels = read_labels(str(path))
  assert labels[0]['start'] == labels[1]['start'] == 1793848680.0 and labels[1]['name'] == 's'
  path.write_text(json.dumps([{'identity': 'a', 'start': 'yesterday', 'end': 1}]))
  with pytest.raises(OptionsError, match=r'labels.json\[0\].*yesterday'):
    read_labels(str(path))
  assert main(['retrain', '--model-dir=x', '--inventory=y']) == 2  # --events missing
