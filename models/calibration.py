"""Turn raw isolation-forest scores into a score that means the same in every cohort.

The calibrated score is -log10 of how rare a raw score was among the cohort's
training windows: 3 means "one training window in a thousand scored this high".
Past the 99th percentile, where the empirical distribution runs out, the tail is
an exponential fitted by peaks-over-threshold (mean excess), so scores beyond
anything seen in training keep growing instead of saturating.
"""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

TAIL_LEVEL = 0.99
MAX_SCORE = 12.0
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 1001)


class Calibration:
  def __init__(self, quantiles: List[float], tail_start: float, mean_excess: float, n: int):
    self.quantiles = np.asarray(quantiles, dtype=np.float64)
    self.tail_start = float(tail_start)
    self.mean_excess = max(float(mean_excess), 1e-6)
    self.n = int(n)

  @classmethod
  def fit(cls, raw: np.ndarray) -> 'Calibration':
    raw = np.asarray(raw, dtype=np.float64)
    q = np.quantile(raw, QUANTILE_LEVELS)
    tail_start = float(np.quantile(raw, TAIL_LEVEL))
    exceed = raw[raw > tail_start] - tail_start
    mean_excess = float(exceed.mean()) if len(exceed) else float(np.std(raw) or 1e-3)
    return cls(q.tolist(), tail_start, mean_excess, len(raw))

  def tail_probability(self, raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64)
    # Empirical part: share of training scores at or above raw.
    below = np.interp(raw, self.quantiles, QUANTILE_LEVELS, left=0.0, right=1.0)
    p = np.clip(1.0 - below, 1.0 / (self.n + 1), 1.0)
    tail = raw > self.tail_start
    p[tail] = (1.0 - TAIL_LEVEL) * np.exp(-(raw[tail] - self.tail_start) / self.mean_excess)
    return p

  def raw_at(self, score: float) -> float:
    """The raw score that calibrates to ``score``: the inverse of ``score`` (per-cohort thresholds)."""
    p = 10.0 ** -float(score)
    if p >= 1.0 - TAIL_LEVEL:
      return float(np.interp(1.0 - p, QUANTILE_LEVELS, self.quantiles))
    return self.tail_start + self.mean_excess * math.log((1.0 - TAIL_LEVEL) / p)

  def score(self, raw: np.ndarray) -> np.ndarray:
    return np.minimum(-np.log10(np.maximum(self.tail_probability(raw), 10 ** -MAX_SCORE)), MAX_SCORE)

  def to_dict(self) -> Dict:
    return {'quantiles': self.quantiles.tolist(), 'tail_start': self.tail_start,
            'mean_excess': self.mean_excess, 'n': self.n}

  @classmethod
  def from_dict(cls, d: Dict) -> 'Calibration':
    return cls(d['quantiles'], d['tail_start'], d['mean_excess'], d['n'])


class FeatureDistribution:
  """Per-feature training quantiles of a cohort: how rare is each feature value?

  Within the training range the tail probability is empirical; beyond the largest
  training value it decays exponentially with a per-feature scale, so a value
  never seen in training (a feature that was always 0, say) is rare *and* ranked
  by how far out it lies, instead of being ignored as isolation forests do with
  features that were constant in training.
  """

  MIN_SCALE = 0.5

  def __init__(self, quantiles: List[List[float]], scales: List[float], n: int):
    self.quantiles = np.asarray(quantiles, dtype=np.float64)  # (features, levels)
    self.scales = np.asarray(scales, dtype=np.float64)
    self.n = int(n)
    # Binary search needs each feature's quantiles ascending (np.quantile's are) and no NaN.
    self._searchable = bool(np.all(np.diff(self.quantiles, axis=1) >= 0))

  @classmethod
  def fit(cls, X: np.ndarray) -> 'FeatureDistribution':
    scales = np.maximum(X.std(axis=0), cls.MIN_SCALE)
    return cls(np.quantile(X, QUANTILE_LEVELS, axis=0).T.tolist(), scales.tolist(), len(X))

  def tail_probability(self, X: np.ndarray) -> np.ndarray:
    """P(training value >= x) per feature; rows are windows, columns features."""
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    floor = 1.0 / (self.n + 1)
    last = self.quantiles.shape[1] - 1
    below = np.where(np.isnan(X), last + 1, self._below(X)) / last
    p = np.maximum(1.0 - np.minimum(below, 1.0), floor)
    top = self.quantiles[:, -1]
    beyond = X > top
    with np.errstate(over='ignore', invalid='ignore'):
      decayed = floor * np.exp(-(X - top) / self.scales)
    return np.where(beyond, decayed, p)

  def _below(self, X: np.ndarray) -> np.ndarray:
    """How many of each feature's training quantiles lie strictly below x. One binary search
    per feature for a batch of rows; for a single row, comparing it with every quantile at once
    is cheaper than a search per feature."""
    if len(X) == 1 or not self._searchable:
      return (self.quantiles[None, :, :] < X[:, :, None]).sum(axis=2)
    below = np.empty(X.shape, dtype=np.int64)
    for j, q in enumerate(self.quantiles):
      below[:, j] = np.searchsorted(q, X[:, j], side='left')
    return below

  def rarity(self, X: np.ndarray) -> np.ndarray:
    """-log10 tail probabilities of the three rarest features, with diminishing weight."""
    surprise = -np.log10(self.tail_probability(X))
    top = -np.sort(-surprise, axis=1)[:, :3]
    weights = np.array([1.0, 0.5, 0.25])[:top.shape[1]]
    return top @ weights

  def to_dict(self) -> Dict:
    return {'quantiles': self.quantiles.tolist(), 'scales': self.scales.tolist(), 'n': self.n}

  @classmethod
  def from_dict(cls, d: Dict) -> 'FeatureDistribution':
    return cls(d['quantiles'], d['scales'], d['n'])
