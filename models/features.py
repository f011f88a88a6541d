"""Window features relative to the identity's own baseline: one code path for train and serve.

Every feature is oriented so that larger means more unusual for this identity, so
the isolation forest and the explanations read them the same way. The training
job and the scoring DoFn both call ``feature_vector``; nothing else computes
features.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from models.profile import IdentityProfile, hour_of
from transforms.aggregate import WindowAggregate
from transforms.taxonomy import HIGH_IMPACT_CATEGORIES, SENSITIVE_CATEGORIES

EXCESS_CATEGORIES = ('secret_access', 'credential_create', 'privilege_change',
                     'config_change', 'notify', 'message_publish', 'data_read',
                     'data_write', 'enumerate', 'delete', 'defense_evasion',
                     'resource_sharing', 'remote_execution')

FEATURE_NAMES: Tuple[str, ...] = (
    'volume_z',
    'distinct_actions_excess',
    'distinct_resources_excess',
    'novel_action_share',
    'novel_sensitive_actions',
    'novel_high_impact_events',
    'novel_resource_share',
    'novel_resources',
    'new_network_share',
    'new_agent_share',
    'new_region_share',
    'error_ratio_excess',
    'sensitive_share_excess',
) + tuple(f'excess_{c}' for c in EXCESS_CATEGORIES)

INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _excess(value: float, most_before: float) -> float:
  """How far (in log scale) a count goes beyond the most this identity ever did; 0 if not."""
  return max(0.0, math.log1p(value) - math.log1p(most_before))


def _share_unseen(counts: Dict[str, int], p: IdentityProfile, field: str, total: int,
                  unseen: Optional[List[str]] = None) -> float:
  if total <= 0:
    return 0.0
  return sum(counts[k] for k in (p.unseen(field, counts) if unseen is None else unseen)) / total


def feature_vector(agg: WindowAggregate, profile: Optional[IdentityProfile],
                   window_end: float) -> np.ndarray:
  """The model input for one identity-window, against that identity's profile."""
  p = profile or IdentityProfile()
  x = np.zeros(len(FEATURE_NAMES), dtype=np.float64)
  mu, sd = p.volume_baseline(hour_of(window_end - 1))
  x[0] = max(0.0, (math.log1p(agg.count) - mu) / sd)
  x[1] = _excess(len(agg.actions), p.max_distinct_actions)
  x[2] = _excess(len(agg.resources), p.max_distinct_resources)
  novel = p.unseen('actions', agg.actions)
  x[3] = sum(agg.actions[a] for a in novel) / max(agg.count, 1)
  x[4] = math.log1p(sum(1 for a in novel if agg.action_category.get(a) in SENSITIVE_CATEGORIES))
  x[5] = math.log1p(sum(agg.actions[a] for a in novel
                        if agg.action_category.get(a) in HIGH_IMPACT_CATEGORIES))
  resource_events = sum(agg.resources.values())
  novel_resources = p.unseen('resources', agg.resources)
  x[6] = _share_unseen(agg.resources, p, 'resources', resource_events, novel_resources)
  x[7] = math.log1p(len(novel_resources))
  x[8] = _share_unseen(agg.networks, p, 'networks', agg.count)
  x[9] = _share_unseen(agg.agents, p, 'agents', agg.count)
  x[10] = _share_unseen(agg.regions, p, 'regions', agg.count)
  x[11] = max(0.0, agg.errors / max(agg.count, 1) - p.error_ratio())
  sensitive = sum(n for c, n in agg.categories.items() if c in SENSITIVE_CATEGORIES)
  x[12] = max(0.0, sensitive / max(agg.count, 1) - p.sensitive_share())
  base = len(FEATURE_NAMES) - len(EXCESS_CATEGORIES)
  for i, cat in enumerate(EXCESS_CATEGORIES):
    x[base + i] = _excess(agg.categories.get(cat, 0), p.category_max.get(cat, 0))
  return x


def _top(counts: Dict[str, int], keep, n: int = 3) -> List[str]:
  items = sorted(((k, v) for k, v in counts.items() if keep(k)), key=lambda kv: -kv[1])
  return [k for k, _ in items[:n]]


def describe(name: str, agg: WindowAggregate, profile: Optional[IdentityProfile],
             window_end: float) -> Tuple[object, object, str]:
  """(value, baseline, words) for one feature, in the terms a responder uses."""
  p = profile or IdentityProfile()
  seen = p.seen
  if name == 'volume_z':
    mu, _ = p.volume_baseline(hour_of(window_end - 1))
    typical = round(math.expm1(mu), 1)
    return agg.count, typical, f'{agg.count} calls in the window; typically {typical} at this hour'
  if name == 'distinct_actions_excess':
    return (len(agg.actions), p.max_distinct_actions,
            f'{len(agg.actions)} distinct actions; never more than {p.max_distinct_actions} before')
  if name == 'distinct_resources_excess':
    return (len(agg.resources), p.max_distinct_resources,
            f'{len(agg.resources)} distinct resources; never more than {p.max_distinct_resources} before')
  if name in ('novel_action_share', 'novel_sensitive_actions', 'novel_high_impact_events'):
    novel = [a for a in agg.actions if not p.knows('actions', a)]
    if name != 'novel_action_share':
      wanted = SENSITIVE_CATEGORIES if name == 'novel_sensitive_actions' else HIGH_IMPACT_CATEGORIES
      novel = [a for a in novel if agg.action_category.get(a) in wanted]
    shown = sorted(novel, key=lambda a: -agg.actions[a])[:4]
    labelled = ', '.join(f'{a} ({agg.action_category.get(a, "?")}) x{agg.actions[a]}' for a in shown)
    return len(novel), 0, f'never-seen actions: {labelled}'
  if name in ('novel_resource_share', 'novel_resources'):
    novel = [r for r in agg.resources if not p.knows('resources', r)]
    examples = ', '.join(_top(agg.resources, lambda r: not p.knows('resources', r)))
    return (len(novel), len(seen['resources']),
            f'{len(novel)} resources never touched before (of {len(agg.resources)}), e.g. {examples}')
  if name in ('new_network_share', 'new_agent_share', 'new_region_share'):
    field, what = {'new_network_share': ('networks', 'network'),
                   'new_agent_share': ('agents', 'user agent'),
                   'new_region_share': ('regions', 'region')}[name]
    new = _top(getattr(agg, field), lambda k: not p.knows(field, k))
    known = _top(seen[field], lambda k: True, 2)  # strings: these fields are not hashed
    return (', '.join(new), ', '.join(known),
            f'calls from new {what} {", ".join(new)}; usual: {", ".join(known) or "none"}')
  if name == 'error_ratio_excess':
    ratio = agg.errors / max(agg.count, 1)
    return (round(ratio, 3), round(p.error_ratio(), 3),
            f'{agg.errors} of {agg.count} calls failed ({ratio:.0%}); usually {p.error_ratio():.1%}')
  if name == 'sensitive_share_excess':
    sensitive = sum(n for c, n in agg.categories.items() if c in SENSITIVE_CATEGORIES)
    share = sensitive / max(agg.count, 1)
    return (round(share, 3), round(p.sensitive_share(), 3),
            f'{share:.0%} of calls are sensitive (secrets, credentials, privileges, config, '
            f'notifications); usually {p.sensitive_share():.0%}')
  if name.startswith('excess_'):
    cat = name[len('excess_'):]
    n = agg.categories.get(cat, 0)
    most = p.category_max.get(cat, 0)
    actions = ', '.join(_top(agg.actions, lambda a: agg.action_category.get(a) == cat))
    distinct = sum(1 for a, c in agg.action_category.items() if c == cat)
    res_hint = ''
    if cat in ('secret_access', 'data_read', 'notify', 'message_publish', 'config_change'):
      res_hint = f' on {len(agg.resources)} distinct resources'
    return n, most, (f'{n} {cat} calls ({actions}){res_hint}; '
                     f'at most {most} in any earlier window' + ('' if distinct else ''))
  raise KeyError(name)
