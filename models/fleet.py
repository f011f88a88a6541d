"""What the fleet knows: how many identities of each type used an action in the training history.

An identity is not alone. A call that is new to it but routine for many of its peers
(an SQS publish for a service, a metrics write after a client upgrade) is weak evidence;
a call that almost no identity of the fleet ever made (disabling audit logs, sharing a
snapshot, creating keys for other principals) is suspicious from its first use.

Built once per model by the training job from every identity's actions in the
history (hashed as the profiles hash them) and stored with the model, so training
and scoring read the same table. An identity's own use is never counted as a
peer's: training asks with the actions it was counted with, scoring with its
trained profile's (``PeerView``).

The fleet's address space: beside each exact network (/24, /48 or a caller's name,
``network_key``), the table counts the coarser prefixes each identity's networks lie
in (``domain.origin.enclosing``: private /16 and private block, public /16 or IPv6
/32, ``range_key``), so a new /24 of a cluster's pod network or of a provider's egress
range is told from an internet network no identity used (``PeerView.network_standing``).
"""
from __future__ import annotations

import functools
from typing import Container, Dict, Iterable, Optional, Set, Tuple

from postauth.domain.origin import INTERNAL, PRIVATE, address_scope, enclosing, special_block
from postauth.models.profile import seen_key

ALL = '*'  # the whole fleet, beside each identity type
COMMON_SHARE = 0.10  # used by at least this share of peers (or of the fleet): routine somewhere


def network_key(network: str) -> str:
  """Networks share the table with actions, under their own prefix."""
  return 'net:' + network


def range_key(prefix: str) -> str:
  """A coarser prefix a network lies in ('10.0.0.0/8'), under a prefix of its own."""
  return 'netin:' + prefix


# Counted once for every identity whose networks were counted with their prefixes: a
# table built before prefixes were counted (an older model) lacks it, and says so.
RANGES_MARK = seen_key(range_key('*'))

# Standings of a network for one identity (``PeerView.network_standing``).
KNOWN = 'known'  # another identity of the fleet called from this very network
INTERNAL_CALLER = INTERNAL  # a cloud-internal caller ("ec2.amazonaws.com", "AWS Internal")
FLEET_PRIVATE = 'fleet_private'  # new, inside a private /16 or block the fleet calls from
FLEET_PUBLIC_RANGE = 'fleet_public_range'  # new, inside a public /16 several identities call from
FOREIGN = 'foreign'  # none of the above
STANDINGS = (KNOWN, INTERNAL_CALLER, FLEET_PRIVATE, FLEET_PUBLIC_RANGE, FOREIGN)
# Other identities that must have called from a private /16 or block for a new /24 in it
# to be routine. A private range is not routed from the internet: two other identities
# calling from it make it the fleet's own network (a cluster, a VPC), not one identity's
# oddity; one could be the same actor's second credential. A count, not a share: a big
# fleet's second cluster is as much its own network as a small fleet's only one.
PRIVATE_RANGE_PEERS = 2
# Other identities that must have called from a public /16 (IPv6 /32) for a new /24 in
# it to be the fleet's: serverless functions and NAT gateways rotate through many /24s
# of their provider's /16, so the identities running there see new /24s all the time.
# Three, not two: a public /16 is shared with every other tenant of that provider, so
# only a range that is part of the fleet's routine counts (still weaker than KNOWN).
PUBLIC_RANGE_PEERS = 3


@functools.lru_cache(maxsize=1 << 16)
def _network_hashes(network: str) -> Tuple[int, ...]:
  return (seen_key(network_key(network)),) + tuple(seen_key(range_key(p)) for p in enclosing(network))


def network_keys(networks: Iterable[str]) -> Set[int]:
  """The hashed keys the fleet table counts an identity's networks under.

  Each network (``network_key``), each coarser prefix it lies in (``range_key`` of
  ``enclosing``), and ``RANGES_MARK``. With the identity's hashed actions this is what
  ``FleetProfile.add`` takes for it, and what its ``PeerView`` leaves out.
  """
  keys = {RANGES_MARK}
  for n in networks:
    keys.update(_network_hashes(n))
  return keys


class _Keys:
  """Membership in either of two hashed key sets, without copying them (a view's ``own``)."""

  __slots__ = ('first', 'second')

  def __init__(self, first: Container[int], second: Container[int]):
    self.first = first
    self.second = second

  def __contains__(self, h) -> bool:
    return h in self.first or h in self.second


class FleetProfile:
  """Per identity type (and the whole fleet): identities, and identities using each action (hashed)."""

  def __init__(self):
    self.identities: Dict[str, int] = {}
    self.actions: Dict[str, Dict[int, int]] = {}

  def add(self, identity_type: str, actions: Iterable[int]) -> 'FleetProfile':
    """One identity of ``identity_type`` that used the actions (``seen_key`` hashes)."""
    actions = set(actions)
    for group in (identity_type or '', ALL):
      self.identities[group] = self.identities.get(group, 0) + 1
      counts = self.actions.setdefault(group, {})
      for h in actions:
        counts[h] = counts.get(h, 0) + 1
    return self

  def merge(self, other: 'FleetProfile') -> 'FleetProfile':
    for group, n in other.identities.items():
      self.identities[group] = self.identities.get(group, 0) + n
    for group, counts in other.actions.items():
      mine = self.actions.setdefault(group, {})
      for h, n in counts.items():
        mine[h] = mine.get(h, 0) + n
    return self

  def view(self, identity_type: str, own: Optional[Container[int]],
           networks: Optional[Iterable[str]] = None) -> 'PeerView':
    """``own``: the hashes this identity was counted with (None if it was not counted).

    ``networks``: the identity's networks, when ``own`` holds only its action hashes
    (a trained profile's ``seen['actions']``; its networks are ``seen['networks']``):
    their keys (``network_keys``) join ``own``, so its own networks and the ranges
    they lie in are not counted as its peers'.
    """
    if own is not None and networks is not None:
      own = _Keys(own, network_keys(networks))
    return PeerView(self, identity_type or '', own)

  def counts_ranges(self) -> bool:
    """Whether the table counts network prefixes (False for tables built before it did)."""
    return self.actions.get(ALL, {}).get(RANGES_MARK, 0) > 0

  def to_dict(self) -> dict:
    """Sorted by action hash, so the same history trains byte-identical files whatever order the
    training's combiners merged in."""
    return {'identities': self.identities,
            'actions': {g: [[h, n] for h, n in sorted(c.items())] for g, c in self.actions.items()}}

  @classmethod
  def from_dict(cls, d: Optional[dict]) -> 'FleetProfile':
    fleet = cls()
    if d:
      fleet.identities = dict(d['identities'])
      fleet.actions = {g: {int(h): int(n) for h, n in c} for g, c in d['actions'].items()}
    return fleet


class PeerView:
  """One identity's view of its peers: how many *other* identities use an action."""

  __slots__ = ('fleet', 'identity_type', 'own')

  def __init__(self, fleet: FleetProfile, identity_type: str, own: Optional[Container[int]]):
    self.fleet = fleet
    self.identity_type = identity_type
    self.own = own  # the action hashes the fleet table counted for this identity (None: not counted)

  def _others(self, group: str, action: str) -> Tuple[int, int]:
    h = seen_key(action)
    users = self.fleet.actions.get(group, {}).get(h, 0)
    total = self.fleet.identities.get(group, 0)
    if self.own is not None and group in self.fleet.identities:
      total -= 1
      if h in self.own:
        users -= 1
    return max(users, 0), max(total, 0)

  def peers(self, action: str) -> Tuple[int, int]:
    """(other identities of the same type that used ``action``, other identities of that type)."""
    return self._others(self.identity_type, action)

  def fleet_users(self, action: str) -> Tuple[int, int]:
    """(other identities of the whole fleet that used ``action``, other identities)."""
    return self._others(ALL, action)

  def commonness(self, action: str) -> float:
    """The larger of the shares of peers and of the fleet that used ``action`` (0 with no fleet)."""
    p, pn = self.peers(action)
    f, fn = self.fleet_users(action)
    return max(p / pn if pn else 0.0, f / fn if fn else 0.0)

  def network_users(self, network: str) -> Tuple[int, int]:
    """(other identities of the fleet that called from ``network``, other identities)."""
    return self._others(ALL, network_key(network))

  def range_users(self, prefix: str) -> Tuple[int, int]:
    """(other identities of the fleet that called from inside ``prefix``, other identities).

    ``prefix`` one of ``enclosing(network)``; (0, n) for any other, and for every
    prefix of a table built before prefixes were counted (``FleetProfile.counts_ranges``).
    """
    return self._others(ALL, range_key(prefix))

  def network_standing(self, network: str) -> Tuple[str, str]:
    """(standing, why) of a window's network for this identity, from the fleet's address space.

    Standing, first that holds:

    - 'known': another identity of the fleet called from this very network (/24, /48,
      or caller name);
    - 'internal': a cloud-internal caller (``address_scope``: a provider's name for
      its own callers, or no source);
    - 'fleet_private': a private network (RFC 1918, CGNAT, ULA, link-local) new to
      the fleet, inside a private /16, or else a private block (10/8, 172.16/12, ...),
      that at least ``PRIVATE_RANGE_PEERS`` other identities called from: a pod
      rescheduled onto a new node, a new subnet or node pool, a blue/green twin;
    - 'fleet_public_range': a public (or reserved) network new to the fleet, inside a
      public /16 (IPv6 /32) that at least ``PUBLIC_RANGE_PEERS`` other identities
      called from: the provider egress range serverless calls rotate through. Weaker
      than 'known': any tenant of that provider can call from the same /16;
    - 'foreign': the rest: an internet network no identity used, a private block the
      fleet does not call from.

    ``why`` is one sentence naming the network and the prefix that decided it.
    The identity's own use never counts (``own``; at scoring pass its profile's
    networks to ``FleetProfile.view``). A table built before prefixes were counted
    (an older model) knows exact networks only: a network new to the fleet is then
    'foreign' whatever its scope, as before (retrain to learn the ranges).
    """
    network = network or ''
    shown = network or 'an empty source'
    users, _ = self.network_users(network)
    if users:
      return KNOWN, f'{shown} is known to the fleet: {_identities(users)} called from it'
    scope = address_scope(network)
    if scope == INTERNAL:
      return INTERNAL_CALLER, (f'{shown} is a cloud-internal caller (the provider calling for the '
                               f'identity), not an internet network')
    block, _, name = special_block(network)
    if not self.fleet.counts_ranges():
      return FOREIGN, (f'{network} is a network no other identity of the fleet called from '
                       f'(this model\'s fleet table has no address ranges: retrain to learn them)')
    if scope == PRIVATE:
      for prefix in enclosing(network):
        n, _ = self.range_users(prefix)
        if n >= PRIVATE_RANGE_PEERS:
          return FLEET_PRIVATE, f'{network} is new, inside {prefix} where {_identities(n)} of the fleet call from'
      n, _ = self.range_users(block)
      return FOREIGN, (f'{network} is in {block} ({name}), a private block '
                       + (f'only {_identities(n)} of the fleet called from' if n else
                          'no other identity of the fleet called from'))
    near = []
    for prefix in enclosing(network):
      n, _ = self.range_users(prefix)
      if n >= PUBLIC_RANGE_PEERS:
        return FLEET_PUBLIC_RANGE, (f'{network} is new, inside {prefix} where {_identities(n)} of the '
                                    f'fleet call from (a provider range calls rotate through)')
      if n:
        near.append(f'{_identities(n)} called from {prefix}')
    kind = 'an internet network' if enclosing(network) else 'a source (not an address)'
    return FOREIGN, (f'{network} is {kind} no other identity of the fleet called from'
                     + (f' ({block} is {name}, not a real internet network)' if block else '')
                     + (f'; only {", ".join(near)}' if near else ''))

  def common(self, action: str) -> bool:
    return bool(self.fleet.identities) and self.commonness(action) >= COMMON_SHARE

  def rare(self, action: str) -> bool:
    """Used by (almost) no other identity of the fleet: at most 1% of it, or one identity."""
    f, fn = self.fleet_users(action)
    return f <= max(1, int(0.01 * fn))


def _identities(n: int) -> str:
  return f'{n} other identit{"y" if n == 1 else "ies"}'


EMPTY = FleetProfile()
