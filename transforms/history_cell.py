"""The streaming history's keyed cell: what it keeps of an identity, and the cell's coder.

One cell per identity (``transforms/history.py`` ``TrackHistoryFn``), read and written once per
fold: the identity's ``IdentityHistory`` (or, once that expired, its departed record) and the
aggregates of its recent windows' firings, so that a late firing is put back together.
"""
from __future__ import annotations

import typing
from typing import Dict, Optional, Tuple, Union

from apache_beam.coders import Coder

from postauth.models.history import IdentityHistory
from postauth.transforms.packed import PackedStateCoder

# What the state holds of an identity: its history, or once that expired, (last seen, last active).
Kept = Union[IdentityHistory, Tuple[float, float]]


class IdentityState(typing.NamedTuple):
  """One identity's history cell, read and written once per fold: what is kept of it (``Kept``)
  and, while a late firing can come, its recent windows' aggregates by (start, end) (the sliding
  windows discard: windowing._AttachWindow; a late firing is put back together here)."""
  kept: Optional[Kept]
  firings: Dict[Tuple[float, float], typing.Any]


# Packs and unpacks cells as the other state is (zstd contexts per thread); holds no cell's data.
_PACKER = PackedStateCoder()


def encode_state(kept: Optional[Kept], firings: Optional[Dict] = None) -> bytes:
  """The history cell's bytes: the pickled ``IdentityState``, packed with zstd (a cell of
  profiles and recent aggregates compresses ~3x; every byte crosses the runner's state API)."""
  return _PACKER.encode(IdentityState(kept, firings or {}))


def decode_state(stored: Optional[bytes]) -> IdentityState:
  """The cell's value. A cell written unpacked (before packing) reads the same, and one written
  before the firings moved in holds what is kept alone."""
  value = _PACKER.decode(stored) if stored else None
  return value if isinstance(value, IdentityState) else IdentityState(value, {})


class IdentityStateCoder(Coder):
  """The history cell's coder: ``IdentityState`` <-> ``encode_state``'s bytes (a cell written as
  those bytes under ``BytesCoder`` reads the same: both length-prefix them in state).

  Why a coder and not bytes written by the DoFn: on the Fn API runners (Prism, Dataflow, Flink,
  the FnApiRunner) a written value stays an object until the bundle commits its state, and a
  read after a write in the same bundle returns that object. When the watermark jumps (a
  drain, a replay, a backlog) one bundle fires an identity's ordering timers one after another,
  and each fold read and wrote the whole history: with bytes each was a full unpickle and
  pickle of the identity's profiles; now a bundle decodes the cell once and encodes it once.
  The BundleBasedDirectRunner encodes at every write, as before. Values written are never
  changed after the write unless written again (the fold writes what it changed)."""

  def encode(self, value: IdentityState) -> bytes:
    return encode_state(*value)

  def decode(self, encoded: bytes) -> IdentityState:
    return decode_state(encoded)

  def is_deterministic(self) -> bool:
    return False

  def __eq__(self, other):
    return type(self) is type(other)

  def __hash__(self):
    return hash(type(self))
