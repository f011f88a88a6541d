"""Severity levels from an alert budget, calibrated on held-back days of ordinary change.

A finding at medium or above pages a responder, so the medium threshold is chosen for
how many pages a fleet can take: ``page_budget`` pages per 1,000 identity-days (``postauth train --page-budget``). The
last ``holdout_days`` of the training history (which hold the fleet's everyday change:
rollouts, redeploys, backfills, new resources, rotations) are each scored by a model
fitted on the days before them, as the daily retrain would have scored them live. The
windows are merged into findings as the detection job merges them (overlapping
windows of an identity are one finding), and rules that would page count too. The
lowest medium threshold (never below the default) at which the held-back pages are not
significantly above the budget (Poisson, 5%) is kept; high and critical keep their
spacing above it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

DAY = 86400.0


class HeldOutWindow(NamedTuple):
  """What calibration needs of one training window besides its features."""
  identity: str
  window_start: float
  window_end: float
  rule_page: bool  # its judgment pages without the model (evidence no rollout explains)
  model_may_page: bool = True  # a model flag can make it page (evidence or shareable novelty)


def day_of(t: float) -> int:
  return int(math.floor((t - 1e-6) / DAY))


def count_pages(rows: Sequence[Tuple[HeldOutWindow, float]], medium: float) -> Tuple[int, Dict[str, int]]:
  """Findings at medium or above: runs of overlapping paged windows per identity (as the merge does)."""
  by_identity: Dict[str, List[Tuple[float, float]]] = {}
  for w, score in rows:
    if (score >= medium and w.model_may_page) or w.rule_page:
      by_identity.setdefault(w.identity, []).append((w.window_start, w.window_end))
  pages: Dict[str, int] = {}
  for identity, spans in by_identity.items():
    end, n = float('-inf'), 0
    for start, stop in sorted(spans):
      if start >= end:
        n += 1
      end = max(end, stop) if start < end else stop
    pages[identity] = n
  return sum(pages.values()), pages


SIGNIFICANCE = 0.05  # raise the levels only when the held-back pages exceed the budget beyond chance


def above_budget(pages: int, identity_days: int, budget: float) -> bool:
  """Whether ``pages`` in ``identity_days`` exceed ``budget`` per 1,000 beyond Poisson chance.

  A few hundred held-back identity-days expect about one page at a budget of 5: one
  page more is no evidence the levels are too low, and raising them on it would trade
  recall for noise in the estimate. P(N >= pages) under the budget's rate < 5%: above.
  """
  lam = budget * identity_days / 1000.0
  below = sum(math.exp(-lam) * lam ** k / math.factorial(k) for k in range(pages))
  return 1.0 - below < SIGNIFICANCE


def calibrate(rows: Dict[str, List[Tuple[HeldOutWindow, np.ndarray]]], config, page_budget: float,
              fit: Callable[[Dict[str, np.ndarray], object], object],
              default_medium: float) -> Tuple[float, Dict]:
  """(medium threshold, report) for ``page_budget`` from ``rows`` (cohort -> windows and features).

  ``fit(features_by_cohort, config)`` returns a model with ``score_features(x, cohort)``.
  """
  days = sorted({day_of(w.window_end) for items in rows.values() for w, _ in items})
  k = min(config.holdout_days, len(days) - 1)
  report: Dict = {'page_budget_per_1000_identity_days': page_budget, 'holdout_days': k}
  if k <= 0:
    report['calibrated'] = False
    report['why_not'] = f'{len(days)} training day(s): need more than holdout_days to hold any back'
    return default_medium, report
  scored: List[Tuple[HeldOutWindow, float, str]] = []
  quiet = dataclasses.replace(config, holdout_days=0)
  for day in days[-k:]:
    train = {c: np.vstack([x for w, x in items if day_of(w.window_end) < day])
             for c, items in rows.items() if any(day_of(w.window_end) < day for w, _ in items)}
    try:
      model = fit(train, quiet)
    except ValueError as e:  # too few windows before this day
      report.setdefault('skipped_days', []).append(f'{day}: {e}')
      continue
    for cohort, items in rows.items():
      held = [(w, x) for w, x in items if day_of(w.window_end) == day]
      if not held:
        continue
      scores, _ = model.score_features(np.vstack([x for _, x in held]), cohort)
      scored += [(w, float(s), cohort) for (w, _), s in zip(held, scores)]
  identity_days = {(w.identity, day_of(w.window_end)) for w, _, _ in scored}
  if not identity_days:
    report['calibrated'] = False
    report['why_not'] = 'no held-back windows could be scored'
    return default_medium, report
  pairs = [(w, s) for w, s, _ in scored]
  rate = lambda n: 1000.0 * n / len(identity_days)
  rule_pages, _ = count_pages([(w, float('-inf')) for w, _ in pairs], math.inf)
  candidates = sorted({default_medium} | {s for _, s in pairs if s > default_medium})
  medium = candidates[-1] + 1e-3
  for t in candidates:
    if not above_budget(count_pages(pairs, t)[0], len(identity_days), page_budget):
      medium = t
      break
  total, per_identity = count_pages(pairs, medium)
  default_total, _ = count_pages(pairs, default_medium)
  cohorts: Dict[str, Dict] = {}
  for w, s, cohort in scored:  # per identity type: a team's few identity-days say little
    c = cohorts.setdefault(cohort.split('/', 1)[0], {'identity_days': set(), 'identities': set()})
    c['identity_days'].add((w.identity, day_of(w.window_end)))
    c['identities'].add(w.identity)
  per_cohort = {}
  for cohort, c in sorted(cohorts.items()):
    n = sum(per_identity.get(i, 0) for i in c['identities'])
    per_cohort[cohort] = {'identity_days': len(c['identity_days']), 'pages': n,
                          'expected_pages_per_1000_identity_days': round(1000.0 * n / len(c['identity_days']), 2)}
  report.update({
      'calibrated': True, 'medium_threshold': round(medium, 4), 'default_medium_threshold': default_medium,
      'held_out_identity_days': len(identity_days), 'held_out_windows': len(scored),
      'expected_pages_per_1000_identity_days': round(rate(total), 2),
      'pages_per_1000_identity_days_at_default_levels': round(rate(default_total), 2),
      'rule_pages_per_1000_identity_days': round(rate(rule_pages), 2),
      'within_budget': rate(total) <= page_budget,
      'significantly_above_budget': above_budget(total, len(identity_days), page_budget),
      'per_cohort': per_cohort})
  return medium, report
