"""Issue 4: the streaming history state of one identity stays bounded, as encoded for Beam state.

An identity that touches ever more distinct actions, resources, networks, agents and
regions must not grow its keyed state without limit: past the caps of
``models.profile.MAX_SEEN`` the encoded state stops growing (bench/state.py prints the curve).
"""
from __future__ import annotations

import pickle

from models.history import DAY, IdentityHistory
from models.profile import MAX_SEEN
from transforms.aggregate import WindowAggregate
from transforms.event import Event
from transforms.history import TrackHistoryFn

T0 = 1_800_000_000 - 1_800_000_000 % DAY


def _greedy(distinct: int, windows: int = 192) -> IdentityHistory:
  """An identity that uses ``distinct`` new keys of every field, spread over two days of windows."""
  hist = IdentityHistory()
  per_window = -(-distinct // windows)
  for w in range(windows):
    end = T0 + (w + 1) * 2 * DAY / windows
    agg = WindowAggregate()
    for i in range(per_window):
      k = w * per_window + i
      agg.add(Event(f'e{k}', end - 1, 'role/greedy', 'AssumedRole', 'role/greedy', '', 'aws',
                    f'svc{k % 40}', f'Action{k}', 'data_read', f'bucket-{k}/object-{k}.json',
                    f'region-{k}', f'10.{k // 250 % 250}.{k % 250}.7', f'agent{k}/1.0 linux',
                    True, '', True, 'x#0'))
    hist.observe(agg, end)
  return hist


def _state_bytes(hist: IdentityHistory) -> int:
  """Length of the state cell as TrackHistoryFn writes it (pickle under the state's coder)."""
  return len(TrackHistoryFn.HISTORY.coder.encode(pickle.dumps(hist, protocol=pickle.HIGHEST_PROTOCOL)))


def test_state_stops_growing_past_the_caps():
  cap = max(MAX_SEEN.values())
  at_5x, at_10x = _greedy(5 * cap), _greedy(10 * cap)
  for field, field_cap in MAX_SEEN.items():
    kept = len(at_10x.base.seen[field]) + len(at_10x.today.seen[field])
    assert kept <= 2 * 1.25 * field_cap, (field, kept)  # base and today's delta, each pruned at 1.25x
  size_5x, size_10x = _state_bytes(at_5x), _state_bytes(at_10x)
  # Without the caps 10x would hold twice the keys of 5x (~2x the bytes); capped it stays flat.
  assert size_10x < 1.1 * size_5x, (size_5x, size_10x)
  # About 6.7k capped keys of ~30 characters: well under 64 bytes per key.
  key_bound = sum(int(2 * 1.25 * c) for c in MAX_SEEN.values())
  assert size_10x < 64 * key_bound, size_10x
