"""The earliest due time of each key's pending bag, kept for one bundle.

The streaming timer steps (the findings merge, the peers' step, the dedup) add each arriving
element to a key's ``pending`` bag and set the key's timer at the earliest due time in it. Read
per element, the bag is fetched and decoded whole each time: a key that gets n elements in a
bundle decoded ~n^2/2 of them (on Prism, which keeps no state cache, each read is also a request
to the runner). Kept here, the first arrival of a key in a bundle reads the bag and the later
ones take the minimum with their own; a timer rewrites the bag through it.

Invariant: for every key seen in the bundle, ``earliest[key]`` is the minimum due time over the
key's bag as it is now (what reading it would give; infinity for an empty bag). Reset at each
bundle's start: state between bundles is the runner's.
"""
from __future__ import annotations

import math

from typing import Any, Callable, Dict, List, Optional


class EarliestPending:
  """``add`` an element to a key's bag and get the bag's earliest due time; ``rewrite`` the bag
  from a timer; ``start_bundle`` forgets everything."""

  def __init__(self, due: Callable[[Any], int]):
    self._due = due
    self._earliest: Dict[Any, int] = {}

  def start_bundle(self) -> None:
    self._earliest.clear()

  def add(self, key: Any, pending, element: Any) -> int:
    pending.add(element)
    known = self._earliest.get(key)
    if known is None:  # the key's first arrival in this bundle: the bag as it is (element included)
      earliest = min(self._due(e) for e in pending.read())
    else:
      earliest = min(known, self._due(element))
    self._earliest[key] = earliest
    return earliest

  def rewrite(self, key: Any, pending, rest: List[Any]) -> Optional[int]:
    """Rewrites the key's bag to hold ``rest`` (a timer took the others); its earliest, or None."""
    pending.clear()
    for e in rest:
      pending.add(e)
    earliest = min((self._due(e) for e in rest), default=None)
    self._earliest[key] = math.inf if earliest is None else earliest  # an empty bag is known too
    return earliest
