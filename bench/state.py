"""Memory per identity of the streaming history state (issue 4), and that it stays bounded.

    python bench/state.py [--identities 100000] [--sample-identities 200] [--days 7]

The streaming detection job keeps one ``models.history.IdentityHistory`` (two bounded
``IdentityProfile`` s: the base and today's delta) per identity in keyed state,
``transforms.history.TrackHistoryFn.HISTORY``: pickled, under Beam's ``BytesCoder``. This
prints, per identity:

* realistic state: histories folded from the windows of a generated sample (the project's
  parser, WindowAggregate and IdentityHistory, as in the batch walk), as encoded by the state's
  coder (bytes) and as live Python objects (tracemalloc), for ``--identities`` identities
  (the sample's histories cloned by unpickling, so every one is a separate object tree, as
  when a runner decodes state per key);
* worst case: one identity that does ever more distinct actions, resources, networks, user
  agents and regions (up to 10x the caps of ``models.profile.MAX_SEEN``): the encoded size
  grows until the caps are reached and then stays flat. The bound per identity is therefore
  that of a capped history, whatever the identity does; 100k such identities are projected
  from the per-identity figure (holding them would need that memory).
"""
from __future__ import annotations

import argparse
import glob
import os
import pickle
import statistics
import sys
import tempfile
import time
import tracemalloc
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from postauth.models.history import DAY, IdentityHistory  # noqa: E402
from postauth.models.profile import MAX_SEEN  # noqa: E402
from postauth.domain.window import WindowAggregate  # noqa: E402
from postauth.domain.event import Event  # noqa: E402
from postauth.transforms.history import TrackHistoryFn  # noqa: E402
from postauth.transforms.history_cell import IdentityState, encode_state  # noqa: E402
from postauth.transforms.windowing import IdentityWindow  # noqa: E402

STATE_CODER = TrackHistoryFn.HISTORY.coder  # the coder Beam uses for the state cell


def encode(hist: IdentityHistory) -> bytes:
  """The state cell's bytes, exactly as TrackHistoryFn writes them (no firings kept)."""
  return STATE_CODER.encode(IdentityState(hist, {}))


def sample_histories(identities: int, days: int, rate_scale: float, window_size: int = 3600,
                     period: int = 900) -> Tuple[Dict[str, IdentityHistory], List[int]]:
  """Every identity's history after walking its windows of a generated sample in time order, and
  the bytes its recent firings add to its cell after each window (``TrackHistoryFn._whole_window``)."""
  from postauth.pipeline.generate import generate
  from postauth.transforms.parse import RecordParser, read_all
  from postauth.transforms.records import split_records
  work = tempfile.mkdtemp(prefix='postauth-state-')
  generate(work, identities, days, 7, rate_scale=rate_scale)
  parser = RecordParser()
  panes: Dict = {}
  for path in sorted(glob.glob(f'{work}/history/*') + glob.glob(f'{work}/live/*')):
    for rec in split_records(read_all(path), path):
      e = parser.parse(rec)
      if isinstance(e, str):
        continue
      key = (e.identity, int(e.event_time // period) * period)
      panes.setdefault(key, WindowAggregate()).add(e, period)
  windows: Dict = {}
  for (identity, start), agg in panes.items():
    for k in range(window_size // period):
      windows.setdefault((identity, start - k * period), WindowAggregate()).merge(agg)
  hists: Dict[str, IdentityHistory] = {}
  firings: Dict[str, Dict] = {}
  sizes: List[int] = []
  step = TrackHistoryFn(None)  # its _whole_window: the firings as the streaming job keeps them
  empty = len(encode_state(None))  # a cell without firings
  for (identity, start), agg in sorted(windows.items(), key=lambda kv: kv[0][1]):
    hists.setdefault(identity, IdentityHistory()).observe(agg, start + window_size)
    kept = firings.setdefault(identity, {})
    step._whole_window((IdentityWindow(identity, start, start + window_size, agg), {}), kept)
    sizes.append(len(encode_state(None, kept)) - empty)
  return hists, sizes


def greedy_identity(distinct: int, windows_per_day: int = 96, days: int = 2,
                    resource_chars: int = 0) -> IdentityHistory:
  """One identity that does ``distinct`` different things of each kind, spread over its windows.

  Each window uses fresh actions, resources, networks, agents and regions until ``distinct``
  of each have been used, so the history sees up to ``distinct`` distinct keys per field
  (far past the caps when ``distinct`` is 10x them). Resources are ~25 characters, or
  ``resource_chars`` (an S3 object ARN is often ~100).
  """
  hist = IdentityHistory()
  total = windows_per_day * days
  per_window = max(1, -(-distinct // total))
  t0 = 1_800_000_000 - 1_800_000_000 % DAY
  used = 0
  for w in range(total):
    end = t0 + (w + 1) * DAY / windows_per_day
    agg = WindowAggregate()
    for i in range(per_window):
      k = (used + i) % distinct
      agg.add(Event(f'e{w}-{i}', end - 1, 'role/greedy', 'AssumedRole', 'role/greedy', '', 'aws',
                    f'svc{k % 40}', f'Action{k}', 'data_read',
                    f'bucket-{k}/object-{k}.json'.rjust(resource_chars, 'p'),
                    f'region-{k % 100}', f'10.{k // 250 % 250}.{k % 250}.7',
                    f'agent{k}/1.{k} linux', True, '', True, 'x#0'))
    used += per_window
    hist.observe(agg, end)
  return hist


def python_bytes(objects_factory, n: int) -> float:
  """Bytes of Python heap per object for ``n`` objects built by ``objects_factory(i)``."""
  tracemalloc.start()
  base = tracemalloc.get_traced_memory()[0]
  held = [objects_factory(i) for i in range(n)]
  used = tracemalloc.get_traced_memory()[0] - base
  tracemalloc.stop()
  del held
  return used / n


def seen_sizes(hist: IdentityHistory) -> str:
  return ', '.join(f'{k} {len(hist.base.seen[k]) + len(hist.today.seen[k])}' for k in MAX_SEEN)


def main(argv: List[str] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--identities', type=int, default=100_000, help='Histories held at once.')
  ap.add_argument('--sample-identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--rate-scale', type=float, default=0.4)
  ap.add_argument('--greedy-copies', type=int, default=200,
                  help='Capped histories held at once to measure their Python memory.')
  a = ap.parse_args(argv)
  t = time.perf_counter()
  hists, firings = sample_histories(a.sample_identities, a.days, a.rate_scale)
  blobs = {k: pickle.dumps(h, protocol=pickle.HIGHEST_PROTOCOL) for k, h in hists.items()}
  sizes = sorted(len(encode(h)) for h in hists.values())
  print(f'realistic state: {len(hists)} identities of a {a.days}-day sample (rate scale {a.rate_scale}), '
        f'built in {time.perf_counter() - t:.0f}s')
  print(f'  encoded (state coder: pickle under BytesCoder) bytes per identity: mean {statistics.mean(sizes):,.0f}, '
        f'median {sizes[len(sizes) // 2]:,}, p99 {sizes[int(len(sizes) * 0.99)]:,}, max {sizes[-1]:,}')
  firings.sort()
  print(f'  the firings in the cell (each window\'s aggregate kept the re-fire horizon deep, so a late firing '
        f'is scored whole), bytes per active identity after each firing: mean {statistics.mean(firings):,.0f}, '
        f'median {firings[len(firings) // 2]:,}, p99 {firings[int(len(firings) * 0.99)]:,}, max {firings[-1]:,}')
  largest = max(hists.values(), key=lambda h: len(encode(h)))
  print(f'  largest: distinct keys kept (base + today): {seen_sizes(largest)}')
  order = list(blobs.values())
  t = time.perf_counter()
  per_obj = python_bytes(lambda i: pickle.loads(order[i % len(order)]), a.identities)
  encoded_total = sum(len(order[i % len(order)]) for i in range(a.identities))
  print(f'  {a.identities:,} identities held as objects: {per_obj:,.0f} B/identity of Python heap '
        f'(tracemalloc), {per_obj * a.identities / 2**20:,.0f} MiB in all; as state bytes '
        f'{encoded_total / a.identities:,.0f} B/identity, {encoded_total / 2**20:,.0f} MiB in all '
        f'({time.perf_counter() - t:.0f}s)')
  del blobs, hists
  print('\nworst case: one identity doing ever more distinct things (caps: '
        + ', '.join(f'{k} {v}' for k, v in MAX_SEEN.items()) + '; pruned back to the cap at 1.25x):')
  bound_keys = sum(int(2 * 1.25 * c) for c in MAX_SEEN.values())
  print(f'  {"distinct per field":>18}  {"x resource cap":>14}  {"encoded bytes":>13}  keys kept (base + today; '
        f'at most {bound_keys:,} in all)')
  res_cap = max(MAX_SEEN.values())
  figures = []
  for mult in (0.125, 0.25, 0.5, 1, 2, 5, 10):
    distinct = int(res_cap * mult)
    hist = greedy_identity(distinct)
    size = len(encode(hist))
    figures.append((mult, size))
    print(f'  {distinct:>18,}  {mult:>14}  {size:>13,}  {seen_sizes(hist)}')
  big = figures[-1][1]
  long_arns = len(encode(greedy_identity(res_cap * 10, resource_chars=100)))
  print(f'  with 100-character resources at 10x: {long_arns:,} bytes (resources and actions are kept '
        f'as 8-byte hashes, so the length of ARNs does not count)')
  capped = pickle.dumps(hist, protocol=pickle.HIGHEST_PROTOCOL)
  per_capped = python_bytes(lambda i: pickle.loads(capped), a.greedy_copies)
  print(f'  a capped history as Python objects: {per_capped:,.0f} B (tracemalloc, {a.greedy_copies} held); '
        f'100k capped identities would need {big * 1e5 / 2**30:.1f} GiB as state bytes, '
        f'{per_capped * 1e5 / 2**30:.1f} GiB as objects')
  grow = figures[-1][1] / max(s for m, s in figures if m == 2)
  print(f'  encoded size at 10x / at 2x the largest cap: {grow:.2f} (bounded: it stops growing once '
        f'every field is at its cap)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
