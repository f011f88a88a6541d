"""Where a call came from, summarised: the network of its address, the family of its client.

A window counts networks and client families rather than raw addresses and user
agents, so an identity's usual /24 and a minor client upgrade stay familiar.
"""
from __future__ import annotations

import functools
import ipaddress


# Pure functions of a value that repeats across events (an identity calls from a few
# addresses with one client): memoised, bounded, per process. A cache, not state:
# any worker computes the same answer.
@functools.lru_cache(maxsize=1 << 16)
def network_of(ip: str) -> str:
  """The /24 (IPv4) or /48 (IPv6) a source address belongs to; hostnames as-is."""
  if not ip:
    return ''
  try:
    addr = ipaddress.ip_address(ip)
  except ValueError:
    return ip.lower()[:128]  # e.g. "ec2.amazonaws.com" for AWS-internal calls
  prefix = 24 if addr.version == 4 else 48
  return str(ipaddress.ip_network(f'{ip}/{prefix}', strict=False))


@functools.lru_cache(maxsize=1 << 16)
def agent_family(user_agent: str) -> str:
  """Product, major version and OS of a user agent: upgrades stay in their family."""
  if not user_agent:
    return ''
  first = user_agent.split(' ', 1)[0]
  product, _, version = first.partition('/')
  major = version.split('.', 1)[0] if version else ''
  lowered = user_agent.lower()
  os_name = next((o for o in ('macos', 'darwin', 'windows', 'linux') if o in lowered), '')
  return f'{product}/{major} {os_name}'.strip()[:128]
