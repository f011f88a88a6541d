"""The training hyperparameters (``postauth train --train-config``), validated before a job
starts: a bad file is refused in one line naming the key and what it must be."""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, Optional


class ConfigError(ValueError):
  """A training configuration file that cannot be used (unknown key, bad value)."""


@dataclasses.dataclass
class TrainConfig:
  """Hyperparameters; loadable from a JSON file with the same keys.

  Every key is documented in docs/models.md ("Training configuration") and shown in
  config/train-config.example.json.
  """
  n_estimators: int = 100  # trees per cohort forest
  max_samples: int = 512  # windows drawn per tree (capped at the cohort's size)
  max_features: float = 1.0  # share of features drawn per tree
  seed: int = 42  # random_state of every forest: same data + config = same model
  min_cohort_windows: int = 300  # smaller cohorts use the next coarser model
  warmup_days: int = 1  # windows scored against at least this much history
  team_cohorts: bool = False  # also train one model per (identity_type, team)
  holdout_days: int = 2  # last history days the levels are calibrated on, each scored by a model of the days before

  @classmethod
  def from_file(cls, path: Optional[str]) -> 'TrainConfig':
    if not path:
      return cls()
    from apache_beam.io.filesystems import FileSystems
    try:
      with FileSystems.open(path, compression_type='uncompressed') as f:
        data = json.loads(f.read())
    except Exception as e:  # unreadable or not JSON: say which file
      raise ConfigError(f'--train-config {path}: {e}') from e
    return cls.from_dict(data, source=path)

  @classmethod
  def from_dict(cls, data: Dict, source: str = 'config') -> 'TrainConfig':
    if not isinstance(data, dict):
      raise ConfigError(f'{source}: expected a JSON object of hyperparameters')
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
      raise ConfigError(f'{source}: unknown keys {unknown}; known keys: {sorted(known)}')
    config = cls(**data)
    if isinstance(config.max_features, int) and not isinstance(config.max_features, bool):
      # JSON 1 is an int, and scikit-learn reads an int max_features as a feature *count*.
      config.max_features = float(config.max_features)
    config.validate(source)
    return config

  def validate(self, source: str = 'config') -> None:
    checks = [
        ('n_estimators', isinstance(self.n_estimators, int) and self.n_estimators >= 1, 'an integer >= 1'),
        ('max_samples', isinstance(self.max_samples, int) and self.max_samples >= 2, 'an integer >= 2'),
        ('max_features', isinstance(self.max_features, (int, float)) and 0 < self.max_features <= 1,
         'a number in (0, 1]'),
        ('seed', isinstance(self.seed, int) and not isinstance(self.seed, bool), 'an integer'),
        ('min_cohort_windows', isinstance(self.min_cohort_windows, int) and self.min_cohort_windows >= 10,
         'an integer >= 10'),
        ('warmup_days', isinstance(self.warmup_days, int) and self.warmup_days >= 0, 'an integer >= 0'),
        ('team_cohorts', isinstance(self.team_cohorts, bool), 'true or false'),
        ('holdout_days', isinstance(self.holdout_days, int) and self.holdout_days >= 0, 'an integer >= 0'),
    ]
    for name, ok, expected in checks:
      if not ok:
        raise ConfigError(f'{source}: {name}={getattr(self, name)!r} must be {expected}')
