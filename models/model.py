"""The detection model: per-cohort isolation forests, calibration, identity profiles.

``DetectionModel.fit`` trains from feature matrices (built by ``models.features``),
``save``/``load`` go through ``models.artifact`` (hash-verified, skops), and
``score`` / ``explain`` are what the scoring DoFn calls on a batch of windows.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import skops.io as sio
from sklearn.ensemble import IsolationForest

from models import artifact
from models.calibration import Calibration, FeatureDistribution
from models.features import FEATURE_NAMES, describe, feature_vector
from models.profile import IdentityProfile

GLOBAL = '_global'
SEVERITIES = (('critical', 6.5), ('high', 5.0), ('medium', 4.0), ('low', 3.0))


@dataclasses.dataclass
class TrainConfig:
  """Hyperparameters; loadable from a JSON file with the same keys."""
  n_estimators: int = 100
  max_samples: int = 512
  max_features: float = 1.0
  seed: int = 42
  min_cohort_windows: int = 300  # smaller cohorts use the global model
  warmup_days: int = 1  # windows scored against at least this much history

  @classmethod
  def from_file(cls, path: Optional[str]) -> 'TrainConfig':
    if not path:
      return cls()
    return cls(**json.loads(artifact._read(path)))  # FileSystems: a gs:// config works too


def severity_of(score: float) -> Optional[str]:
  for name, threshold in SEVERITIES:
    if score >= threshold:
      return name
  return None


class DetectionModel:
  def __init__(self, version: str, forests: Dict[str, IsolationForest],
               calibrations: Dict[str, Calibration], rarity_calibrations: Dict[str, Calibration],
               distributions: Dict[str, FeatureDistribution],
               profiles: Dict[str, IdentityProfile], manifest: Dict):
    self.version = version
    self.forests = forests
    self.calibrations = calibrations
    self.rarity_calibrations = rarity_calibrations
    self.distributions = distributions
    self.profiles = profiles
    self.manifest = manifest

  # -- training ---------------------------------------------------------------
  @classmethod
  def fit(cls, cohort_features: Dict[str, np.ndarray], profiles: Dict[str, IdentityProfile],
          config: TrainConfig, training_window: Tuple[float, float],
          counts: Optional[Dict[str, int]] = None) -> 'DetectionModel':
    all_x = np.vstack([x for x in cohort_features.values() if len(x)]) if cohort_features else np.zeros((0, len(FEATURE_NAMES)))
    if len(all_x) < 10:
      raise ValueError(f'only {len(all_x)} training windows: need more history')
    groups = {GLOBAL: all_x}
    groups.update({c: x for c, x in cohort_features.items() if len(x) >= config.min_cohort_windows})
    forests, calibrations, rarity_calibrations, distributions, sizes = {}, {}, {}, {}, {}
    for cohort, x in sorted(groups.items()):
      forest = IsolationForest(n_estimators=config.n_estimators,
                               max_samples=min(config.max_samples, len(x)),
                               max_features=config.max_features, random_state=config.seed).fit(x)
      raw = -forest.score_samples(x)
      forests[cohort] = forest
      calibrations[cohort] = Calibration.fit(raw)
      distributions[cohort] = FeatureDistribution.fit(x)
      rarity_calibrations[cohort] = Calibration.fit(distributions[cohort].rarity(x))
      sizes[cohort] = len(x)
    digest = hashlib.sha256(all_x.tobytes() + json.dumps(dataclasses.asdict(config)).encode()).hexdigest()
    end = datetime.datetime.fromtimestamp(training_window[1], datetime.timezone.utc)
    version = f'v{end:%Y%m%dT%H%M}-{digest[:10]}'
    manifest = {
        'feature_names': list(FEATURE_NAMES),
        'cohorts': sorted(forests),
        'cohort_windows': sizes,
        'training_window': [_iso(training_window[0]), _iso(training_window[1])],
        'hyperparameters': dataclasses.asdict(config),
        'counts': dict(counts or {}, identities=len(profiles), training_windows=len(all_x)),
        'severity_thresholds': dict(SEVERITIES),
    }
    return cls(version, forests, calibrations, rarity_calibrations, distributions, profiles, manifest)

  # -- persistence ------------------------------------------------------------
  def save(self, model_dir: str, promote: bool = True) -> str:
    files = {}
    for cohort, forest in self.forests.items():
      files[f'forest-{cohort}.skops'] = sio.dumps(forest)
    files['calibration.json'] = json.dumps({
        c: {'calibration': self.calibrations[c].to_dict(),
            'rarity_calibration': self.rarity_calibrations[c].to_dict(),
            'features': self.distributions[c].to_dict()} for c in self.forests}).encode()
    files['profiles.json.gz'] = artifact.dumps_json_gz(
        {k: p.to_dict() for k, p in sorted(self.profiles.items())})
    return artifact.save_version(model_dir, self.version, files, self.manifest, promote)

  @classmethod
  def load(cls, model_dir: str, version: Optional[str] = None) -> 'DetectionModel':
    manifest, files = artifact.load_verified(model_dir, version)
    if manifest.get('feature_names') != list(FEATURE_NAMES):
      raise artifact.ArtifactError(
          f'{model_dir}/{manifest.get("version")}: trained on features {manifest.get("feature_names")}, '
          f'this code computes {list(FEATURE_NAMES)}; retrain')
    forests = {}
    for cohort in manifest['cohorts']:
      name = f'forest-{cohort}.skops'
      if name not in files:
        raise artifact.ArtifactError(f'{model_dir}/{manifest["version"]}/{name}: missing from manifest')
      forests[cohort] = sio.loads(files[name], trusted=artifact.SKOPS_TRUSTED)
      if not isinstance(forests[cohort], IsolationForest):
        raise artifact.ArtifactError(f'{name}: not an IsolationForest')
    cal = json.loads(files['calibration.json'])
    profiles = {k: IdentityProfile.from_dict(v)
                for k, v in artifact.loads_json_gz(files['profiles.json.gz']).items()}
    return cls(manifest['version'], forests,
               {c: Calibration.from_dict(cal[c]['calibration']) for c in forests},
               {c: Calibration.from_dict(cal[c]['rarity_calibration']) for c in forests},
               {c: FeatureDistribution.from_dict(cal[c]['features']) for c in forests},
               profiles, manifest)

  # -- scoring ----------------------------------------------------------------
  def cohort_for(self, identity_type: str) -> str:
    return identity_type if identity_type in self.forests else GLOBAL

  def features(self, windows: Sequence, profiles: Optional[Sequence[IdentityProfile]] = None) -> np.ndarray:
    """Feature matrix; ``profiles`` (live per-identity history) default to the trained ones."""
    if profiles is None:
      profiles = [self.profiles.get(w.identity) for w in windows]
    return np.vstack([feature_vector(w.agg, p, w.window_end)
                      for w, p in zip(windows, profiles)]) if windows else np.zeros((0, len(FEATURE_NAMES)))

  def score(self, windows: Sequence, cohorts: Sequence[str],
            profiles: Optional[Sequence[IdentityProfile]] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated scores (higher = more anomalous), their two components, and features.

    Two detectors per cohort, both calibrated to -log10(rarity among training
    windows): the isolation forest (unusual *combinations* of features) and
    per-feature rarity (one feature far beyond anything in training, e.g. a first
    CreateAccessKey, which a forest cannot see if that feature never varied in
    training). The score is the larger of the two.
    """
    x = self.features(windows, profiles)
    components = np.zeros((len(windows), 2))
    cohorts = np.asarray([self.cohort_for(c) for c in cohorts])
    for cohort in set(cohorts.tolist()):
      idx = np.flatnonzero(cohorts == cohort)
      raw = -self.forests[cohort].score_samples(x[idx])
      components[idx, 0] = self.calibrations[cohort].score(raw)
      components[idx, 1] = self.rarity_calibrations[cohort].score(
          self.distributions[cohort].rarity(x[idx]))
    return components.max(axis=1), components, x

  def explain(self, window, cohort: str, x: np.ndarray, top: int = 4,
              profile: Optional[IdentityProfile] = None) -> List[Dict]:
    """The features that make this window rare for its cohort, in a responder's words."""
    cohort = self.cohort_for(cohort)
    tail = self.distributions[cohort].tail_probability(x[None, :])[0]
    order = np.argsort(tail, kind='stable')
    reasons = []
    if profile is None:
      profile = self.profiles.get(window.identity)
    for i in order[:top]:
      if tail[i] > 0.05 or x[i] <= 0:
        break
      value, baseline, detail = describe(FEATURE_NAMES[i], window.agg, profile, window.window_end)
      reasons.append({'feature': FEATURE_NAMES[i], 'value': value, 'baseline': baseline,
                      'detail': detail, 'rarity': float(tail[i])})
    return reasons


def _iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
