"""How the agent join (transforms/agent_join.py) names what it derives, and how to read it back.

A derived event's action is ``<action>@<by>``: the audit record's own action and the tool whose
call made it, or ``no_tool_call`` (made while no tool call was in flight); a tool call with a
record behind it is marked once as ``execute_tool:<tool>@cloud_call``. Window aggregates key actions as
``service:action``, so the keys read ``s3:GetObject@export_table``. Neither an AWS, GCP nor
Kubernetes action name nor a tool name holds ``@``.
"""
from __future__ import annotations

from typing import Optional, Tuple

SEPARATOR = '@'
NO_TOOL_CALL = 'no_tool_call'
CLOUD_CALL = 'cloud_call'
TOOLS_JOINED = '|'  # several tools' calls were in flight: ``s3:GetObject@read_file|run_sql``


def caused_action(action: str, by: str) -> str:
  return f'{action}{SEPARATOR}{by}'


def split_caused(action_key: str) -> Optional[Tuple[str, str]]:
  """(the record's action key, the tool or marker) of a derived action key; None for others."""
  if SEPARATOR not in action_key:  # most keys: no audit action or tool name holds the separator
    return None
  base, sep, by = action_key.rpartition(SEPARATOR)
  if not sep or not base or not by or '/' in by:
    return None
  return base, by


def tools_of(by: str) -> Tuple[str, ...]:
  return tuple(by.split(TOOLS_JOINED))


def is_derived(action_key: str) -> bool:
  return SEPARATOR in action_key and split_caused(action_key) is not None  # the test first: per event
