"""Issue 4: the streaming history state of one identity stays bounded, as encoded for Beam state.

An identity that touches ever more distinct actions, resources, networks, agents and
regions must not grow its keyed state without limit: past the caps of
``models.profile.MAX_SEEN`` the encoded state stops growing (bench/state.py prints the curve).
Actions and resources are kept as 64-bit hashes, so the bound does not depend on how long
ARNs are; profiles and state written before that still load (hashed on the way in).
"""
from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest

from postauth.models.features import INDEX, feature_vector
from postauth.models.history import DAY, IdentityHistory
from postauth.models.model import DetectionModel
from postauth.models.artifact import ArtifactError
from postauth.models.profile import HASHED_SEEN, MAX_SEEN, PROFILE_FORMAT, IdentityProfile
from postauth.domain.window import WindowAggregate
from postauth.domain.event import Event
from postauth.transforms.history import TrackHistoryFn
from postauth.transforms.history_cell import IdentityState
from test_model import _tiny_model

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
  return len(TrackHistoryFn.HISTORY.coder.encode(IdentityState(hist, {})))


def test_state_stops_growing_past_the_caps():
  cap = max(MAX_SEEN.values())
  at_5x, at_10x = _greedy(5 * cap), _greedy(10 * cap)
  for field, field_cap in MAX_SEEN.items():
    kept = len(at_10x.base.seen[field]) + len(at_10x.today.seen[field])
    assert kept <= 2 * 1.25 * field_cap, (field, kept)  # base and today's delta, each pruned at 1.25x
  size_5x, size_10x = _state_bytes(at_5x), _state_bytes(at_10x)
  # Without the caps 10x would hold twice the keys of 5x (~2x the bytes); capped it stays flat.
  assert size_10x < 1.1 * size_5x, (size_5x, size_10x)
  # At most 6,720 keys: hashed ones (actions, resources) take 8 bytes and a 1-4 byte count
  # packed; the rest are strings of ~20 characters here. Kept as strings, the ~6.4k
  # action and resource keys alone took ~150 kB (the bound was then 64 bytes a key).
  hashed = sum(int(2 * 1.25 * MAX_SEEN[f]) for f in HASHED_SEEN)
  strings = sum(int(2 * 1.25 * c) for f, c in MAX_SEEN.items() if f not in HASHED_SEEN)
  assert size_10x < 12 * hashed + 64 * strings, (size_10x, 12 * hashed + 64 * strings)


def _saved_by_previous_code(profile_dict: dict, aggs) -> dict:
  """A profile as models saved it before seen-sets were hashed: every field ``{string: count}``."""
  old = {k: v for k, v in profile_dict.items() if k != 'seen_hashed'}
  old['seen'] = dict(profile_dict['seen'])
  for field in ('actions', 'resources'):  # the hashed fields of that time (no resource families)
    counts: dict = {}
    for agg in aggs:
      for k, n in getattr(agg, field).items():
        counts[k] = counts.get(k, 0) + n
    old['seen'][field] = counts
  return old


class _OldProfile:
  """Stands in for an IdentityProfile of the previous code when saving a model."""

  def __init__(self, d: dict):
    self._d = d

  def to_dict(self) -> dict:
    return self._d


def test_models_saved_with_string_seen_sets_load_hashed_and_score_the_same(tmp_path):
  windows = [(_window(w, [f'arn:aws:s3:::bucket-{w % 3}/key-{k}' for k in range(4)]), T0 + (w + 1) * 3600)
             for w in range(12)]
  profile = IdentityProfile()
  for agg, end in windows:
    profile.update(agg, end)
  assert all(isinstance(k, int) for f in HASHED_SEEN for k in profile.seen[f])  # what the state holds
  model = _tiny_model()
  model.profiles = {'a': _OldProfile(_saved_by_previous_code(profile.to_dict(), [a for a, _ in windows]))}
  model.save(str(tmp_path))
  with gzip.open(tmp_path / model.version / 'profiles.json.gz') as f:
    assert 'arn:aws:s3:::bucket-0/key-0' in json.load(f)['a']['seen']['resources']  # really the old format
  manifest_path = tmp_path / model.version / 'manifest.json'
  manifest = json.loads(manifest_path.read_text())
  assert manifest.pop('profile_format') == PROFILE_FORMAT
  manifest_path.write_text(json.dumps(manifest))  # as the previous code wrote it: no profile_format
  loaded = DetectionModel.load(str(tmp_path)).profiles['a']
  assert loaded.seen == profile.seen and loaded.windows == profile.windows
  later = [_window(0, ['arn:aws:s3:::bucket-0/key-1', 'arn:aws:s3:::bucket-9/new']),
           _window(1, ['arn:aws:s3:::bucket-1/key-2'])]
  for agg in later:
    x = feature_vector(agg, loaded, T0 + 2 * DAY)
    np.testing.assert_array_equal(x, feature_vector(agg, profile, T0 + 2 * DAY))
  assert feature_vector(later[0], loaded, T0 + 2 * DAY)[INDEX['novel_resources']] == pytest.approx(np.log1p(1))
  # And the new format round-trips as it is (keys and their order).
  again = IdentityProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
  assert list(again.seen['resources'].items()) == list(profile.seen['resources'].items())


def test_profiles_of_a_newer_format_are_refused_by_name(tmp_path):
  model = _tiny_model()
  model.save(str(tmp_path))
  manifest_path = tmp_path / model.version / 'manifest.json'
  manifest = json.loads(manifest_path.read_text())
  manifest_path.write_text(json.dumps(dict(manifest, profile_format=PROFILE_FORMAT + 1)))
  with pytest.raises(ArtifactError, match=f'profiles in format {PROFILE_FORMAT + 1}'):
    DetectionModel.load(str(tmp_path))


def _window(w: int, resources) -> WindowAggregate:
  agg = WindowAggregate()
  for i, r in enumerate(resources):
    agg.add(Event(f'e{w}-{i}', T0 + w * 3600 + i, 'a', 'AssumedRole', 'a', '', 'aws', 's3',
                  f'GetObject{w % 2}', 'data_read', r, 'us-east-1', '10.0.0.7', 'boto3/1.0', True, '',
                  True, 'x#0'), 900)
  return agg


def test_state_pickled_before_hashing_resumes_hashed(monkeypatch):
  """A streaming job updated in place reads the keyed state the previous code wrote."""
  aggs = [_window(w, [f'arn:aws:s3:::bucket-{w}/key-{k}' for k in range(3)]) for w in range(4)]
  hist = IdentityHistory()
  for w, agg in enumerate(aggs):
    hist.observe(agg, T0 + (w + 1) * 3600)
  old_state = _saved_by_previous_code(hist.today.to_dict(), aggs)
  # The previous code had no __getstate__: pickle stored the instance __dict__ as is.
  monkeypatch.setattr(IdentityProfile, '__getstate__', lambda self: old_state, raising=False)
  stored = pickle.dumps(hist, protocol=pickle.HIGHEST_PROTOCOL)
  assert b'arn:aws:s3:::bucket-3/key-2' in stored
  monkeypatch.undo()
  resumed = pickle.loads(stored)
  assert resumed.today.seen == hist.today.seen
  assert pickle.loads(pickle.dumps(resumed)).today.seen == hist.today.seen
