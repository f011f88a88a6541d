"""An isolation forest as plain arrays, scored with numpy alone.

`postauth run` scores a few hundred windows per job; importing scikit-learn and
skops and rebuilding the forests with skops cost more CPU than the scoring
(docs/startup-and-marginal.md). So each fitted ``IsolationForest`` is also stored
as its tree arrays (``.npz``, no pickle) and scored here, reproducing
``IsolationForest.score_samples`` bit for bit: X cast to float32 and compared
against the float64 thresholds (NaN follows ``missing_go_to_left``), each row's
per-tree path lengths (leaf depth + the average path length of the leaf's
training samples - 1) summed tree by tree in tree order, and
``-2 ** -(sum / (n_trees * c(max_samples)))``.

All trees' nodes are concatenated into one set of arrays; a (rows, trees) matrix
of node indices descends one level per step, as many steps as the deepest leaf
is deep (a leaf's children are itself, so rows that arrived stay put), over
chunks of rows. Only the converter imports scikit-learn, inside the function.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import zipfile
from typing import Tuple

import numpy as np

FORMAT = 1
_ARRAYS = ('roots', 'left', 'right', 'feature', 'threshold', 'missing_left', 'path_length')
_SCALARS = ('format', 'n_features', 'max_samples', 'average_path_length')
_CHUNK_ROWS = 1024
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same forest gives the same bytes (and hash)


@dataclasses.dataclass(frozen=True, eq=False)
class ForestArrays:
  """Every tree's nodes, concatenated; ``roots[t]`` is where tree t starts.

  ``feature`` is a column of the full feature matrix (a tree fit on a feature
  subset has its ``estimators_features_`` applied already); ``left``/``right``
  of a leaf are the leaf itself; ``path_length`` is only read at leaves.
  """
  roots: np.ndarray  # (n_trees,) int64
  left: np.ndarray  # (n_nodes,) int64
  right: np.ndarray  # (n_nodes,) int64
  feature: np.ndarray  # (n_nodes,) int64
  threshold: np.ndarray  # (n_nodes,) float64: x (as float32) <= threshold goes left
  missing_left: np.ndarray  # (n_nodes,) bool: where a NaN goes
  path_length: np.ndarray  # (n_nodes,) float64: depth + c(n_node_samples) - 1 at leaves
  n_features: int
  max_samples: int
  average_path_length: float  # c(max_samples), the normaliser per tree

  @property
  def n_trees(self) -> int:
    return len(self.roots)

  def is_leaf(self) -> np.ndarray:
    return self.left == np.arange(len(self.left))

  def split_features(self) -> np.ndarray:
    """The feature column each split node tests (what the training report counts)."""
    return self.feature[~self.is_leaf()]

  @functools.cached_property
  def _walk(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(roots, feature, children, levels) as the descent reads them, int32 (faster gathers):
    ``children[2 * node + went_left]`` is where a row goes next (a leaf: itself), and
    ``levels`` is the number of steps from the roots to the deepest leaf."""
    children = np.stack([self.right, self.left], axis=1).ravel()
    levels, frontier, leaf = 0, self.roots, self.is_leaf()
    while len(frontier):
      frontier = frontier[~leaf[frontier]]
      frontier = np.concatenate([self.left[frontier], self.right[frontier]])
      levels += bool(len(frontier))
    return (self.roots.astype(np.int32), self.feature.astype(np.int32), children.astype(np.int32),
            levels)

  def leaves(self, x: np.ndarray) -> np.ndarray:
    """(rows, trees) index of the leaf each row reaches in each tree."""
    x32 = _as_float32(x, self.n_features)
    out = np.empty((len(x32), self.n_trees), dtype=np.int32)
    for start in range(0, len(x32), _CHUNK_ROWS):  # keeps the (rows, trees) matrices in cache
      out[start:start + _CHUNK_ROWS] = self._descend(x32[start:start + _CHUNK_ROWS])
    return out

  def _descend(self, x32: np.ndarray) -> np.ndarray:
    roots, feature, children, levels = self._walk
    flat = x32.ravel()
    row_start = (np.arange(len(x32), dtype=np.int32) * np.int32(self.n_features))[:, None]
    node = np.repeat(roots[None, :], len(x32), axis=0)
    nan = bool(np.isnan(flat).any())
    for _ in range(levels):
      value = flat.take(row_start + feature.take(node))
      went_left = value <= self.threshold.take(node)  # float32 promoted to float64: exact, as sklearn
      if nan:
        went_left |= np.isnan(value) & self.missing_left.take(node)
      node = children.take(2 * node + went_left)
    return node

  def score_samples(self, x: np.ndarray) -> np.ndarray:
    """``IsolationForest.score_samples(x)``: the lower, the more anomalous."""
    lengths = self.path_length[self.leaves(x)]
    # Tree by tree, left to right, as sklearn accumulates them (cumsum is sequential).
    depths = np.cumsum(lengths, axis=1)[:, -1] if self.n_trees else np.zeros(len(lengths))
    denominator = self.n_trees * np.float64(self.average_path_length)
    return -(2 ** (-np.divide(depths, denominator, out=np.ones_like(depths),
                              where=denominator != 0)))

  # -- serialisation ----------------------------------------------------------
  def to_bytes(self) -> bytes:
    """An ``.npz`` (readable with ``np.load(..., allow_pickle=False)``), byte-for-byte reproducible."""
    arrays = {name: getattr(self, name) for name in _ARRAYS}
    arrays.update(format=FORMAT, n_features=self.n_features, max_samples=self.max_samples,
                  average_path_length=self.average_path_length)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
      for name in sorted(arrays):
        info = zipfile.ZipInfo(f'{name}.npy', date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, 'w') as f:
          np.lib.format.write_array(f, np.asarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()

  @classmethod
  def from_bytes(cls, data: bytes) -> 'ForestArrays':
    """Reads ``to_bytes``' output; ValueError for anything else (never unpickles)."""
    try:
      with zipfile.ZipFile(io.BytesIO(data)) as z:
        loaded = {}
        for name in _ARRAYS + _SCALARS:
          with z.open(f'{name}.npy') as f:
            loaded[name] = np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
      raise ValueError(f'not a forest array file: {e}') from e
    if int(loaded['format']) != FORMAT:
      raise ValueError(f'forest array format {int(loaded["format"])}, this code reads {FORMAT}')
    return cls.build(
        roots=loaded['roots'], left=loaded['left'], right=loaded['right'], feature=loaded['feature'],
        threshold=loaded['threshold'], missing_left=loaded['missing_left'],
        path_length=loaded['path_length'], n_features=int(loaded['n_features']),
        max_samples=int(loaded['max_samples']),
        average_path_length=float(loaded['average_path_length']))

  @classmethod
  def build(cls, **fields) -> 'ForestArrays':
    """Checked construction: dtypes fixed, and every child after its parent within the node
    arrays (as sklearn builds trees, depth first), so a descent always ends on a leaf."""
    ints = ('roots', 'left', 'right', 'feature')
    for name in ints:
      fields[name] = np.ascontiguousarray(fields[name], dtype=np.int64)
    for name in ('threshold', 'path_length'):
      fields[name] = np.ascontiguousarray(fields[name], dtype=np.float64)
    fields['missing_left'] = np.ascontiguousarray(fields['missing_left'], dtype=bool)
    forest = cls(**fields)
    n = len(forest.left)
    if n >= 2 ** 30:
      raise ValueError(f'{n} nodes: more than the int32 descent can index')
    index = np.arange(n)
    leaf = forest.is_leaf()
    if any(getattr(forest, name).shape != (n,) for name in _ARRAYS if name != 'roots'):
      raise ValueError('forest arrays of different lengths')
    if ((forest.roots < 0) | (forest.roots >= max(n, 1))).any() and forest.n_trees:
      raise ValueError('a tree root outside the node arrays')
    after_parent = (forest.left > index) & (forest.right > index) & (forest.left < n) & (forest.right < n)
    if not (after_parent | (leaf & (forest.right == index))).all():
      raise ValueError('a child that does not follow its parent')
    if ((forest.feature < 0) | (forest.feature >= forest.n_features)).any():
      raise ValueError('a split on a feature the forest was not trained on')
    return forest


def _as_float32(x: np.ndarray, n_features: int) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[1] != n_features:
    raise ValueError(f'expected a (rows, {n_features}) feature matrix, got shape {x.shape}')
  return x.astype(np.float32)


def from_sklearn(forest) -> ForestArrays:
  """The arrays of a fitted ``sklearn.ensemble.IsolationForest``.

  Reads the fitted attributes ``score_samples`` itself uses (``_decision_path_lengths``,
  ``_average_path_length_per_tree``), so the scores match by construction.
  """
  from sklearn.ensemble import IsolationForest
  from sklearn.ensemble._iforest import _average_path_length
  if not isinstance(forest, IsolationForest):
    raise TypeError(f'not an IsolationForest: {type(forest).__name__}')
  # Trees see X[:, features] only when features are subsampled (BaseBagging), as in
  # IsolationForest._compute_chunked_score_samples.
  subsample = forest._max_features != forest.n_features_in_
  parts = {name: [] for name in _ARRAYS if name != 'roots'}
  roots, offset = [], 0
  for tree, features, depths, average in zip(forest.estimators_, forest.estimators_features_,
                                              forest._decision_path_lengths,
                                              forest._average_path_length_per_tree):
    t = tree.tree_
    index = np.arange(t.node_count)
    leaf = t.children_left == -1
    column = np.where(leaf, 0, t.feature)
    roots.append(offset)
    parts['left'].append(np.where(leaf, index, t.children_left) + offset)
    parts['right'].append(np.where(leaf, index, t.children_right) + offset)
    parts['feature'].append(np.asarray(features)[column] if subsample else column)
    parts['threshold'].append(t.threshold)
    parts['missing_left'].append(t.missing_go_to_left.astype(bool))
    parts['path_length'].append(depths + average - 1.0)  # the sum sklearn forms per row and tree
    offset += t.node_count
  arrays = {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}
  return ForestArrays.build(roots=np.asarray(roots), n_features=int(forest.n_features_in_),
                            max_samples=int(forest._max_samples),
                            average_path_length=float(_average_path_length([forest._max_samples])[0]),
                            **arrays)
