"""The detection model: per-cohort isolation forests, calibration, identity profiles.

``DetectionModel.fit`` trains from feature matrices (built by ``models.features``),
``save``/``load`` go through ``models.artifact`` (hash-verified) and ``models.forest_store``
(skops for the fitted forests, numpy arrays for scoring), and ``score`` / ``explain`` are
what the scoring DoFn calls on a batch of windows. Scoring a loaded model imports neither
scikit-learn nor skops (``models.forest_arrays``).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from postauth.models import artifact, forest_store
from postauth.models.calibration import Calibration, FeatureDistribution
from postauth.models.features import FEATURE_NAMES, describe, feature_row
from postauth.models.fleet import FleetProfile, PeerView
from postauth.models.forest_arrays import ForestArrays, from_sklearn
from postauth.models.forest_store import arrays_file, forest_file
from postauth.models.profile import PROFILE_FORMAT, IdentityProfile
from postauth.models.train_config import TrainConfig

GLOBAL = '_global'
TEAM_SEP = '/'  # cohort "identity_type/team"
SEVERITIES = (('critical', 6.5), ('high', 5.0), ('medium', 4.0), ('low', 3.0))
_log = logging.getLogger('postauth.model')


def cohort_key(identity_type: str, team: str = '') -> str:
  """The finest cohort an identity belongs to: "identity_type/team", or the type alone."""
  team = (team or '').strip()
  return f'{identity_type}{TEAM_SEP}{team}' if team else identity_type


def severity_of(score: float, thresholds: Optional[Dict[str, float]] = None) -> Optional[str]:
  """The severity of a calibrated score: the model's budget-calibrated levels, else the defaults."""
  levels = thresholds or dict(SEVERITIES)
  for name, _ in SEVERITIES:
    if score >= levels[name]:
      return name
  return None


def levels_from_medium(medium: float) -> Dict[str, float]:
  """Severity thresholds with medium (a page) at ``medium``: the default spacing above it, low unchanged."""
  base = dict(SEVERITIES)
  shift = max(0.0, medium - base['medium'])
  return {'critical': base['critical'] + shift, 'high': base['high'] + shift, 'medium': base['medium'] + shift,
          'low': base['low']}


class DetectionModel:
  def __init__(self, version: str, forests: Dict[str, ForestArrays],
               calibrations: Dict[str, Calibration], rarity_calibrations: Dict[str, Calibration],
               distributions: Dict[str, FeatureDistribution],
               profiles: Dict[str, IdentityProfile], manifest: Dict,
               fleet: Optional[FleetProfile] = None, source: Optional[Union[Dict, str]] = None):
    self.version = version
    self.fleet = fleet or FleetProfile()
    self.thresholds = dict(manifest.get('severity_thresholds') or dict(SEVERITIES))
    self.forests = forests  # per cohort, what scoring uses
    # Where the scikit-learn forests behind ``forests`` are: the fitted objects, or the model
    # directory a loaded version came from (rebuilt from skops by ``sklearn_forest`` on demand).
    self._sklearn_source = source if source is not None else {}
    self.calibrations = calibrations
    self.rarity_calibrations = rarity_calibrations
    self.distributions = distributions
    self.profiles = profiles
    self.manifest = manifest
    self.fit_seconds: Dict[str, float] = {}  # per cohort, set by fit (for the training report)
    self._peer_views: Dict[Tuple[str, str], PeerView] = {}

  # -- training ---------------------------------------------------------------
  @classmethod
  def fit(cls, cohort_features: Dict[str, np.ndarray], profiles: Dict[str, IdentityProfile],
          config: TrainConfig, training_window: Tuple[float, float],
          counts: Optional[Dict[str, int]] = None, fleet: Optional[FleetProfile] = None,
          thresholds: Optional[Dict[str, float]] = None,
          calibration_report: Optional[Dict] = None) -> 'DetectionModel':
    """Forests for the global cohort, each identity type and (``team_cohorts``) each team.

    ``cohort_features`` is keyed by the finest cohort ("type/team" or "type"). A
    cohort with fewer than ``min_cohort_windows`` windows gets no model of its
    own and is scored by the next coarser one (team -> type -> global). Rows are
    sorted first, so the model does not depend on the order the shuffle
    delivered them in.
    """
    leaves = {k: _sorted_rows(np.asarray(x, dtype=np.float64).reshape(-1, len(FEATURE_NAMES)))
              for k, x in sorted(cohort_features.items()) if len(x)}
    all_x = np.vstack(list(leaves.values())) if leaves else np.zeros((0, len(FEATURE_NAMES)))
    if len(all_x) < 10:
      raise ValueError(f'only {len(all_x)} training windows: need more history')
    by_type: Dict[str, List[np.ndarray]] = {}
    for key, x in leaves.items():
      by_type.setdefault(key.split(TEAM_SEP, 1)[0], []).append(x)
    groups = {GLOBAL: all_x}
    for t, xs in by_type.items():
      x = np.vstack(xs)
      if len(x) >= config.min_cohort_windows:
        groups[t] = x
    if config.team_cohorts:
      for key, x in leaves.items():
        t = key.split(TEAM_SEP, 1)[0]
        # A team that is its whole type would duplicate the type's model.
        if TEAM_SEP in key and len(x) >= config.min_cohort_windows and len(x) < len(groups.get(t, ())):
          groups[key] = x
    from sklearn.ensemble import IsolationForest
    forests, fitted, calibrations, rarity_calibrations, distributions, sizes = {}, {}, {}, {}, {}, {}
    fit_seconds = {}
    for cohort, x in sorted(groups.items()):
      t0 = time.perf_counter()
      fitted[cohort] = IsolationForest(n_estimators=config.n_estimators,
                                       max_samples=min(config.max_samples, len(x)),
                                       max_features=config.max_features, random_state=config.seed).fit(x)
      forests[cohort] = from_sklearn(fitted[cohort])
      raw = -forests[cohort].score_samples(x)  # the scorer `postauth run` uses
      calibrations[cohort] = Calibration.fit(raw)
      distributions[cohort] = FeatureDistribution.fit(x)
      rarity_calibrations[cohort] = Calibration.fit(distributions[cohort].rarity(x))
      sizes[cohort] = len(x)
      fit_seconds[cohort] = time.perf_counter() - t0
      _log.info('fitted cohort %s: %d windows in %.1fs', cohort, len(x), fit_seconds[cohort])
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
        'severity_thresholds': dict(thresholds or dict(SEVERITIES)),
        'severity_levels': severity_levels(thresholds),
        'page_calibration': calibration_report or {},
        'cohort_files': {c: forest_file(c) for c in sorted(forests)},
        'forest_arrays': {c: arrays_file(c) for c in sorted(forests)},
        'profile_format': PROFILE_FORMAT,
    }
    model = cls(version, forests, calibrations, rarity_calibrations, distributions, profiles, manifest, fleet,
                source=fitted)
    model.fit_seconds.update(fit_seconds)
    return model

  # -- persistence ------------------------------------------------------------
  def save(self, model_dir: str, promote: bool = True,
           extra_files: Optional[Dict[str, bytes]] = None) -> str:
    """Writes the version; ``extra_files`` (the training report) join the manifest's hashes."""
    files = dict(extra_files or {})
    for cohort, forest in self.forests.items():
      files[forest_file(cohort)] = forest_store.dumps_sklearn(self.sklearn_forest(cohort))
      files[arrays_file(cohort)] = forest.to_bytes()
    files['calibration.json'] = json.dumps({
        c: {'calibration': self.calibrations[c].to_dict(),
            'rarity_calibration': self.rarity_calibrations[c].to_dict(),
            'features': self.distributions[c].to_dict()} for c in self.forests}).encode()
    files['profiles.json.gz'] = artifact.dumps_json_gz(
        {k: p.to_dict() for k, p in sorted(self.profiles.items())})
    files['fleet.json.gz'] = artifact.dumps_json_gz(self.fleet.to_dict())
    # profiles.json.gz is written in this code's format, whatever the model was loaded from;
    # forest arrays are written even for a version loaded from skops alone.
    return artifact.save_version(model_dir, self.version, files,
                                 dict(self.manifest, profile_format=PROFILE_FORMAT,
                                      forest_arrays={c: arrays_file(c) for c in sorted(self.forests)}),
                                 promote)

  @classmethod
  def verify(cls, model_dir: str, version: Optional[str] = None) -> Tuple[dict, Dict[str, bytes], Dict[str, str]]:
    """(manifest, files, each cohort's forest file) of a version whose every file matches its
    manifest hash and that this code can read; no file is parsed (what a launcher checks before
    submitting a job, without paying for the load the workers do)."""
    manifest, files = artifact.load_verified(model_dir, version)
    if manifest.get('feature_names') != list(FEATURE_NAMES):
      raise artifact.ArtifactError(
          f'{model_dir}/{manifest.get("version")}: trained on features {manifest.get("feature_names")}, '
          f'this code computes {list(FEATURE_NAMES)}; retrain')
    if manifest.get('profile_format', 1) > PROFILE_FORMAT:
      raise artifact.ArtifactError(
          f'{model_dir}/{manifest.get("version")}: profiles in format {manifest["profile_format"]}, '
          f'this code reads up to {PROFILE_FORMAT}; upgrade postauth to load it')
    forest_files, needed = {}, ['calibration.json', 'profiles.json.gz']
    for cohort in manifest['cohorts']:
      skops_name = manifest.get('cohort_files', {}).get(cohort, f'forest-{cohort}.skops')
      # Versions saved before the arrays existed list none: their skops forest is converted.
      forest_files[cohort] = manifest.get('forest_arrays', {}).get(cohort, skops_name)
      needed += [skops_name, forest_files[cohort]]
    for name in needed:
      if name not in files:
        raise artifact.ArtifactError(f'{model_dir}/{manifest["version"]}/{name}: missing from manifest')
    return manifest, files, forest_files

  @classmethod
  def load(cls, model_dir: str, version: Optional[str] = None) -> 'DetectionModel':
    manifest, files, forest_files = cls.verify(model_dir, version)
    forests = {cohort: forest_store.load_scorer(name, files[name], manifest['files'][name])
               for cohort, name in forest_files.items()}
    cal = artifact.loads_json(files['calibration.json'])
    profiles = {k: IdentityProfile.from_dict(v)
                for k, v in artifact.loads_json_gz(files['profiles.json.gz']).items()}
    return cls(manifest['version'], forests,
               {c: Calibration.from_dict(cal[c]['calibration']) for c in forests},
               {c: Calibration.from_dict(cal[c]['rarity_calibration']) for c in forests},
               {c: FeatureDistribution.from_dict(cal[c]['features']) for c in forests},
               profiles, manifest,
               FleetProfile.from_dict(artifact.loads_json_gz(files['fleet.json.gz'])) if 'fleet.json.gz' in files else None,
               source=model_dir)

  def sklearn_forest(self, cohort: str):
    """The fitted scikit-learn forest of a cohort (for audit): a loaded version's is read back
    from its verified skops file, which imports scikit-learn and skops."""
    if isinstance(self._sklearn_source, dict):
      return self._sklearn_source[cohort]
    _, files = artifact.load_verified(self._sklearn_source, self.version)
    name = self.manifest.get('cohort_files', {}).get(cohort, f'forest-{cohort}.skops')
    return forest_store.loads_sklearn(name, files[name])

  # -- scoring ----------------------------------------------------------------
  def cohort_for(self, identity_type: Union[str, Dict[str, str]], team: Optional[str] = None) -> str:
    """The most specific cohort with a model: "type/team", then "type", then global.

    Accepts an identity type (with ``team``), a "type/team" key, or an inventory
    context dict (``identity_type`` and ``team`` keys), so callers can pass the
    enriched window's context as is.
    """
    if isinstance(identity_type, dict):
      team = identity_type.get('team', '') if team is None else team
      identity_type = identity_type.get('identity_type', '')
    identity_type = identity_type or ''
    if TEAM_SEP in identity_type:
      identity_type, _, team_in_key = identity_type.partition(TEAM_SEP)
      team = team if team is not None else team_in_key
    if team:
      key = cohort_key(identity_type, team)
      if key in self.forests:
        return key
    return identity_type if identity_type in self.forests else GLOBAL

  def peers(self, identity: str, identity_type: str) -> PeerView:
    """The fleet as this identity's peers see it (its own trained use not counted); kept per
    trained identity and type (a loaded model does not change; every window of it asks)."""
    profile = self.profiles.get(identity)
    if profile is None:
      return self.fleet.view(identity_type, None)
    view = self._peer_views.get((identity, identity_type))
    if view is None:
      view = self._peer_views[identity, identity_type] = self.fleet.view(
          identity_type, profile.seen['actions'], networks=profile.seen['networks'])
    return view

  def severity_of(self, score: float) -> Optional[str]:
    return severity_of(score, self.thresholds)

  def features(self, windows: Sequence, profiles: Optional[Sequence[IdentityProfile]] = None,
               types: Optional[Sequence[str]] = None) -> np.ndarray:
    """Feature matrix; ``profiles`` (live per-identity history) default to the trained ones,
    ``types`` (inventory identity types, for peers) to the types the events carried."""
    if profiles is None:
      profiles = [self.profiles.get(w.identity) for w in windows]
    if types is None:
      types = [w.agg.identity_type for w in windows]
    return np.array([feature_row(w.agg, p, w.window_end, self.peers(w.identity, t))
                     for w, p, t in zip(windows, profiles, types)], dtype=np.float64).reshape(len(windows), len(FEATURE_NAMES))

  def score(self, windows: Sequence, cohorts: Sequence[str],
            profiles: Optional[Sequence[IdentityProfile]] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated scores (higher = more anomalous), their two components, and features.

    Two detectors per cohort, both calibrated to -log10(rarity among training
    windows): the isolation forest (unusual *combinations* of features) and
    per-feature rarity (one feature far beyond anything in training, e.g. a first
    CreateAccessKey, which a forest cannot see if that feature never varied in
    training). The score is the larger of the two.
    """
    x = self.features(windows, profiles, [_type_of(c) for c in cohorts])
    components = np.zeros((len(windows), 2))
    for cohort, idx in self.rows_by_cohort(cohorts):
      components[idx] = self.score_features(x[idx], cohort)[1]
    return components.max(axis=1), components, x

  def rows_by_cohort(self, cohorts: Sequence) -> List[Tuple[str, np.ndarray]]:
    """(model cohort, indices of the rows it scores) for rows given as ``cohort_for`` takes them."""
    keys = np.asarray([self.cohort_for(c) for c in cohorts])
    return [(cohort, np.flatnonzero(keys == cohort)) for cohort in set(keys.tolist())]

  def score_features(self, x: np.ndarray, cohort: str) -> Tuple[np.ndarray, np.ndarray]:
    """Calibrated scores and their (forest, rarity) components for a feature matrix of one cohort."""
    cohort = self.cohort_for(cohort)
    components = np.zeros((len(x), 2))
    if len(x):
      raw = -self.forests[cohort].score_samples(x)
      components[:, 0] = self.calibrations[cohort].score(raw)
      components[:, 1] = self.rarity_calibrations[cohort].score(self.distributions[cohort].rarity(x))
    return components.max(axis=1), components

  def explain(self, window, cohort: str, x: np.ndarray, top: int = 4,
              profile: Optional[IdentityProfile] = None, tail: Optional[np.ndarray] = None) -> List[Dict]:
    """The features that make this window rare for its cohort, in a responder's words
    (``tail``: its per-feature tail probabilities, when its batch has them)."""
    peers = self.peers(window.identity, _type_of(cohort))
    if tail is None:
      tail = self.distributions[self.cohort_for(cohort)].tail_probability(x[None, :])[0]
    order = np.argsort(tail, kind='stable')
    reasons, profile = [], self.profiles.get(window.identity) if profile is None else profile
    for i in order[:top]:
      if tail[i] > 0.05 or x[i] <= 0:
        break
      value, baseline, detail = describe(FEATURE_NAMES[i], window.agg, profile, window.window_end,
                                         peers)
      reasons.append({'feature': FEATURE_NAMES[i], 'value': value, 'baseline': baseline,
                      'detail': detail, 'rarity': float(tail[i])})
    return reasons


def _type_of(cohort: Union[str, Dict[str, str]]) -> str:
  if isinstance(cohort, dict):
    return cohort.get('identity_type', '')
  return (cohort or '').split(TEAM_SEP, 1)[0]


def severity_levels(thresholds: Optional[Dict[str, float]] = None) -> Dict[str, Dict[str, float]]:
  """What each severity threshold means, from the calibration: the same in every cohort.

  A calibrated score s is -log10 of the share of a cohort's training windows that
  scored as high, so a severity starting at s fires on 10**-s of normal windows,
  in any cohort, whatever its size or raw score scale.
  """
  levels = thresholds or dict(SEVERITIES)
  return {name: {'score': levels[name], 'tail_probability': 10 ** -levels[name],
                 'expected_per_1000_windows': 1000 * 10 ** -levels[name]} for name, _ in SEVERITIES}


def _sorted_rows(x: np.ndarray) -> np.ndarray:
  return x[np.lexsort(x.T[::-1])] if len(x) > 1 else x


def _iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
