"""Who wrote a record that names its own identity: the service behind an OpenTelemetry span.

A cloud audit log is written by the provider after it authenticated the caller: the identity
in it is a fact. A span is written by whatever process sent it and *claims* the agent it acts
for (``gen_ai.agent.id``): anything that reaches the collector can claim any agent. What the
span also says is the service that sent it (its resource's ``service.name``), which the
inventory can check (``emitted_by``, transforms/rules.py).

The parser keeps that service as the product of the event's user agent
(``<service>/<version>``, transforms/formats/otel.py), with '%', '/' and whitespace
percent-encoded: the name reads back exactly, and the client family
(``domain.origin.agent_family``) stays ``<service>/<major>``. Pure functions, no Beam.
"""
from __future__ import annotations

import re
from typing import Optional
from urllib.parse import unquote

# Providers whose records name their own identity (transforms/formats/otel.py: PROVIDER).
SELF_NAMED_PROVIDERS = frozenset({'otel'})
_ESCAPED = re.compile(r'[%/\s]')


def _escape(match: 're.Match[str]') -> str:
  return ''.join(f'%{b:02X}' for b in match.group().encode('utf-8'))


def service_user_agent(service: str, version: str) -> str:
  """A span's user agent: its service (escaped so it reads back exactly) and version."""
  product = _ESCAPED.sub(_escape, service)
  return f'{product}/{version}' if version else product


def emitter_of(provider: str, user_agent: str) -> Optional[str]:
  """The service that emitted a self-named record ('' when it named none); None for records
  whose identity the provider itself vouches for (every other format)."""
  if provider not in SELF_NAMED_PROVIDERS:
    return None
  return unquote(user_agent.split(' ', 1)[0].partition('/')[0])
