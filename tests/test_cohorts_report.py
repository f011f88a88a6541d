"""Cohorts (type / team / global fallback), training config, cross-cohort calibration, training report."""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pytest

from postauth.models import report as training_report
from postauth.models.artifact import ArtifactError
from postauth.models.calibration import Calibration
from postauth.models.features import FEATURE_NAMES
from postauth.models.model import GLOBAL, SEVERITIES, DetectionModel, forest_file
from postauth.models.train_config import ConfigError, TrainConfig
from postauth.models.profile import IdentityProfile
from test_model import agg_of
from test_windowing import T0, ev
from postauth.transforms.windowing import IdentityWindow

ROOT = os.path.join(os.path.dirname(__file__), '..')
F = len(FEATURE_NAMES)


def _noise(rng, n, scale=0.1, shift=0.0):
  return np.abs(rng.normal(shift, scale, size=(n, F)))


def _team_model(**config):
  rng = np.random.default_rng(3)
  leaves = {
      'api_key/payments': _noise(rng, 400),
      'api_key/a team, with "odd" chars/ok': _noise(rng, 350),
      'api_key/growth': _noise(rng, 40),  # too small: scored by the api_key model
      'human/data': _noise(rng, 30),  # type too small: scored by the global model
  }
  cfg = TrainConfig(n_estimators=10, min_cohort_windows=100, **config)
  return DetectionModel.fit(leaves, {'a': IdentityProfile()}, cfg, (T0, T0 + 86400)), leaves


def test_scorer_uses_the_most_specific_cohort_with_a_model(tmp_path):
  model, leaves = _team_model(team_cohorts=True)
  odd = 'api_key/a team, with "odd" chars/ok'
  assert set(model.forests) == {GLOBAL, 'api_key', 'api_key/payments', odd}
  assert model.cohort_for({'identity_type': 'api_key', 'team': 'payments'}) == 'api_key/payments'
  assert model.cohort_for('api_key', team='payments') == 'api_key/payments'
  assert model.cohort_for('api_key/payments') == 'api_key/payments'
  assert model.cohort_for({'identity_type': 'api_key', 'team': 'growth'}) == 'api_key'
  assert model.cohort_for({'identity_type': 'api_key', 'team': ''}) == 'api_key'
  assert model.cohort_for({'identity_type': 'human', 'team': 'data'}) == GLOBAL
  assert model.cohort_for('unknown') == GLOBAL
  # A team name is not a file name: stored under a safe, unique name and loaded back.
  assert re.fullmatch(r'forest-[A-Za-z0-9_.-]+\.skops', forest_file(odd))
  model.save(str(tmp_path))
  loaded = DetectionModel.load(str(tmp_path))
  assert set(loaded.forests) == set(model.forests)
  w = IdentityWindow('a', T0, T0 + 3600, agg_of([ev('a', T0 + k) for k in range(5)]))
  contexts = [{'identity_type': 'api_key', 'team': 'payments'}, {'identity_type': 'api_key', 'team': 'growth'},
              {'identity_type': 'human', 'team': 'data'}, {'identity_type': 'api_key', 'team': 'a team, with "odd" chars/ok'}]
  s1, c1, _ = model.score([w] * 4, contexts)
  s2, c2, _ = loaded.score([w] * 4, contexts)
  np.testing.assert_array_equal(c1, c2)
  x = model.features([w])
  for i, cohort in enumerate(['api_key/payments', 'api_key', GLOBAL, odd]):
    np.testing.assert_array_equal(c1[i], model.score_features(x, cohort)[1][0])


def test_team_cohorts_are_off_by_default_and_row_order_does_not_change_the_model():
  model, leaves = _team_model()
  assert set(model.forests) == {GLOBAL, 'api_key'}
  assert model.cohort_for({'identity_type': 'api_key', 'team': 'payments'}) == 'api_key'
  shuffled = {k: v[np.random.default_rng(9).permutation(len(v))] for k, v in reversed(list(leaves.items()))}
  again = DetectionModel.fit(shuffled, {'a': IdentityProfile()},
                             TrainConfig(n_estimators=10, min_cohort_windows=100), (T0, T0 + 86400))
  assert again.version == model.version


def test_training_config_file_is_documented_and_validated(tmp_path):
  example = os.path.join(ROOT, 'config', 'train-config.example.json')
  config = TrainConfig.from_file(example)
  keys = [f.name for f in dataclasses.fields(TrainConfig)]
  with open(example) as f:
    assert sorted(json.load(f)) == sorted(keys)
  assert config == TrainConfig()
  with open(os.path.join(ROOT, 'docs', 'models.md')) as f:
    readme = f.read()
  section = readme[readme.index('**Training configuration**'):readme.index('**Severity thresholds.**')]
  for key in keys:
    assert f'| `{key}` |' in section, f'{key} is not documented in docs/models.md'
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps({'max_features': 1, 'team_cohorts': True}))
  loaded = TrainConfig.from_file(str(bad))  # 1 means all features, not one feature
  assert loaded.max_features == 1.0 and isinstance(loaded.max_features, float) and loaded.team_cohorts
  bad.write_text(json.dumps({'n_estimators': 10, 'trees': 5}))
  with pytest.raises(ConfigError, match="unknown keys \\['trees'\\]"):
    TrainConfig.from_file(str(bad))
  bad.write_text(json.dumps({'max_features': 1.5}))
  with pytest.raises(ConfigError, match='max_features'):
    TrainConfig.from_file(str(bad))
  bad.write_text('{not json')
  with pytest.raises(ConfigError, match='bad.json'):
    TrainConfig.from_file(str(bad))


def test_same_score_means_the_same_tail_probability_across_cohorts():
  """Two cohorts of different size and raw scale: a score of s flags ~10**-s of fresh normal windows in both."""
  rng = np.random.default_rng(5)
  # Calibration alone, on exponential-tailed raw scores (the tail model is exact there).
  for n, scale, shift in ((20000, 1.0, 0.0), (1500, 40.0, 300.0)):
    cal = Calibration.fit(shift + rng.exponential(scale, n))
    fresh = shift + rng.exponential(scale, 400000)
    for s in (1.0, 2.0, 3.0):
      assert cal.score(np.array([cal.raw_at(s)]))[0] == pytest.approx(s, abs=1e-6)
      share = (cal.score(fresh) >= s).mean()
      # s = 3 lies beyond the 99th percentile: extrapolated from n/100 exceedances, so looser.
      tolerance = 1.6 if s < 3 else 2.5
      assert 10 ** -s / tolerance <= share <= 10 ** -s * tolerance, (n, scale, s, share)
  # The whole model: cohorts 'big' (6,000 windows, scale 1) and 'small' (1,500 windows, scale 25).
  shapes = {'big': (6000, 1.0, 0.0), 'small': (1500, 25.0, 10.0)}
  model = DetectionModel.fit({c: _noise(rng, n, scale, shift) for c, (n, scale, shift) in shapes.items()},
                             {}, TrainConfig(n_estimators=60, min_cohort_windows=500), (T0, T0 + 86400))
  assert {'big', 'small'} <= set(model.forests)
  raw_low = {}
  for cohort, (_, scale, shift) in shapes.items():
    _, components = model.score_features(_noise(rng, 30000, scale, shift), cohort)
    for k in range(2):  # forest and per-feature rarity, each calibrated
      for s in (1.0, 2.0):
        share = (components[:, k] >= s).mean()
        assert 10 ** -s / 2 <= share <= 10 ** -s * 2, (cohort, k, s, share)
    raw_low[cohort] = model.calibrations[cohort].raw_at(3.0)
  # ... although the raw forest scores behind the same threshold differ per cohort.
  assert raw_low['big'] != raw_low['small']
  levels = model.manifest['severity_levels']
  assert [levels[n]['score'] for n, _ in SEVERITIES] == [s for _, s in SEVERITIES]
  assert levels['low']['tail_probability'] == pytest.approx(1e-3)


def test_training_report_is_written_hashed_and_tamper_checked(model_dir, tmp_path):
  with open(os.path.join(model_dir, 'LATEST')) as f:
    version = f.read().strip()
  root = os.path.join(model_dir, version)
  with open(os.path.join(root, 'manifest.json')) as f:
    manifest = json.load(f)
  for name in (training_report.REPORT_JSON, training_report.REPORT_HTML, training_report.REPORT_PNG):
    assert name in manifest['files'] and os.path.getsize(os.path.join(root, name)) > 0
  with open(os.path.join(root, 'report.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(os.path.join(root, 'report.json')) as f:
    rep = json.load(f)
  assert rep['version'] == version and rep['training_window'] == manifest['training_window']
  assert rep['totals']['training_windows'] == manifest['counts']['training_windows']
  assert sum(c['windows'] for c in rep['cohorts'].values()) == rep['totals']['training_windows']
  assert sum(c['identities'] for c in rep['cohorts'].values()) == rep['totals']['identities'] > 0
  for cohort, c in rep['cohorts'].items():
    assert c['scored_by'] in manifest['cohorts']
    q = c['score_quantiles']
    assert q['p50'] <= q['p90'] <= q['p99'] <= q['p99.9'] <= q['max']
  for cohort in manifest['cohorts']:
    m = rep['models'][cohort]
    assert set(m['features']) == set(FEATURE_NAMES)
    assert sum(f['split_share'] for f in m['features'].values()) == pytest.approx(1.0, abs=1e-3)
    raw = [m['raw_forest_score_at_severity'][n] for n, _ in reversed(SEVERITIES)]
    assert raw == sorted(raw)  # higher severity, higher raw score
  assert rep['timings']['fit_seconds'] > 0
  with open(os.path.join(root, 'report.html')) as f:
    page = f.read()
  assert 'report.png' in page and version in page
  # Tampering with the report is refused at load, naming the file.
  import shutil
  copy = tmp_path / 'models'
  shutil.copytree(model_dir, copy)
  path = copy / version / 'report.json'
  path.write_text(path.read_text().replace('"windows"', '"windowz"', 1))
  with pytest.raises(ArtifactError, match='report.json'):
    DetectionModel.load(str(copy))
