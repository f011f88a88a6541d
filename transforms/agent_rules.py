"""Rules on what the agent join (transforms/agent_join.py) makes visible in an agent's window.

The join derives events on the agent's identity: the cloud records each tool call made
(``s3:GetObject@export_table``), those its credential made while no tool call was in flight
(``...@no_tool_call``), and once per tool call with records behind it
(``genai:execute_tool:T@cloud_call``). The agent's history learns them like any action, so
what is routine for this agent (a role also used by a nightly job, a tool that never touches
the cloud) stays silent, and these rules speak only of what the history has not seen.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from postauth.domain.origin import agent_family, network_of
from postauth.domain.taxonomy import HIGH_IMPACT_CATEGORIES, SENSITIVE_CATEGORIES
from postauth.domain.tool_calls import CLOUD_CALL, NO_TOOL_CALL, SEPARATOR, caused_action, split_caused, tools_of
from postauth.domain.resource_kind import resource_scope

# A tool "normally makes a cloud call" when the history saw it this often, and saw it end with
# no record behind it at most this share of the time.
TOOL_CALLS_SEEN = 20
NO_CLOUD_CALL_SHARE = 0.05
WRITE_CATEGORIES = ('data_write', 'message_publish', 'notify', 'resource_sharing')


def _caused(agg) -> Dict[str, List[Tuple[str, str]]]:
  """by (tool or marker) -> [(derived action key, the record's action key)] in this window."""
  out: Dict[str, List[Tuple[str, str]]] = {}
  for key in agg.actions:
    if SEPARATOR not in key:  # most keys; the test split_caused makes first, without the call
      continue
    parts = split_caused(key)
    if parts is not None:
      out.setdefault(parts[1], []).append((key, parts[0]))
  return out


def _known(history, key: str) -> bool:
  return history is not None and history.knows('actions', key)


def _seen_count(history, key: str) -> int:
  return history.seen_count('actions', key) if history is not None else 0


def agent_credential_used_outside_agent(window, context: Dict, history, config, peers=None) -> Optional[Dict]:
  """The agent's principal made calls while no tool call of the agent was in flight, of a kind
  its history never shows outside a tool call: the credential used by someone else (stolen, or
  a person reusing it).

  Where the calls came from decides: from a network or with a client the agent's calls never
  used, high; from its own known places, a new secret, credential or privilege call is medium
  and anything else is left alone (a job sharing the role that rolled out a new call)."""
  if history is None or not history.windows:
    return None
  agg = window.agg
  new = sorted((k for k, _ in _caused(agg).get(NO_TOOL_CALL, []) if not _known(history, k)),
               key=lambda k: (-agg.actions[k], k))
  if not new:
    return None
  samples = [smp for k in new for smp in agg.evidence.get('a' + k, ())]
  nets = sorted({network_of(smp[6]) for smp in samples} - {''})
  clients = sorted({agent_family(smp[7]) for smp in samples} - {''})
  new_nets = [n for n in nets if not history.knows('networks', n)]
  new_clients = [c for c in clients if not history.knows('agents', c)]
  cats = {agg.action_category.get(k, '') for k in new}
  if new_nets or new_clients:
    severity = 'high'
  elif cats & set(SENSITIVE_CATEGORIES):
    severity = 'medium'
  else:
    return None
  where = []
  if new_nets:
    where.append(f'from {", ".join(new_nets[:3])}, where its calls never came from')
  if new_clients:
    where.append(f'with {", ".join(new_clients[:2])}, a client it never used')
  return {'rule': 'agent_credential_used_outside_agent', 'severity': severity, 'actions': new[:20],
          'detail': f'{agg.listing(new)} made with its credential while none of its tool calls was '
                    f'in flight, never seen before outside a tool call'
                    + ('; ' + '; '.join(where) if where else '')}


def agent_tool_caused_unusual_call(window, context: Dict, history, config, peers=None) -> Optional[Dict]:
  """A tool the agent has used before made a cloud call that tool never made: an agent steered
  (an injected instruction) into misusing a harmless tool. High for secrets, credentials,
  privileges and sends or writes. Its usual calls on resources in scopes (bucket, dataset,
  namespace) the agent never worked in: another team's data read, or written out. A tool new
  to the agent is left to the history's novelty (a new tool's calls are all new)."""
  if history is None or not history.windows:
    return None
  agg = window.agg
  unusual: List[str] = []
  elsewhere: List[Tuple[str, List[str]]] = []
  for by, keys in _caused(agg).items():
    if by in (NO_TOOL_CALL, CLOUD_CALL):
      continue
    tools = tools_of(by)  # several when calls of several tools were in flight
    if not any(_known(history, f'{service}:execute_tool:{t}') for t in tools for service in ('genai', 'mcp')):
      continue
    for key, base in keys:
      if not _known(history, key) and not any(_known(history, caused_action(base, t)) for t in tools):
        unusual.append(key)
      elif agg.action_category.get(key, '') in WRITE_CATEGORIES + ('data_read',):
        resources = sorted({smp[5] for smp in agg.evidence.get('a' + key, ()) if smp[5]})
        scopes = set(history.unseen_scopes(resources))
        if scopes:
          elsewhere.append((key, [r for r in resources if resource_scope(r) in scopes]))
  if not unusual and not elsewhere:
    return None
  unusual.sort(key=lambda k: (-agg.actions[k], k))
  cats = {agg.action_category.get(k, '') for k in unusual}
  writes_elsewhere = any(agg.action_category.get(k, '') in WRITE_CATEGORIES for k, _ in elsewhere)
  if cats & set(HIGH_IMPACT_CATEGORIES + ('secret_access',)) or writes_elsewhere:
    severity = 'high'
  elif cats & set(SENSITIVE_CATEGORIES + WRITE_CATEGORIES) or elsewhere:
    severity = 'medium'
  else:
    severity = 'low'
  parts = []
  if unusual:
    parts.append(f'{agg.listing(unusual)}: cloud calls these tools never made before')
  if elsewhere:
    parts.append('; '.join(f'{k} x{agg.actions[k]} in {", ".join(sc[:3])}' for k, sc in elsewhere[:4])
                 + ': usual calls of these tools, on resources where this agent never worked')
  return {'rule': 'agent_tool_caused_unusual_call', 'severity': severity,
          'actions': (unusual + [k for k, _ in elsewhere])[:20],
          'detail': '; '.join(parts) + ' (the events cite each tool call)'}


def agent_tool_without_cloud_call(window, context: Dict, history, config, peers=None) -> Optional[Dict]:
  """Tool calls with no cloud record behind them, from a tool that nearly always makes one: the
  result did not come from the cloud the tool acts on (a tool answering from elsewhere)."""
  if history is None or not history.windows:
    return None
  agg = window.agg
  odd = []
  for base, n in agg.actions.items():
    if ':execute_tool:' not in base or split_caused(base) is not None:
      continue
    unbacked = n - agg.actions.get(caused_action(base, CLOUD_CALL), 0)
    calls = _seen_count(history, base)
    backed_before = _seen_count(history, caused_action(base, CLOUD_CALL))
    if unbacked > 0 and calls >= TOOL_CALLS_SEEN and calls - backed_before <= NO_CLOUD_CALL_SHARE * calls:
      odd.append((base, unbacked))
  if not odd:
    return None
  odd.sort(key=lambda kv: (-kv[1], kv[0]))
  return {'rule': 'agent_tool_without_cloud_call', 'severity': 'medium', 'actions': [k for k, _ in odd][:20],
          'detail': '; '.join(f'{k}: {n} of {agg.actions[k]} calls with no cloud record behind them'
                              for k, n in odd[:5])
                    + ', from tools that made one nearly every time before'}


AGENT_RULES = {
    'agent_credential_used_outside_agent': agent_credential_used_outside_agent,
    'agent_tool_caused_unusual_call': agent_tool_caused_unusual_call,
    'agent_tool_without_cloud_call': agent_tool_without_cloud_call,
}
