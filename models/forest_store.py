"""How a cohort's isolation forest is stored in a model version, and read back for scoring.

Each cohort has two files, both hashed in the version's manifest: ``forest-<cohort>.skops``,
the fitted scikit-learn object (kept for audit and for any question about the training; skops
rebuilds only trusted types, never unpickles), and ``forest-<cohort>.npz``, its tree arrays
(``models.forest_arrays``), which is what scoring loads: no scikit-learn or skops import and no
object rebuild, which were half the CPU of a short `postauth run`
(docs/startup-and-marginal.md). A version saved before the arrays existed lists no ``.npz``:
its skops file is loaded and converted, and scores the same.
"""
from __future__ import annotations

import hashlib
import re
from typing import Dict

from postauth.models import artifact
from postauth.models.forest_arrays import ForestArrays, from_sklearn

# Forests already read in this process, by the SHA-256 the manifest verified: `postauth run`
# loads the model in its preflight check and again in the workers, which on the in-process
# runners share the process. Same bytes, same forest (scoring does not modify it); a changed
# file has another hash and is read (and checked) anew.
_CACHE: Dict[str, ForestArrays] = {}
_CACHE_SIZE = 32


def forest_file(cohort: str) -> str:
  """File name of a cohort's skops forest; team names may hold any character, file names may not."""
  if re.fullmatch(r'[A-Za-z0-9_.-]+', cohort):
    return f'forest-{cohort}.skops'
  slug = re.sub(r'[^A-Za-z0-9_.-]+', '_', cohort)[:60]
  return f'forest-{slug}-{hashlib.sha256(cohort.encode()).hexdigest()[:8]}.skops'


def arrays_file(cohort: str) -> str:
  """File name of a cohort's forest arrays: its skops name with ``.npz``."""
  return forest_file(cohort)[:-len('.skops')] + '.npz'


def dumps_sklearn(forest) -> bytes:
  import skops.io as sio
  return sio.dumps(forest)


def loads_sklearn(name: str, data: bytes):
  """The fitted ``IsolationForest`` of a skops file (imports scikit-learn and skops)."""
  import skops.io as sio
  from sklearn.ensemble import IsolationForest
  forest = sio.loads(data, trusted=artifact.SKOPS_TRUSTED)
  if not isinstance(forest, IsolationForest):
    raise artifact.ArtifactError(f'{name}: not an IsolationForest')
  return forest


def load_scorer(name: str, data: bytes, sha256: str) -> ForestArrays:
  """The forest arrays of a verified file: read from ``.npz``, or converted from ``.skops``."""
  forest = _CACHE.get(sha256)
  if forest is None:
    if name.endswith('.npz'):
      try:
        forest = ForestArrays.from_bytes(data)
      except ValueError as e:
        raise artifact.ArtifactError(f'{name}: {e}') from e
    else:
      forest = from_sklearn(loads_sklearn(name, data))
    if len(_CACHE) >= _CACHE_SIZE:
      _CACHE.pop(next(iter(_CACHE)))
    _CACHE[sha256] = forest
  return forest
