"""Model registry: list, promote (atomic pointer + history), prune, rollback; the rollback command."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from postauth.models import registry
from postauth.models.artifact import LATEST, ArtifactError
from postauth.models.features import FEATURE_NAMES
from postauth.models.model import DetectionModel
from postauth.models.train_config import TrainConfig
from postauth.models.profile import IdentityProfile
from postauth.pipeline.cli import main
from test_windowing import T0

DAY = 86400


def _save(model_dir: str, seed: int) -> str:
  """A small real model version; the seed makes each version distinct."""
  x = np.abs(np.random.default_rng(seed).normal(0, 0.1, size=(60, len(FEATURE_NAMES))))
  model = DetectionModel.fit({'api_key': x}, {'a': IdentityProfile()},
                             TrainConfig(n_estimators=3, max_samples=16, seed=seed, min_cohort_windows=10),
                             (T0, T0 + seed * DAY))
  model.save(model_dir, promote=False)
  return model.version


@pytest.fixture(scope='module')
def versions(tmp_path_factory):
  """Five versions, saved once; each test copies them."""
  root = tmp_path_factory.mktemp('versions')
  return str(root), [_save(str(root), seed) for seed in range(1, 6)]


@pytest.fixture
def model_dir(versions, tmp_path):
  import shutil
  root, names = versions
  dst = tmp_path / 'models'
  shutil.copytree(root, dst)
  return str(dst), names


def _latest(d):
  with open(os.path.join(d, LATEST)) as f:
    return f.read().strip()


def test_promote_writes_pointer_and_history_and_lists_versions(model_dir):
  d, (v1, v2, v3, v4, v5) = model_dir
  assert registry.current(d) is None and registry.history(d) == []
  registry.promote(d, v1, reason='first')
  entry = registry.promote(d, v2, reason='better')
  assert _latest(d) == v2 == registry.current(d)
  assert entry['previous'] == v1 and entry['action'] == 'promote'
  assert [e['version'] for e in registry.history(d)] == [v1, v2]
  assert registry.promote(d, v2).get('unchanged') is True  # no duplicate history entry
  assert len(registry.history(d)) == 2
  assert not [f for f in os.listdir(d) if '.tmp-' in f]  # pointer written via a renamed temp file
  listed = registry.list_versions(d)
  assert {v['version'] for v in listed} == {v1, v2, v3, v4, v5}
  assert [v['version'] for v in listed if v['promoted']] == [v2]
  assert all(v['training_windows'] == 60 and v['cohorts'] for v in listed)
  created = [v['created'] for v in listed]
  assert created == sorted(created, reverse=True)  # newest first


def test_promote_refuses_a_tampered_or_missing_version(model_dir):
  d, (v1, v2, *_) = model_dir
  registry.promote(d, v1)
  forest = os.path.join(d, v2, 'forest-api_key.skops')
  with open(forest, 'ab') as f:
    f.write(b'x')
  with pytest.raises(ArtifactError, match='forest-api_key.skops'):
    registry.promote(d, v2)
  with pytest.raises(ArtifactError, match='v-missing'):
    registry.promote(d, 'v-missing')
  assert registry.current(d) == v1 and len(registry.history(d)) == 1


def test_rollback_walks_back_through_promotions(model_dir):
  d, (v1, v2, v3, v4, _) = model_dir
  with pytest.raises(registry.RegistryError, match='nothing to roll back to'):
    registry.rollback(d)
  for v in (v1, v2, v3):
    registry.promote(d, v)
  assert registry.rollback(d)['version'] == v2
  assert registry.current(d) == v2
  assert registry.rollback(d)['version'] == v1  # twice: two promotions back, not back and forth
  with pytest.raises(registry.RegistryError, match='nothing to roll back to'):
    registry.rollback(d)
  entry = registry.rollback(d, to=v4, reason='hand-picked')
  assert (entry['action'], entry['version'], entry['previous'], entry['reason']) == ('rollback', v4, v1, 'hand-picked')
  assert registry.rollback(d)['version'] == v1
  assert [e['action'] for e in registry.history(d)] == ['promote'] * 3 + ['rollback'] * 4


def test_pointer_written_outside_the_registry_is_still_rolled_back(model_dir):
  d, (v1, v2, *_) = model_dir
  registry.promote(d, v1)
  with open(os.path.join(d, LATEST), 'w') as f:  # e.g. an older `postauth train`, or a crash
    f.write(v2 + '\n')
  assert registry.promotion_stack(d) == [v1, v2]
  assert registry.rollback(d)['version'] == v1


def test_prune_keeps_newest_live_and_rollback_target(model_dir):
  d, (v1, v2, v3, v4, v5) = model_dir
  registry.promote(d, v1)
  registry.promote(d, v2)  # live v2, rollback target v1: both older than the newest two
  deleted = registry.prune(d, keep=2)
  assert sorted(deleted) == sorted([v3])
  assert sorted(os.listdir(d)) == sorted([v1, v2, v4, v5, LATEST, registry.HISTORY])
  DetectionModel.load(d)  # the live version is intact
  assert registry.rollback(d)['version'] == v1  # live v1, nothing left to roll back to
  assert registry.prune(d, keep=1) == [v4, v2]  # newest first; v5 is the one kept, v1 is live
  assert {v['version'] for v in registry.list_versions(d)} == {v1, v5}
  with pytest.raises(registry.RegistryError):
    registry.prune(d, keep=0)


def test_rollback_command(model_dir, capsys):
  d, (v1, v2, *_) = model_dir
  assert main(['rollback', f'--model-dir={d}']) == 2
  assert 'nothing to roll back to' in capsys.readouterr().err
  registry.promote(d, v1)
  registry.promote(d, v2)
  assert main(['rollback', '--model-dir', d, '--list']) == 0
  listed = json.loads(capsys.readouterr().out)
  assert listed['live'] == v2 and len(listed['versions']) == 5 and len(listed['history']) == 2
  assert main(['rollback', '--model-dir', d]) == 0
  assert json.loads(capsys.readouterr().out)['version'] == v1
  assert _latest(d) == v1
  assert main(['rollback', '--model-dir', d, '--to', 'v-nope']) == 2
  assert 'v-nope' in capsys.readouterr().err
