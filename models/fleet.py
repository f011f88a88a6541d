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
"""
from __future__ import annotations

from typing import Container, Dict, Iterable, Optional, Tuple

from postauth.models.profile import seen_key

ALL = '*'  # the whole fleet, beside each identity type
COMMON_SHARE = 0.10  # used by at least this share of peers (or of the fleet): routine somewhere


def network_key(network: str) -> str:
  """Networks share the table with actions, under their own prefix."""
  return 'net:' + network


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

  def view(self, identity_type: str, own: Optional[Container[int]]) -> 'PeerView':
    """``own``: the action hashes this identity was counted with (None if it was not counted)."""
    return PeerView(self, identity_type or '', own)

  def to_dict(self) -> dict:
    return {'identities': self.identities,
            'actions': {g: [[h, n] for h, n in c.items()] for g, c in self.actions.items()}}

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

  def common(self, action: str) -> bool:
    return bool(self.fleet.identities) and self.commonness(action) >= COMMON_SHARE

  def rare(self, action: str) -> bool:
    """Used by (almost) no other identity of the fleet: at most 1% of it, or one identity."""
    f, fn = self.fleet_users(action)
    return f <= max(1, int(0.01 * fn))


EMPTY = FleetProfile()
