"""Deterministic detections beside the model: explicit, explainable, each one switchable.

A rule looks at one identity-window, the identity's inventory row and its history
before the window's day, and returns a reason ``{"rule", "detail", "severity",
"actions"}`` or nothing. Rules catch what needs no statistics ("a disabled key
made calls", "a CI account changed IAM policies") and keep working for
identities too new for the model.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from postauth.domain.tool_calls import SEPARATOR, is_derived
from postauth.models.features import concurrent_new_networks, peer_note
from postauth.transforms.agent_rules import AGENT_RULES
from postauth.domain.glob_match import matcher, matches_any
from postauth.domain.taxonomy import HIGH_IMPACT_CATEGORIES, SENSITIVE_CATEGORIES

DAY = 86400.0
INACTIVE_STATUSES = ('disabled', 'inactive', 'suspended', 'deleted', 'decommissioned', 'revoked')
HUMAN_TYPES = ('human', 'user')
READ_CATEGORIES = ('data_read', 'enumerate', 'auth_other')


@dataclasses.dataclass
class RuleConfig:
  """Which rules run and their parameters (flags of ``postauth run``)."""
  disabled: Sequence[str] = ()
  dormant_days: float = 30.0

  def enabled(self, name: str) -> bool:
    return name not in self.disabled


def _actions_in(agg, categories: Sequence[str]) -> List[str]:
  return sorted((a for a, c in agg.action_category.items() if c in categories),
                key=lambda a: (-agg.actions.get(a, 0), a))


def out_of_scope(window, context: Dict, history, config: RuleConfig, peers=None) -> Optional[Dict]:
  """Actions or services outside the inventory's expected patterns.

  How much it matters depends on what else is known: an action the identity already
  made on earlier days is its routine and the declared scope is stale (low); a new
  high-impact action, or a new sensitive one that its peers do not make or on
  resources of a kind it never touched, is high; a new harmless one (reads, writes,
  telemetry), or a sensitive one that is routine in the fleet on its own resources, is
  low; the rest (deletes, launches) medium.
  """
  services, actions = context.get('expected_services') or [], context.get('expected_actions') or []
  if not services and not actions:
    return None
  agg = window.agg
  outside = []
  in_services = matcher(tuple(services)) if services else None
  in_actions = matcher(tuple(actions)) if actions else None
  for action in agg.actions:
    if SEPARATOR in action and is_derived(action):  # an agent tool's cloud calls: transforms/agent_rules.py
      continue
    if in_services is not None and not in_services(action.partition(':')[0]):
      outside.append(action)
    elif in_actions is not None and not in_actions(action):
      outside.append(action)
  if not outside:
    return None
  outside.sort(key=lambda a: (-agg.actions[a], a))
  new = [a for a in outside if history is None or not history.knows('actions', a)]
  cats = {agg.action_category.get(a, '') for a in new}
  own_resources = history is not None and history.windows and not history.unseen_families(agg.resources)
  sensitive_new = [a for a in new if agg.action_category.get(a) in SENSITIVE_CATEGORIES]
  routine_elsewhere = peers is not None and all(peers.common(a) for a in sensitive_new)
  if cats & set(HIGH_IMPACT_CATEGORIES):
    severity = 'high'
  elif sensitive_new:
    severity = 'low' if routine_elsewhere and own_resources else 'high'
  elif cats & {'delete', 'compute_launch'}:
    severity = 'medium'
  else:
    severity = 'low'
  declared = ', '.join((services + actions)[:6])
  why = ''
  if not new:
    why = '; all made on earlier days too (the declared scope looks stale)'
  elif sensitive_new and severity == 'low':
    why = '; routine for other identities of the fleet, on resources of kinds it already uses'
  return {'rule': 'out_of_scope', 'severity': severity, 'actions': outside[:20],
          'detail': f'{agg.listing(outside)} outside the declared scope ({declared}){why}'}


def agent_identity_claimed_by_other_service(window, context: Dict, history, config: RuleConfig,
                                            peers=None) -> Optional[Dict]:
  """Records naming this identity emitted by a service the inventory does not let speak for it.

  A span claims the agent it acts for (``gen_ai.agent.id``): any service that reaches the
  collector can claim any agent. The inventory's ``emitted_by`` lists the services (globs on
  ``service.name``) that may; a span from another one is a forged or misattributed identity,
  whatever the rest of the window shows. No ``emitted_by``, or no self-named records: silent.
  """
  allowed = context.get('emitted_by') or []
  emitters = getattr(window.agg, 'emitters', None) or {}
  if not allowed or not emitters:
    return None
  others = sorted((e for e in emitters if not matches_any(e, allowed)), key=lambda e: (-emitters[e][0], e))
  if not others:
    return None
  spans = sum(emitters[e][0] for e in others)
  allowed_spans = sum(n for e, (n, _) in emitters.items() if e not in others)
  named = '; '.join(f'{e or "(no service.name)"} x{emitters[e][0]} (first spans: '
                    + ', '.join(eid for _, eid, _ in emitters[e][1]) + ')'
                    for e in others[:5])
  more = f'; and {len(others) - 5} more services' if len(others) > 5 else ''
  actions = sorted({action for e in others for _, _, action in emitters[e][1]})
  return {'rule': 'agent_identity_claimed_by_other_service', 'severity': 'high', 'actions': actions,
          'detail': f'{spans} spans claiming {window.identity} were emitted by {named}{more}: '
                    f'not among the services allowed to speak for it (emitted_by: {", ".join(allowed)}); '
                    f'{allowed_spans} from allowed ones'}


def disabled_identity_active(window, context: Dict, history, config: RuleConfig, peers=None) -> Optional[Dict]:
  """An identity the inventory marks disabled made successful calls."""
  status = context.get('status', '')
  agg = window.agg
  if status not in INACTIVE_STATUSES or agg.count - agg.errors <= 0:
    return None
  return {'rule': 'disabled_identity_active', 'severity': 'critical', 'actions': list(agg.actions)[:20],
          'detail': f'inventory status is {status!r} but {agg.count - agg.errors} calls succeeded '
                    f'({agg.listing(sorted(agg.actions, key=lambda a: (-agg.actions[a], a)), 3)})'}


def dormant_identity_revived(window, context: Dict, history, config: RuleConfig, peers=None) -> Optional[Dict]:
  """First activity after a long silence (an abandoned key is a favourite target)."""
  last = history.last_seen if history is not None else float('-inf')
  if last == float('-inf') or last == float('inf'):
    return None
  gap = window.agg.first_time - last
  if gap < config.dormant_days * DAY:
    return None
  agg = window.agg
  sensitive = _actions_in(agg, SENSITIVE_CATEGORIES)
  when = datetime.datetime.fromtimestamp(last, datetime.timezone.utc).strftime('%Y-%m-%d')
  return {'rule': 'dormant_identity_revived', 'severity': 'high' if sensitive else 'medium',
          'actions': sorted(agg.actions, key=lambda a: (-agg.actions[a], a))[:20],
          'detail': f'active again after {gap / DAY:.0f} days of silence (last seen {when}); '
                    f'{agg.count} calls' + (f', sensitive: {agg.listing(sensitive, 3)}' if sensitive else '')}


def new_network_beside_usual(window, context: Dict, history, config: RuleConfig, peers=None) -> Optional[Dict]:
  """Calls from a network outside the fleet's address space, while the usual network is still active.

  Scale-outs, node pools, blue/green and rescheduling also run beside the old network, but
  inside the address space the fleet already calls from (models/fleet.py
  ``network_standing``); stolen credentials used beside the workload come from outside it.
  """
  if history is None or not history.windows or peers is None or not peers.fleet.identities:
    return None
  beside, usual = concurrent_new_networks(window.agg, history)
  unknown = [n for n in beside if peers.network_standing(n)[0] == 'foreign']
  if not unknown:
    return None
  agg = window.agg
  n = sum(agg.networks[x] for x in unknown)
  new_agents = sorted(a for a in agg.agents if not history.knows('agents', a))
  return {'rule': 'new_network_beside_usual', 'severity': 'high' if new_agents else 'medium',
          'actions': sorted(agg.actions, key=lambda a: (-agg.actions[a], a))[:20],
          'detail': f'{n} calls from {", ".join(unknown)}, a network outside the fleet\'s address space, '
                    f'while its usual network {", ".join(usual)} was active in the same window'
                    + (f'; with a new client {", ".join(new_agents)}' if new_agents else '')}


def new_network_and_client(window, context: Dict, history, config: RuleConfig, peers=None) -> Optional[Dict]:
  """Calls from a network no identity of the fleet used, with a client this identity never used.

  A redeploy moves a workload to another network but keeps its client (the same image);
  a stolen credential comes with the attacker's network and tools, even when it is used for
  a few minutes while the workload is quiet (no overlap for ``new_network_beside_usual``).
  """
  if history is None or not history.windows or peers is None or not peers.fleet.identities:
    return None
  agg = window.agg
  clients = sorted(a for a in agg.agents if a and not history.knows('agents', a))
  if not clients:  # the cheaper half first
    return None
  unknown = sorted(n for n in agg.networks
                   if not history.knows('networks', n) and peers.network_standing(n)[0] == 'foreign')
  if not unknown:
    return None
  return {'rule': 'new_network_and_client', 'severity': 'medium',
          'actions': sorted(agg.actions, key=lambda a: (-agg.actions[a], a))[:20],
          'detail': f'calls from {", ".join(unknown)}, a network outside the fleet\'s address space, and with '
                    f'{", ".join(clients)}, a client this identity never used (usual: '
                    f'{", ".join(sorted(history.seen["agents"])[:2]) or "none"})'}


SWEEP_ACTIONS = 8  # never-seen actions in one window ...
SWEEP_FAILED = 0.5  # ... most of the window's calls failing


def access_denied_sweep(window, context: Dict, history, config: RuleConfig, peers=None) -> Optional[Dict]:
  """Many never-seen actions in one window, most of them denied: a credential probing what it can do.

  Reconnaissance after a credential is stolen looks like this (the tools list every service
  they know); a rollout adds a call or two, and they succeed.
  """
  if history is None or not history.windows:
    return None
  agg = window.agg
  if agg.errors < SWEEP_FAILED * agg.count:  # the cheaper half first
    return None
  novel = history.unseen('actions', agg.actions)
  if len(novel) < SWEEP_ACTIONS:
    return None
  services = sorted({a.partition(':')[0] for a in novel})
  novel.sort(key=lambda a: (-agg.actions[a], a))
  return {'rule': 'access_denied_sweep', 'severity': 'medium', 'actions': novel[:20],
          'detail': f'{len(novel)} never-seen actions over {len(services)} services '
                    f'({", ".join(services[:8])}), {agg.errors} of {agg.count} calls failed: '
                    f'{agg.listing(novel)}'}


# Categories that move data to someone or somewhere: what exfiltration ends with.
SEND_CATEGORIES = ('data_write', 'notify', 'message_publish', 'resource_sharing')
COLLECT_MIN_FAMILIES = 2  # resource kinds never touched before, in the window
SEND_MIN_EVENTS = 5


def collect_and_send(window, context: Dict, history, config: RuleConfig, peers=None) -> Optional[Dict]:
  """Resources of several kinds never touched, and more data sent out than in any earlier window.

  Collection then exfiltration, whatever the source log (an agent reading a new path and
  posting to a new host, a role scanning other teams' tables and exporting them). Either half
  alone is routine: new kinds are a new feature's first day, more writes a busier day.
  """
  if history is None or not history.windows:
    return None
  agg = window.agg
  families = history.unseen_families(agg.resources)
  if len(families) < COLLECT_MIN_FAMILIES:
    return None
  sent = sum(agg.categories.get(c, 0) for c in SEND_CATEGORIES)
  most = max((history.category_max.get(c, 0) for c in SEND_CATEGORIES), default=0)
  if sent < SEND_MIN_EVENTS or sent <= most:
    return None
  shown = sorted(families, key=lambda f: (-families[f], f))[:4]
  actions = _actions_in(agg, SEND_CATEGORIES)
  return {'rule': 'collect_and_send', 'severity': 'medium', 'actions': actions[:20],
          'detail': f'{sum(families.values())} resources in {len(families)} kinds never touched before '
                    f'({", ".join(shown)}) and {sent} calls sending data out ({agg.listing(actions)}); '
                    f'at most {most} of one kind in any earlier window'}


def _nhi_category_rule(name: str, category: str, what: str):
  def rule(window, context: Dict, history, config: RuleConfig, peers=None) -> Optional[Dict]:
    if context.get('identity_type', '') in HUMAN_TYPES:
      return None
    agg = window.agg
    n = agg.categories.get(category, 0)
    if not n:
      return None
    actions = _actions_in(agg, (category,))
    before = history.category_max.get(category, 0) if history is not None else 0
    first = before == 0
    absence = ''
    if first and peers is not None:
      note = peer_note(actions[0], peers)
      absence = f'; {actions[0]}: {note}' if note else ''
    return {'rule': name, 'severity': 'high' if first else 'low', 'actions': actions[:20],
            'detail': f'non-human identity {what}: {agg.listing(actions)}'
                      + ('; never before' + absence if first else f'; routine (up to {before} per window before)')}
  rule.__name__ = name
  rule.__doc__ = f'A non-human identity {what}.'
  return rule


credential_created_by_nhi = _nhi_category_rule(
    'credential_created_by_nhi', 'credential_create', 'created credentials (keys, tokens, passwords)')
privilege_change_by_nhi = _nhi_category_rule(
    'privilege_change_by_nhi', 'privilege_change', 'changed privileges (policies, role bindings)')

RULES: Dict[str, Callable] = {
    'agent_identity_claimed_by_other_service': agent_identity_claimed_by_other_service,
    'out_of_scope': out_of_scope,
    'disabled_identity_active': disabled_identity_active,
    'dormant_identity_revived': dormant_identity_revived,
    'credential_created_by_nhi': credential_created_by_nhi,
    'privilege_change_by_nhi': privilege_change_by_nhi,
    'new_network_beside_usual': new_network_beside_usual,
    'access_denied_sweep': access_denied_sweep,
    'new_network_and_client': new_network_and_client,
    'collect_and_send': collect_and_send,
    **AGENT_RULES,
}
# Raised by the history step, not per window: see transforms/history.py.
UNREGISTERED = 'unregistered_identity'
# Raised across identities, once per fleet change: see transforms/fleet_notice.py.
FLEET_CHANGE = 'fleet_change'
ALL_RULE_NAMES = tuple(RULES) + (UNREGISTERED, FLEET_CHANGE)


def evaluate(window, context: Dict, history, config: RuleConfig, peers=None) -> List[Dict]:
  """Every enabled rule that fires on this window, as reasons (``peers``: the fleet's use of actions)."""
  fired = []
  for rule in _enabled_rules(tuple(config.disabled)):
    reason = rule(window, context, history, config, peers)
    if reason is not None:
      fired.append(reason)
  return fired


@functools.lru_cache(maxsize=64)  # a cache, not state: a job has one configuration
def _enabled_rules(disabled: Tuple[str, ...]) -> Tuple[Callable, ...]:
  """The rules ``RuleConfig(disabled=...).enabled`` keeps, in ``RULES``' order."""
  return tuple(rule for name, rule in RULES.items() if RuleConfig(disabled=disabled).enabled(name))
