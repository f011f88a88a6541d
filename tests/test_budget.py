"""Severity levels from an alert budget (models/budget.py): raised only when held-back days need it."""
from __future__ import annotations

import numpy as np

from postauth.models.budget import HeldOutWindow, above_budget, calibrate, count_pages
from postauth.models.features import FEATURE_NAMES
from postauth.models.model import DetectionModel
from postauth.models.train_config import TrainConfig

DAY = 86400


def _fit(x, config):
  return DetectionModel.fit(x, {}, config, (0, 1))


def _rows(identities: int, days: int, odd_last_days: int, seed: int = 3):
  """Windows of ``identities`` per day; on the last ``odd_last_days`` days every fifth identity
  has one window far from anything before (a release day's noise)."""
  rng = np.random.default_rng(seed)
  rows = {'api_key': []}
  for d in range(days):
    for i in range(identities):
      for h in range(0, 24, 2):
        start = d * DAY + h * 3600
        x = rng.exponential(0.3, len(FEATURE_NAMES))
        if d >= days - odd_last_days and i % 5 == 0 and h == 12:
          x = x + 6.0
        rows['api_key'].append((HeldOutWindow(f'id-{i}', start, start + 3600, False), x))
  return rows


def test_overlapping_paged_windows_are_one_page_and_rules_page_on_their_own():
  w = lambda i, s, rule=False: HeldOutWindow(i, s, s + 3600, rule)
  rows = [(w('a', 0), 5.0), (w('a', 900), 5.0), (w('a', 7200), 5.0), (w('b', 0), 1.0), (w('c', 0, True), 0.0)]
  total, per = count_pages(rows, 4.0)
  assert total == 3 and per == {'a': 2, 'c': 1}


def test_one_page_in_a_few_hundred_identity_days_is_no_evidence_against_the_budget():
  assert not above_budget(1, 300, 5.0) and not above_budget(3, 300, 5.0)
  assert above_budget(6, 300, 5.0) and above_budget(30, 300, 5.0)


def test_levels_stay_at_the_default_on_quiet_held_back_days():
  medium, report = calibrate(_rows(40, 5, 0), TrainConfig(n_estimators=20), 5.0, _fit, 4.0)
  assert report['calibrated'] and report['holdout_days'] == 2 and report['held_out_identity_days'] == 80
  # (a chance page or two in 80 identity-days is not evidence the levels are too low)
  assert medium == 4.0 and not report['significantly_above_budget']


def test_levels_rise_until_a_noisy_release_day_fits_the_budget():
  medium, report = calibrate(_rows(40, 5, 2), TrainConfig(n_estimators=20), 5.0, _fit, 4.0)
  assert report['pages_per_1000_identity_days_at_default_levels'] > 50  # 8 identities a day page
  assert medium > 4.0
  assert not report['significantly_above_budget']
  assert report['per_cohort']['api_key']['identity_days'] == 80


def test_no_calibration_without_days_to_hold_back():
  medium, report = calibrate(_rows(10, 1, 0), TrainConfig(n_estimators=10), 5.0, _fit, 4.0)
  assert medium == 4.0 and not report['calibrated'] and 'training day' in report['why_not']
