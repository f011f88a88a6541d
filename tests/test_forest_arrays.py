"""Forests scored with numpy (models.forest_arrays): the same scores as scikit-learn, stored
without pickle, and a loaded model that scores without importing scikit-learn or skops."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from postauth.models import forest_store
from postauth.models.features import FEATURE_NAMES
from postauth.models.forest_arrays import ForestArrays, from_sklearn
from postauth.models.model import DetectionModel
from postauth.models.train_config import TrainConfig
from postauth.models.profile import IdentityProfile
from postauth.models.report import split_share
from test_windowing import T0

F = len(FEATURE_NAMES)


def _at_thresholds(forest: IsolationForest, base: np.ndarray) -> np.ndarray:
  """Rows whose value in a split's column sits on the split: the float64 threshold itself
  (sklearn casts it to float32 first, which may round it past the threshold) and the float32
  values just below, at and just above it."""
  rows = []
  for tree, features in zip(forest.estimators_, forest.estimators_features_):
    t = tree.tree_
    split = np.flatnonzero(t.children_left != -1)[:8]
    for node in split:
      column = features[t.feature[node]] if forest._max_features != base.shape[1] else t.feature[node]
      t32 = np.float32(t.threshold[node])
      for value in (t.threshold[node], t32, np.nextafter(t32, np.float32(-np.inf)),
                    np.nextafter(t32, np.float32(np.inf))):
        row = base[len(rows) % len(base)].copy()
        row[column] = value
        rows.append(row)
  return np.array(rows)


@pytest.mark.filterwarnings('ignore:overflow encountered in cast:RuntimeWarning')  # -1e40 as float32
@pytest.mark.parametrize('n_estimators,max_samples,max_features', [
    (1, 16, 1.0), (7, 64, 0.5), (30, 200, 1.0), (25, 128, 0.3), (10, 'auto', 3),
])
def test_numpy_scores_equal_sklearn_score_samples(n_estimators, max_samples, max_features):
  rng = np.random.default_rng(n_estimators)
  # Continuous columns and small counts (many ties, as the window features have).
  x = np.hstack([rng.normal(size=(300, 5)), rng.poisson(1.0, size=(300, 4)).astype(float)])
  forest = IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                           max_features=max_features, random_state=3).fit(x)
  arrays = from_sklearn(forest)
  unseen = np.vstack([rng.normal(0, 3, size=(200, 9)), x[:50],
                      np.full((1, 9), np.nan), np.full((1, 9), np.inf), np.full((1, 9), -1e40)])
  many = np.vstack([unseen] * 5)  # more rows than one chunk of the descent
  for rows in (x, unseen, many, _at_thresholds(forest, x)):
    np.testing.assert_allclose(arrays.score_samples(rows), forest.score_samples(rows), rtol=1e-12, atol=0)
  assert arrays.score_samples(x[:0]).shape == (0,)


def test_arrays_round_trip_through_npz_without_pickle():
  x = np.random.default_rng(0).normal(size=(200, 6))
  arrays = from_sklearn(IsolationForest(n_estimators=5, max_samples=50, max_features=0.5,
                                        random_state=0).fit(x))
  data = arrays.to_bytes()
  assert data == from_sklearn(IsolationForest(n_estimators=5, max_samples=50, max_features=0.5,
                                              random_state=0).fit(x)).to_bytes()  # reproducible bytes
  with np.load(io.BytesIO(data), allow_pickle=False) as npz:
    assert {'left', 'threshold', 'path_length', 'format'} <= set(npz.files)
  back = ForestArrays.from_bytes(data)
  for name in ('roots', 'left', 'right', 'feature', 'threshold', 'missing_left', 'path_length'):
    np.testing.assert_array_equal(getattr(back, name), getattr(arrays, name))
  assert (back.n_features, back.max_samples, back.average_path_length) == (
      arrays.n_features, arrays.max_samples, arrays.average_path_length)
  np.testing.assert_array_equal(back.score_samples(x), arrays.score_samples(x))
  with pytest.raises(ValueError, match='not a forest array file'):
    ForestArrays.from_bytes(b'not a zip')
  looped = arrays.right.copy()
  looped[arrays.roots[1]] = arrays.roots[1]  # a split whose right child is itself: never a leaf
  with pytest.raises(ValueError, match='does not follow its parent'):
    ForestArrays.build(**{**dataclasses.asdict(arrays), 'right': looped})


def test_split_share_counts_the_columns_of_the_full_matrix():
  x = np.zeros((300, F))
  x[:, 3] = np.random.default_rng(1).normal(size=300)  # the only column that can split
  forest = IsolationForest(n_estimators=20, max_samples=64, max_features=0.5, random_state=0).fit(x)
  share = split_share(from_sklearn(forest))
  assert share[3] == pytest.approx(1.0) and share.sum() == pytest.approx(1.0)


def _model() -> DetectionModel:
  rng = np.random.default_rng(5)
  leaves = {'api_key': np.abs(rng.normal(0, 0.1, size=(150, F))),
            'human': np.abs(rng.normal(0, 0.3, size=(120, F)))}
  return DetectionModel.fit(leaves, {'a': IdentityProfile()},
                            TrainConfig(n_estimators=8, max_samples=64, max_features=0.7, min_cohort_windows=100),
                            (T0, T0 + 86400))


def _without_arrays(model_dir: str, version: str) -> None:
  """Turns a saved version into one written before forest arrays existed (skops files only)."""
  path = os.path.join(model_dir, version, 'manifest.json')
  with open(path) as f:
    manifest = json.load(f)
  for name in manifest.pop('forest_arrays').values():
    os.remove(os.path.join(model_dir, version, name))
    del manifest['files'][name]
  with open(path, 'w') as f:
    json.dump(manifest, f)


def test_saved_model_scores_like_its_sklearn_forests_and_old_versions_still_load(tmp_path):
  model = _model()
  model.save(str(tmp_path))
  with open(tmp_path / model.version / 'manifest.json') as f:
    manifest = json.load(f)
  assert set(manifest['forest_arrays']) == set(model.forests) == {'_global', 'api_key', 'human'}
  assert {'forest-api_key.npz', 'forest-api_key.skops'} <= set(manifest['files'])
  x = np.abs(np.random.default_rng(6).normal(0, 0.4, size=(100, F)))
  loaded = DetectionModel.load(str(tmp_path))
  for cohort in model.forests:
    assert isinstance(loaded.forests[cohort], ForestArrays)
    fitted = model.sklearn_forest(cohort)
    np.testing.assert_array_equal(loaded.forests[cohort].score_samples(x), fitted.score_samples(x))
    np.testing.assert_array_equal(loaded.sklearn_forest(cohort).score_samples(x), fitted.score_samples(x))
    expected = model.calibrations[cohort].score(-fitted.score_samples(x))
    np.testing.assert_array_equal(loaded.score_features(x, cohort)[1][:, 0], expected)
  _without_arrays(str(tmp_path), model.version)
  forest_store._CACHE.clear()
  old = DetectionModel.load(str(tmp_path))
  for cohort in model.forests:
    np.testing.assert_array_equal(old.score_features(x, cohort)[1], loaded.score_features(x, cohort)[1])
  old.save(str(tmp_path / 'again'))  # its forests come back from skops, and gain their arrays
  again = DetectionModel.load(str(tmp_path / 'again'))
  assert set(again.manifest['forest_arrays']) == set(model.forests)
  for cohort in model.forests:
    np.testing.assert_array_equal(again.score_features(x, cohort)[1], loaded.score_features(x, cohort)[1])


def _modules_after_scoring(model_dir: str) -> list:
  """sklearn/skops modules in a fresh process after `postauth run`'s imports, a load and a score."""
  code = textwrap.dedent(f'''
      import json, sys
      import numpy as np
      import postauth.pipeline.cli, postauth.pipeline.detect, postauth.pipeline.preflight
      from postauth.models.model import DetectionModel
      model = DetectionModel.load({model_dir!r})
      model.score_features(np.zeros((3, {F})), 'api_key')
      print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'skops'))))
  ''')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_and_scoring_imports_neither_sklearn_nor_skops(tmp_path):
  model = _model()
  model.save(str(tmp_path))
  assert _modules_after_scoring(str(tmp_path)) == []
  _without_arrays(str(tmp_path), model.version)  # the skops fallback does import them
  assert {'sklearn', 'skops'} <= set(_modules_after_scoring(str(tmp_path)))
