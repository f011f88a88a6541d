"""A DoFn's state and timer specs, introspected once per DoFn object in this process.

Beam finds a DoFn's state and timer parameters by reading the signature of every method the
DoFn has (``userstate.get_dofn_specs``: ``dir`` of the DoFn, then ``inspect`` on ~30 methods),
and asks again at each step that needs to know: the ParDo's construction, its runner API
form, the worker's operation for it: 8 times a ParDo, ~290 times and ~0.1 CPU s for the
detection job's 37 ParDos. A DoFn's specs are its methods' default arguments, fixed when its
class is defined, so the first answer for a DoFn object is every later one's.

The memo holds each DoFn weakly (an entry goes with its DoFn) and is keyed by identity (a
DoFn may define ``__eq__``). Workers in other processes (Dataflow, a Flink job server's) keep
Beam's own introspection.
"""
from __future__ import annotations

import threading
import weakref
from typing import Callable, Dict, Tuple

from apache_beam.transforms import userstate

_lock = threading.Lock()


def _remembering(introspect: Callable) -> Callable:
  memo: Dict[int, Tuple[weakref.ref, tuple]] = {}

  def get_dofn_specs(dofn):
    key = id(dofn)
    hit = memo.get(key)
    if hit is not None and hit[0]() is dofn:
      state, timers = hit[1]
      return set(state), set(timers)  # callers own their sets, as from Beam's own
    specs = introspect(dofn)
    try:
      ref = weakref.ref(dofn, lambda _, key=key: memo.pop(key, None))
    except TypeError:  # an object without weak references: not remembered
      return specs
    memo[key] = (ref, (frozenset(specs[0]), frozenset(specs[1])))
    return specs

  get_dofn_specs.__doc__ = introspect.__doc__
  get_dofn_specs.introspect = introspect
  get_dofn_specs.memo = memo
  return get_dofn_specs


def introspect_dofns_once() -> bool:
  """Makes ``userstate.get_dofn_specs`` (and ``is_stateful_dofn``, ``validate_stateful_dofn``
  and the runners' calls through the module) remember its answer per DoFn object. Idempotent;
  returns whether the memo is in place."""
  with _lock:
    current = userstate.get_dofn_specs
    if getattr(current, 'introspect', None) is None:
      userstate.get_dofn_specs = _remembering(current)
  return True
