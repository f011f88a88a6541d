"""Where a call came from, summarised: the network of its address, the family of its client.

A window counts networks and client families rather than raw addresses and user
agents, so an identity's usual /24 and a minor client upgrade stay familiar.
"""
from __future__ import annotations

import functools
import ipaddress
import re
from typing import Tuple


# Pure functions of a value that repeats across events (an identity calls from a few
# addresses with one client): memoised, bounded, per process. A cache, not state:
# any worker computes the same answer.
@functools.lru_cache(maxsize=1 << 16)
def network_of(ip: str) -> str:
  """The /24 (IPv4) or /48 (IPv6) a source address belongs to; hostnames as-is."""
  if not ip:
    return ''
  quad = _DOTTED_QUAD.fullmatch(ip)
  if quad is not None:  # the common case, without ipaddress
    return f'{quad[1]}.{quad[2]}.{quad[3]}.0/24'
  try:
    addr = ipaddress.ip_address(ip)
  except ValueError:
    return ip.lower()[:128]  # e.g. "ec2.amazonaws.com" for AWS-internal calls
  prefix = 24 if addr.version == 4 else 48
  return str(ipaddress.ip_network(f'{ip}/{prefix}', strict=False))


# A dotted-quad part as ``ipaddress`` reads it: 1-3 ASCII digits, <= 255, no leading zero.
_OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])'
_DOTTED_QUAD = re.compile(r'\.'.join([_OCTET] * 4))


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


# The IANA special-purpose blocks (RFC 6890 and the RFCs each names), as data: which
# networks are private (reachable only inside an organisation's own network), and which
# are not real internet networks at all (documentation, benchmarking, loopback, ...:
# ``reserved``, standing as public would but named). Order matters only where a /48
# overlaps several small v6 blocks: '::/48' (where ``network_of`` puts IPv4-mapped
# addresses) is named IPv4-mapped.
PRIVATE = 'private'
INTERNAL = 'internal'
RESERVED = 'reserved'
PUBLIC = 'public'
SPECIAL_BLOCKS = tuple((ipaddress.ip_network(block), scope, name) for block, scope, name in (
    ('10.0.0.0/8', PRIVATE, 'RFC 1918 private'),
    ('172.16.0.0/12', PRIVATE, 'RFC 1918 private'),
    ('192.168.0.0/16', PRIVATE, 'RFC 1918 private'),
    ('100.64.0.0/10', PRIVATE, 'RFC 6598 shared address space (carrier-grade NAT)'),
    ('169.254.0.0/16', PRIVATE, 'RFC 3927 link-local'),
    ('fc00::/7', PRIVATE, 'RFC 4193 unique local'),
    ('fe80::/10', PRIVATE, 'RFC 4291 link-local'),
    ('0.0.0.0/8', RESERVED, 'RFC 791 "this network"'),
    ('127.0.0.0/8', RESERVED, 'RFC 1122 loopback'),
    ('192.0.0.0/24', RESERVED, 'RFC 6890 IETF protocol assignments'),
    ('192.0.2.0/24', RESERVED, 'RFC 5737 documentation (TEST-NET-1)'),
    ('198.51.100.0/24', RESERVED, 'RFC 5737 documentation (TEST-NET-2)'),
    ('203.0.113.0/24', RESERVED, 'RFC 5737 documentation (TEST-NET-3)'),
    ('198.18.0.0/15', RESERVED, 'RFC 2544 benchmarking'),
    ('192.88.99.0/24', RESERVED, 'RFC 7526 deprecated 6to4 relay anycast'),
    ('224.0.0.0/4', RESERVED, 'RFC 5771 multicast'),
    ('240.0.0.0/4', RESERVED, 'RFC 1112 reserved'),
    ('::ffff:0:0/96', RESERVED, 'RFC 4291 IPv4-mapped'),
    ('::/128', RESERVED, 'RFC 4291 unspecified address'),
    ('::1/128', RESERVED, 'RFC 4291 loopback'),
    ('64:ff9b::/96', RESERVED, 'RFC 6052 NAT64 well-known prefix'),
    ('100::/64', RESERVED, 'RFC 6666 discard-only'),
    ('2001:2::/48', RESERVED, 'RFC 5180 benchmarking'),
    ('2001:db8::/32', RESERVED, 'RFC 3849 documentation'),
    ('3fff::/20', RESERVED, 'RFC 9637 documentation'),
    ('ff00::/8', RESERVED, 'RFC 4291 multicast'),
))
# The coarser prefix a public network's neighbours share: a provider's egress range
# (serverless calls and NAT gateways rotate through many /24s of one provider /16;
# an IPv6 /32 is typically one provider allocation, a /48 one site).
PUBLIC_RANGE = {4: 16, 6: 32}
PRIVATE_SUBNET = 16  # IPv4 private /16: one VPC or cluster network, inside its block
_NAME = re.compile(r'(?=.*[a-z])[a-z0-9._ -]+', re.IGNORECASE)  # a caller's name, not an address


def _parse(network: str):
  """The ``ipaddress`` network of a network string (or of a bare address's ``network_of``); None for names."""
  if not network:
    return None
  try:
    net = ipaddress.ip_network(network, strict=False)
  except ValueError:
    return None
  if '/' not in network:  # a bare address: the network a window would count it under
    net = ipaddress.ip_network(network_of(network), strict=False)
  return net


@functools.lru_cache(maxsize=1 << 16)
def special_block(network: str) -> Tuple[str, str, str]:
  """(block, scope, name) of the special-purpose block ``network`` lies in; ('', '', '') if none or a name."""
  net = _parse(network)
  if net is not None:
    for block, scope, name in SPECIAL_BLOCKS:
      if block.version == net.version and block.overlaps(net):
        return str(block), scope, name
  return '', '', ''


@functools.lru_cache(maxsize=1 << 16)
def address_scope(network: str) -> str:
  """Where a window's network string (``network_of``) lies: 'private', 'internal', 'reserved' or 'public'.

  - 'private': RFC 1918 (10/8, 172.16/12, 192.168/16), RFC 6598 carrier-grade NAT
    (100.64/10), link-local (169.254/16, fe80::/10), IPv6 unique local (fc00::/7): an
    organisation's own networks, seen when calls go through private endpoints (VPC
    endpoints, a cluster's pod network). Not proof of being inside: another
    organisation's private endpoint shows its own 10.x addresses the same way.
  - 'internal': a name, not an address: what providers log for their own callers
    ("ec2.amazonaws.com", "AWS Internal", GCP "private", "gce-internal-ip",
    "*.googleapis.com"; letters, digits, '.', '-', '_' and spaces), and an empty
    source. No source format logs a client's hostname there. A value that is neither
    an address nor a name ("1.2.3.4:443", "1.2.3.4, 5.6.7.8") is 'public': an
    unknown network, never a pass.
  - 'reserved': not a real internet network (documentation 192.0.2/24, 198.51.100/24,
    203.0.113/24, 2001:db8::/32; RFC 2544 benchmarking 198.18/15; loopback, multicast,
    ...; ``SPECIAL_BLOCKS``): stands as a public network would, named so a reader knows.
  - 'public': every other address.
  """
  net = _parse(network)
  if net is None:
    return INTERNAL if not network or _NAME.fullmatch(network) else PUBLIC
  return special_block(network)[1] or PUBLIC


@functools.lru_cache(maxsize=1 << 16)
def enclosing(network: str) -> Tuple[str, ...]:
  """The coarser prefixes ``network`` lies in, finest first, whose other networks make it familiar.

  - IPv4 private: its /16 and its private block ('10.53.176.0/24' -> ('10.53.0.0/16',
    '10.0.0.0/8'); '192.168.7.0/24' -> ('192.168.0.0/16',), the /16 being the block).
  - IPv6 private: its block (a unique-local /48 is one site with a random global id:
    neighbouring /48s are unrelated sites; the block says the fleet calls from private v6).
  - public and reserved: the provider range, IPv4 /16 or IPv6 /32
    ('52.94.133.0/24' -> ('52.94.0.0/16',)).
  - names (cloud-internal callers) and empty: ().
  A tuple (memoised: shared, so immutable). A bare address is taken as its ``network_of``.
  """
  net = _parse(network)
  if net is None:
    return ()
  block, scope, _ = special_block(network)
  if scope == PRIVATE:
    cuts = [PRIVATE_SUBNET] if net.version == 4 else []
    cuts.append(ipaddress.ip_network(block).prefixlen)
  else:
    cuts = [PUBLIC_RANGE[net.version]]
  out = []
  for cut in cuts:
    if cut < net.prefixlen:
      prefix = str(net.supernet(new_prefix=cut))
      if prefix not in out:
        out.append(prefix)
  return tuple(out)
