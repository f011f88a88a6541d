"""Window features relative to the identity's own baseline: one code path for train and serve.

Every feature is oriented so that larger means more unusual for this identity, so
the isolation forest and the explanations read them the same way. The training
job and the scoring DoFn both call ``feature_row`` (or ``feature_vector``, its array);
nothing else computes features.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from postauth.models.fleet import EMPTY as NO_FLEET
from postauth.models.fleet import PeerView
from postauth.domain.resource_kind import resource_family
from postauth.models.profile import IdentityProfile, hour_of
from postauth.domain.window import WindowAggregate
from postauth.domain.taxonomy import HIGH_IMPACT_CATEGORIES, SENSITIVE_CATEGORIES

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
    'novel_rare_actions',
    'novel_family_share',
    'novel_resources',
    'novel_resource_families',
    'new_network_share',
    'new_network_beside_usual',
    'new_agent_share',
    'new_region_share',
    'error_ratio_excess',
    'sensitive_share_excess',
) + tuple(f'excess_{c}' for c in EXCESS_CATEGORIES)

INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
EXCESS_INDEX = {c: INDEX[f'excess_{c}'] for c in EXCESS_CATEGORIES}


def _excess(value: float, most_before: float) -> float:
  """How far (in log scale) a count goes beyond the most this identity ever did; 0 if not."""
  return max(0.0, math.log1p(value) - math.log1p(most_before))


def _share_unseen(counts: Dict[str, int], p: IdentityProfile, field: str, total: int) -> float:
  """The share of ``total`` calls whose ``field`` value (networks, agents, regions: seen-sets
  kept as strings) the profile never saw."""
  if total <= 0:
    return 0.0
  seen = p.seen[field]
  return sum(n for k, n in counts.items() if k not in seen) / total


# Reads and listings: a fleet-rare one alone is weak evidence (a new feature's describe call);
# many at once, failing, is reconnaissance, which breadth and errors show.
READ_ONLY = ('data_read', 'enumerate')

# A new network's calls overlap the usual networks' calls by more than this (seconds):
# used beside the usual workload (stolen credentials), not after it (a redeploy's cut-over).
CONCURRENT_SECONDS = 300.0


def concurrent_new_networks(agg: WindowAggregate, p: IdentityProfile) -> Tuple[List[str], List[str]]:
  """(new networks used while a usual network was active in the window, those usual networks)."""
  spans = getattr(agg, 'network_spans', None) or {}
  seen = p.seen['networks']  # networks are kept as strings (not hashed)
  usual, new = [], []
  for n in agg.networks:
    if n in spans:
      (usual if n in seen else new).append(n)
  beside, active = [], set()
  for n in new:
    lo, hi = spans[n]
    for u in usual:
      if min(hi, spans[u][1]) - max(lo, spans[u][0]) > CONCURRENT_SECONDS:
        beside.append(n)
        active.add(u)
        break
  return sorted(beside), sorted(active)


def feature_vector(agg: WindowAggregate, profile: Optional[IdentityProfile],
                   window_end: float, peers: Optional[PeerView] = None) -> np.ndarray:
  """``feature_row`` as an array."""
  return np.array(feature_row(agg, profile, window_end, peers), dtype=np.float64)


def feature_row(agg: WindowAggregate, profile: Optional[IdentityProfile],
                window_end: float, peers: Optional[PeerView] = None) -> List[float]:
  """The model input for one identity-window, against that identity's profile and its peers.

  ``peers`` (the fleet's use of each action, without this identity) makes a novel
  sensitive action that many peers routinely make weaker evidence, and counts
  novel actions that almost no identity of the fleet ever made.
  """
  p = profile or IdentityProfile()
  peers = peers or NO_FLEET.view('', None)
  x = [0.0] * len(FEATURE_NAMES)  # a list: numpy item assignment is slow, and a batch's rows make one array
  mu, sd = p.volume_baseline(hour_of(window_end - 1))
  x[0] = max(0.0, (math.log1p(agg.count) - mu) / sd)
  x[1] = _excess(len(agg.actions), p.max_distinct_actions)
  x[2] = _excess(len(agg.resources), p.max_distinct_resources)
  novel = p.unseen('actions', agg.actions)
  x[3] = sum(agg.actions[a] for a in novel) / max(agg.count, 1)
  uncommon = [a for a in novel if not peers.common(a)]
  x[4] = math.log1p(sum(1 for a in uncommon if agg.action_category.get(a) in SENSITIVE_CATEGORIES))
  x[5] = math.log1p(sum(agg.actions[a] for a in uncommon
                        if agg.action_category.get(a) in HIGH_IMPACT_CATEGORIES))
  x[6] = math.log1p(sum(1 for a in novel if peers.rare(a) and agg.action_category.get(a) not in READ_ONLY))
  resource_events = sum(agg.resources.values())
  families = p.unseen_families(agg.resources)
  if resource_events and families:
    x[7] = sum(n for r, n in agg.resources.items() if _family_in(r, families)) / resource_events
  x[8] = math.log1p(len(p.unseen('resources', agg.resources)))
  x[9] = math.log1p(len(families))
  x[10] = _share_unseen(agg.networks, p, 'networks', agg.count)
  beside, _ = concurrent_new_networks(agg, p)
  x[11] = sum(agg.networks[n] for n in beside) / max(agg.count, 1)
  x[12] = _share_unseen(agg.agents, p, 'agents', agg.count)
  x[13] = _share_unseen(agg.regions, p, 'regions', agg.count)
  x[14] = max(0.0, agg.errors / max(agg.count, 1) - p.error_ratio())
  sensitive = sum(n for c, n in agg.categories.items() if c in SENSITIVE_CATEGORIES)
  x[15] = max(0.0, sensitive / max(agg.count, 1) - p.sensitive_share())
  for cat, n in agg.categories.items():
    i = EXCESS_INDEX.get(cat)
    if i is not None and n:  # a category the window has none of is no excess (0 beyond any maximum)
      x[i] = _excess(n, p.category_max.get(cat, 0))
  return x


def _family_in(resource: str, families: Dict[str, int]) -> bool:
  return resource_family(resource) in families


def _top(counts: Dict[str, int], keep, n: int = 3) -> List[str]:
  items = sorted(((k, v) for k, v in counts.items() if keep(k)), key=lambda kv: (-kv[1], kv[0]))
  return [k for k, _ in items[:n]]


def peer_note(action: str, peers: PeerView) -> str:
  """What the fleet says about an action: the absence a responder needs to see."""
  if not peers.fleet.identities:
    return ''
  p, pn = peers.peers(action)
  f, fn = peers.fleet_users(action)
  kind = peers.identity_type or 'its type'
  if p == 0:
    return f'no other {kind} identity made it in the training history ({f} of {fn} in the fleet)'
  return f'{p} of {pn} other {kind} identities made it ({f} of {fn} in the fleet)'


def describe(name: str, agg: WindowAggregate, profile: Optional[IdentityProfile],
             window_end: float, peers: Optional[PeerView] = None) -> Tuple[object, object, str]:
  """(value, baseline, words) for one feature, in the terms a responder uses."""
  p = profile or IdentityProfile()
  peers = peers or NO_FLEET.view('', None)
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
  if name in ('novel_action_share', 'novel_sensitive_actions', 'novel_high_impact_events',
              'novel_rare_actions'):
    novel = [a for a in agg.actions if not p.knows('actions', a)]
    if name == 'novel_rare_actions':
      novel = [a for a in novel if peers.rare(a)]
    elif name != 'novel_action_share':
      wanted = SENSITIVE_CATEGORIES if name == 'novel_sensitive_actions' else HIGH_IMPACT_CATEGORIES
      novel = [a for a in novel if agg.action_category.get(a) in wanted and not peers.common(a)]
    shown = sorted(novel, key=lambda a: (-agg.actions[a], a))[:4]
    labelled = ', '.join(f'{a} ({agg.action_category.get(a, "?")}) x{agg.actions[a]}' for a in shown)
    note = peer_note(shown[0], peers) if shown else ''
    return len(novel), 0, f'never-seen actions: {labelled}' + (f'; {shown[0]}: {note}' if note else '')
  if name in ('novel_family_share', 'novel_resource_families'):
    families = p.unseen_families(agg.resources)
    shown = sorted(families, key=lambda f: (-families[f], f))[:3]
    examples = ', '.join(_top(agg.resources, lambda r: _family_in(r, families)))
    return (len(families), len(seen['families']),
            f'{sum(families.values())} resources in {len(families)} kinds never touched before '
            f'({", ".join(shown)}), e.g. {examples}')
  if name == 'novel_resources':
    novel = [r for r in agg.resources if not p.knows('resources', r)]
    examples = ', '.join(_top(agg.resources, lambda r: not p.knows('resources', r)))
    return (len(novel), len(seen['resources']),
            f'{len(novel)} resources never touched before (of {len(agg.resources)}), e.g. {examples}')
  if name == 'new_network_beside_usual':
    beside, usual = concurrent_new_networks(agg, p)
    return (', '.join(beside), ', '.join(usual),
            f'calls from new network {", ".join(beside)} while the usual network {", ".join(usual)} '
            f'was still active in the same window (a redeploy replaces the old network; this runs beside it)')
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
