"""Bundles that end when their work ends, in the SDK workers this process hosts.

Beam's Python SDK worker times each step with a state-sampler thread that sleeps between
samples, ramping up to 200 ms; a bundle ends by joining that thread, so a long bundle waits up
to 200 ms after its last output (half of it on average) with nothing to do. On Prism the wait
costs a core as well: its bundle loop polls the bundle's closed data channel until the
response arrives (docs/performance.md, "Prism: ... keep the runner busy"). The FnApiRunner,
the DirectRunner and Prism's default LOOPBACK environment run their workers in this process; a
20 ms ceiling keeps the sampling (step timings, reports of a stuck bundle) and bounds the wait.
Workers in other processes (Dataflow, a Flink job server's) keep Beam's default.
"""
from __future__ import annotations

import inspect

from apache_beam.runners.worker import statesampler

SAMPLING_PERIOD_MS = 20


def shorten_bundle_ends(period_ms: int = SAMPLING_PERIOD_MS) -> bool:
  """Makes ``period_ms`` the longest sampling period of the state samplers this process creates
  from now on (samplers already running keep theirs). Idempotent. Returns False, changing
  nothing, if this Beam's sampler takes no ``sampling_period_ms`` default."""
  init = statesampler.StateSampler.__init__
  params = list(inspect.signature(init).parameters.values())
  if not params or params[-1].name != 'sampling_period_ms' or params[-1].default is inspect.Parameter.empty:
    return False
  if init.__defaults__ and len(init.__defaults__) == 1:
    init.__defaults__ = (period_ms,)
    return True
  return False
