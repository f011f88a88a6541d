"""What scoring needs about one identity-window: the window, its inventory context and the
identity's history before the window's day; and the coder it crosses a stage boundary with."""
from __future__ import annotations

import pickle
import typing
from typing import Any, Dict

import apache_beam as beam

from postauth.models.profile import IdentityProfile
from postauth.transforms.sampled_size import SampledSizeCoder
from postauth.transforms.windowing import IdentityWindow, estimated_window_size


class WindowInContext(typing.NamedTuple):
  """What the scorer needs about one identity-window."""
  window: IdentityWindow
  context: Dict[str, Any]
  history: IdentityProfile  # the identity's profile before the window's day
  history_days: int  # complete days of history behind it (large for trained identities)


class WindowInContextCoder(SampledSizeCoder):
  """Pickle, as Beam's fallback would, with a size estimate that encodes nothing (Beam sizes
  sampled elements of every PCollection; these are scored in the same fused step)."""

  def encode(self, value: WindowInContext) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

  def decode(self, encoded: bytes) -> WindowInContext:
    return pickle.loads(encoded)

  def measured_size(self, value: WindowInContext) -> int:
    profile = value.history
    entries = sum(map(len, profile.seen.values())) + len(profile.category_max) + len(profile.category_events)
    return 900 + int(1.2 * estimated_window_size(value.window)) + 40 * len(value.context) + 20 * entries

  def is_deterministic(self) -> bool:
    return False

  def to_type_hint(self):
    return WindowInContext


beam.coders.registry.register_coder(WindowInContext, WindowInContextCoder)

# One identity's windows in context, in fold order (the batch history walk's grouped output):
# typed, so Beam's element sizing uses the coder's estimate, not a pickle of the profiles.
IDENTITY_WINDOWS_IN_CONTEXT = typing.Tuple[str, typing.List[WindowInContext]]


def windows_of(element) -> typing.Sequence[WindowInContext]:
  """The windows in context an element holds: itself, or an identity's list from the batch walk."""
  return (element,) if isinstance(element, WindowInContext) else element[1]
