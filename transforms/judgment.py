"""What pages: evidence that no rollout explains, set apart from change a fleet makes every day.

The model ranks windows well, but on a fleet it has not seen a rollout, a redeploy or a
backfill is as rare as an attack: every adopter of a new call scores high. Whether a
window may page is therefore decided from *what kind* of unusual it is, not only how
unusual:

- **evidence** (pages at once): a high-impact action the identity never made (audit
  logging off, sharing outside the account, keys for others, privilege changes), calls
  from a network outside the fleet's address space, a failure sweep, many never-seen
  actions at once, bulk reads of resource kinds never touched or reads reaching several
  such kinds at once, data leaving to new
  destinations, volume far beyond anything the identity ever did, and the rules that say
  the same (disabled or dormant identity active, access-denied sweep, collect and send, an
  agent's spans emitted by a service the inventory does not let speak for it);
- **shareable novelty** (pages unless peers share it): a never-seen sensitive action
  (config changes, secrets, notifications) that the fleet does not routinely make, while the
  window reaches a scope (namespace, bucket, project, naming prefix) the identity never worked
  in; peers adopting it the same day make it a fleet change (transforms/corroborate.py);
- **change** (never pages alone): never-seen harmless calls (reads, listings, writes,
  queries), never-seen sensitive calls within the identity's own scopes, new private networks inside the fleet's address space, new regions or
  clients, bursts of routine work.

The same function judges windows in training (page-budget calibration) and scoring, so a
model is calibrated on what the job pages for. Invariant: a window with evidence is at
medium or above whatever the model says; a window with neither evidence nor shareable
novelty is low whatever the model says; the model's score orders them.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence

from postauth.domain import high_impact
from postauth.domain.origin import PUBLIC, RESERVED, address_scope
from postauth.domain.taxonomy import HIGH_IMPACT_CATEGORIES, SENSITIVE_CATEGORIES
from postauth.transforms.versions import RANK, higher

HUMAN_TYPES = ('human', 'user')

# Rules whose firing is evidence on its own (at the rule's severity).
# (A foreign network beside the usual one is judged by ``network_evidence``, which knows
# identities that rotate egress addresses; its rule stays a reason.)
EVIDENCE_RULES = ('disabled_identity_active', 'dormant_identity_revived', 'access_denied_sweep',
                  'collect_and_send', 'new_network_and_client', 'agent_identity_claimed_by_other_service',
                  'agent_credential_used_outside_agent', 'agent_tool_without_cloud_call')
# Evidence only at medium or above (at low: a tool's new harmless read, a context note).
GRADED_EVIDENCE_RULES = ('agent_tool_caused_unusual_call',)

BULK_NEW_RESOURCES = 10  # resources of kinds never touched, in one window: collection, not a new feature
NEW_KINDS = 3  # resource kinds never touched, in one window (even a few resources of each)
ROTATING_NETWORKS = 4  # internet networks in the identity's own history: it rotates egress addresses
NOVEL_BREADTH = 6  # never-seen actions in one window: a rollout adds a call or two
SWEEP_ERRORS = 10  # failed calls in one window ...
SWEEP_ERROR_SHARE = 0.25  # ... this share above the identity's usual failure ratio ...
SWEEP_NOVEL = 3  # ... among never-seen actions: probing what a credential can do
VOLUME_FACTOR = 4.0  # a category this many times the most the identity ever did in a window
VOLUME_FLOOR = 20  # ... and at least this many calls
SEND_CATEGORIES = ('notify', 'message_publish', 'resource_sharing')
SEND_MIN = 10  # sends in one window, beyond the identity's most, while resource kinds are new


class Judgment(NamedTuple):
  """One window's paging basis. ``severity`` is what it pages at before peers are asked."""
  severity: str
  evidence: List[Dict]  # {'kind', 'severity', 'detail', 'actions'}: what no rollout explains
  shareable: List[str]  # 'action:<name>' items peers may share; a page may rest on them alone
  change: List[str]  # what is unusual but routine change, for the reader

  def pages(self) -> bool:
    return RANK[self.severity] >= RANK['medium']

  def model_may_page(self) -> bool:
    """Whether a model flag can make this window page (it cannot on change alone)."""
    return bool(self.evidence or self.shareable)

  def to_dict(self) -> Dict:
    return {'evidence': [e['kind'] for e in self.evidence], 'shareable': list(self.shareable),
            'change': list(self.change)}


def high_impact_evidence(agg, identity: str, identity_type: str, history) -> List[Dict]:
  """High-impact actions this non-human identity's history never shows: the data-listed ones
  (domain/taxonomy/high_impact.csv, with their conditions) and every action of a high-impact
  category."""
  if identity_type in HUMAN_TYPES:
    return []
  known = (lambda a: False) if history is None else (lambda a: history.knows('actions', a))
  out = []
  listed = set()
  for use in high_impact.first_uses(agg, identity, known):
    listed.add(use['action'])
    out.append({'kind': 'high_impact', 'severity': 'high', 'actions': [use['action']],
                'detail': f'{use["action"]} x{use["calls"]}: {use["what"]}, never made by this identity before'})
  # a listed action pages when its condition holds (first_uses); the others by category
  for action, category in sorted((a, c) for a, c in agg.action_category.items() if c in HIGH_IMPACT_CATEGORIES):
    if action in listed or known(action) or high_impact.what_of(action) is not None:
      continue
    out.append({'kind': 'high_impact', 'severity': 'high', 'actions': [action],
                'detail': f'{action} x{agg.actions.get(action, 0)} ({category}), never made by this identity before'})
  return out


def rotates_egress(history) -> bool:
  """Whether the identity's own calls already came from several internet networks: serverless
  functions and managed services rotate through their provider's egress addresses, so one
  more is routine for them (a new client with it is not)."""
  public = sum(1 for n in history.seen['networks'] if address_scope(n) in (PUBLIC, RESERVED))
  return public >= ROTATING_NETWORKS


def network_evidence(agg, history, peers) -> List[Dict]:
  """New networks outside the fleet's address space (an internet network no identity used),
  unless the identity rotates through internet egress addresses and keeps its client."""
  if history is None or not history.windows or peers is None or not peers.fleet.identities:
    return []
  foreign = []
  for net in sorted(agg.networks):
    if not net or history.knows('networks', net):
      continue
    standing, why = peers.network_standing(net)
    if standing == 'foreign':
      foreign.append((net, why))
  if not foreign:
    return []
  new_clients = sorted(a for a in agg.agents if a and not history.knows('agents', a))
  if not new_clients and rotates_egress(history):
    return []
  calls = sum(agg.networks[n] for n, _ in foreign)
  detail = f'{calls} calls from {", ".join(n for n, _ in foreign)}: {foreign[0][1]}'
  if new_clients:
    detail += f'; with a client this identity never used ({", ".join(new_clients[:2])})'
  return [{'kind': 'foreign_network', 'severity': 'high' if new_clients else 'medium',
           'actions': sorted(agg.actions, key=lambda a: (-agg.actions[a], a))[:10], 'detail': detail}]


def activity_evidence(agg, history, novel: List[str]) -> List[Dict]:
  """Breadth, failures, collection, sending and volume beyond what any rollout or backfill does
  (``novel``: the window's actions the identity never made)."""
  if history is None or not history.windows:
    return []
  out = []
  if len(novel) >= NOVEL_BREADTH:
    services = sorted({a.partition(':')[0] for a in novel})
    out.append({'kind': 'novel_breadth', 'severity': 'medium', 'actions': sorted(novel)[:20],
                'detail': f'{len(novel)} never-seen actions in one window over {len(services)} services '
                          f'({", ".join(services[:6])})'})
  usual_errors = history.error_ratio()
  if (agg.errors >= SWEEP_ERRORS and agg.errors / max(agg.count, 1) - usual_errors >= SWEEP_ERROR_SHARE
      and len(novel) >= SWEEP_NOVEL):
    out.append({'kind': 'failure_sweep', 'severity': 'medium', 'actions': sorted(novel)[:20],
                'detail': f'{agg.errors} of {agg.count} calls failed (usually {usual_errors:.1%}) '
                          f'with {len(novel)} never-seen actions'})
  families = history.unseen_families(agg.resources)
  new_kind_resources = sum(families.values())
  if new_kind_resources >= BULK_NEW_RESOURCES and len(agg.resources) > history.max_distinct_resources:
    shown = sorted(families, key=lambda f: (-families[f], f))[:4]
    out.append({'kind': 'bulk_new_resources', 'severity': 'medium', 'actions': [],
                'detail': f'{new_kind_resources} resources in {len(families)} kinds never touched before '
                          f'({", ".join(shown)}); at most {history.max_distinct_resources} distinct '
                          f'resources in any earlier window'})
  elif len(families) >= NEW_KINDS:
    shown = sorted(families)[:4]
    out.append({'kind': 'new_kinds_breadth', 'severity': 'medium', 'actions': [],
                'detail': f'resources of {len(families)} kinds never touched before in one window '
                          f'({", ".join(shown)}): a rollout adds one new kind, collection reaches several'})
  sent = sum(agg.categories.get(c, 0) for c in SEND_CATEGORIES) if families else 0  # SEND_MIN > 0
  most_sent = max(history.category_max.get(c, 0) for c in SEND_CATEGORIES) if sent >= SEND_MIN else 0
  if sent >= SEND_MIN and sent > 2 * most_sent:
    actions = sorted((a for a, c in agg.action_category.items() if c in SEND_CATEGORIES),
                     key=lambda a: (-agg.actions[a], a))
    out.append({'kind': 'data_leaving', 'severity': 'medium', 'actions': actions[:10],
                'detail': f'{sent} calls sending data out ({", ".join(actions[:4])}) while touching '
                          f'resource kinds never touched before; at most {most_sent} of one kind in any '
                          f'earlier window'})
  for cat, n in sorted(agg.categories.items()):
    most = history.category_max.get(cat, 0)
    if most and n >= VOLUME_FLOOR and n >= VOLUME_FACTOR * most:
      out.append({'kind': 'volume_extreme', 'severity': 'medium',
                  'actions': sorted(a for a, c in agg.action_category.items() if c == cat)[:10],
                  'detail': f'{n} {cat} calls in one window, {n / most:.1f}x the most this identity '
                            f'ever made ({most})'})
  return out


def first_time_sensitive(agg, history, novel: Optional[List[str]] = None) -> List[str]:
  """The window's sensitive (not high-impact) actions its identity never made: what it may
  share with peers adopting the same change (``novel``: its never-made actions, if known)."""
  if history is None or not history.windows:
    return []
  if novel is None:
    novel = history.unseen('actions', agg.actions)
  return sorted(a for a in novel if agg.action_category.get(a, '') in SENSITIVE_CATEGORIES
                and agg.action_category.get(a, '') not in HIGH_IMPACT_CATEGORIES)


def shareable_novelty(agg, history, peers, novel: List[str]) -> List[str]:
  """Never-seen sensitive actions the fleet does not routinely make, while the window reaches
  a scope (namespace, bucket, project, naming prefix) the identity never worked in: a page
  could rest on them, unless peers adopt them too (then they are a fleet change). The same
  calls within its own scopes (a deployer starting to patch its namespace's autoscalers) are
  its own change, not a page."""
  if history is None or not history.windows or not history.unseen_scopes(agg.resources):
    return []
  return [f'action:{a}' for a in first_time_sensitive(agg, history, novel)
          if peers is None or not peers.common(a)]


def change_notes(agg, history, peers, novel: List[str]) -> List[str]:
  """What is new but routine change: harmless never-seen calls, networks inside the fleet's
  address space, new regions and clients (for the reader of a low finding)."""
  if history is None or not history.windows:
    return []
  notes = []
  harmless = [a for a in novel if agg.action_category.get(a, '') not in SENSITIVE_CATEGORIES]
  if harmless:
    notes.append('new harmless calls: ' + ', '.join(sorted(harmless)[:4]))
  sensitive = [a for a in novel if a not in harmless]
  if sensitive and not history.unseen_scopes(agg.resources):
    notes.append('new sensitive calls within the scopes it already works in: ' + ', '.join(sorted(sensitive)[:4]))
  if peers is not None and peers.fleet.identities:
    new = [n for n in sorted(agg.networks) if n and not history.knows('networks', n)]
    inside = [n for n in new if peers.network_standing(n)[0] != 'foreign']
    if inside:
      notes.append('new network inside the fleet\'s address space: ' + ', '.join(inside[:3]))
    if len(inside) < len(new) and rotates_egress(history):
      notes.append('new egress address of an identity that rotates through internet networks: '
                   + ', '.join(n for n in new if n not in inside)[:120])
  for field, what in (('regions', 'region'), ('agents', 'client')):
    new = [k for k in sorted(getattr(agg, field)) if k and not history.knows(field, k)]
    if new:
      notes.append(f'new {what}: ' + ', '.join(new[:2]))
  return notes


def judge(window, context: Dict, history, peers, model_severity: Optional[str],
          rules_fired: Sequence[Dict] = (), bare_if_quiet: bool = False) -> Judgment:
  """The window's paging basis; ``model_severity`` is the model's level when it flagged the
  window (None when it did not score or flag it), ``rules_fired`` the rules' reasons.
  ``bare_if_quiet``: a window with no evidence, no rule fired and no model flag gets 'low' with
  no notes, for a caller that drops such windows (the notes are most of the cost)."""
  agg = window.agg
  identity_type = context.get('identity_type', '') or agg.identity_type
  novel = history.unseen('actions', agg.actions) if history is not None and history.windows else []
  evidence = (high_impact_evidence(agg, window.identity, identity_type, history)
              + network_evidence(agg, history, peers) + activity_evidence(agg, history, novel))
  for r in rules_fired:
    rank = RANK.get(r['severity'], 0)
    graded = r['rule'] in GRADED_EVIDENCE_RULES and rank >= RANK['medium']
    on_high_impact = (r['rule'] in ('credential_created_by_nhi', 'privilege_change_by_nhi', 'out_of_scope')
                      and rank >= RANK['high'] and _rule_on_high_impact(r, agg))
    if r['rule'] in EVIDENCE_RULES or graded or on_high_impact:
      evidence.append({'kind': r['rule'], 'severity': r['severity'], 'actions': r.get('actions', []),
                       'detail': r['detail']})
  if bare_if_quiet and not evidence and not rules_fired and not model_severity:
    return Judgment('low', [], [], [])
  shareable = shareable_novelty(agg, history, peers, novel)
  change = change_notes(agg, history, peers, novel)
  if evidence:
    severity = 'medium'
    for e in evidence:
      severity = higher(severity, e['severity'])
    if model_severity:
      severity = higher(severity, model_severity)
  elif shareable and (model_severity or any(r['rule'] == 'out_of_scope' for r in rules_fired)):
    severity = higher('medium', model_severity or 'medium')
  else:
    severity = 'low'
  return Judgment(severity, evidence, shareable, change)


def _rule_on_high_impact(reason: Dict, agg) -> bool:
  return any(agg.action_category.get(a, '') in HIGH_IMPACT_CATEGORIES for a in reason.get('actions', ()))
