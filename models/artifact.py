"""Versioned model directories with a SHA-256 manifest, verified before anything loads.

Layout: ``MODEL_DIR/LATEST`` names the current version; ``MODEL_DIR/<version>/``
holds ``manifest.json`` (every file's SHA-256, feature order, training window,
counts, hyperparameters, library versions), per cohort ``forest-<cohort>.skops``
and ``forest-<cohort>.npz`` (``models.forest_store``), ``calibration.json`` and
``profiles.json.gz``.

Nothing is pickled: skops rebuilds only the types we list as trusted
(scikit-learn's isolation forest and its tree), and the ``.npz`` tree arrays are
read with ``allow_pickle=False``, so a swapped file cannot run code on the
workers. The manifest hash is checked first anyway, so a tampered or mismatched
file is refused by name before it is parsed.
"""
from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import platform
from typing import Dict, Optional

import numpy as np
import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

MANIFEST = 'manifest.json'
LATEST = 'LATEST'
SKOPS_TRUSTED = ['sklearn.tree._tree.Tree']


class ArtifactError(RuntimeError):
  """A model version that is missing, tampered with, or does not fit this code."""


def _join(*parts: str) -> str:
  return FileSystems.join(*parts)


def _write(path: str, data: bytes) -> None:
  with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(data)


def _read(path: str) -> bytes:
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      return f.read()
  except Exception as e:
    raise ArtifactError(f'cannot read {path}: {e}') from e


def library_versions() -> Dict[str, str]:
  import apache_beam
  import sklearn
  import skops
  return {'python': platform.python_version(), 'apache_beam': apache_beam.__version__,
          'scikit_learn': sklearn.__version__, 'numpy': np.__version__, 'skops': skops.__version__}


def save_version(model_dir: str, version: str, files: Dict[str, bytes], metadata: Dict,
                 promote: bool = True) -> str:
  """Writes the files and a manifest of their hashes; optionally points LATEST at them."""
  root = _join(model_dir, version)
  hashes = {}
  for name, data in sorted(files.items()):
    _write(_join(root, name), data)
    hashes[name] = hashlib.sha256(data).hexdigest()
  manifest = dict(metadata, version=version, files=hashes, libraries=library_versions())
  manifest.setdefault('created', datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ'))
  _write(_join(root, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
  if promote:
    _write(_join(model_dir, LATEST), (version + '\n').encode())
  return root


def resolve_version(model_dir: str, version: Optional[str] = None) -> str:
  if version:
    return version
  latest = _join(model_dir, LATEST)
  if not FileSystems.exists(latest):
    raise ArtifactError(f'no model in {model_dir}: {latest} is missing (run `postauth train`)')
  return _read(latest).decode().strip()


def load_verified(model_dir: str, version: Optional[str] = None):
  """(manifest, {name: bytes}) for a version, every file checked against the manifest."""
  version = resolve_version(model_dir, version)
  root = _join(model_dir, version)
  manifest_path = _join(root, MANIFEST)
  try:
    manifest = json.loads(_read(manifest_path))
  except ValueError as e:
    raise ArtifactError(f'{manifest_path}: not valid JSON ({e})') from e
  if manifest.get('version') != version:
    raise ArtifactError(f'{manifest_path}: names version {manifest.get("version")!r}, expected {version!r}')
  files = {}
  for name, expected in manifest.get('files', {}).items():
    path = _join(root, name)
    data = _read(path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
      raise ArtifactError(f'{path}: SHA-256 {actual} does not match the manifest ({expected}); '
                          'the file was modified or belongs to another version')
    files[name] = data
  return manifest, files


def dumps_json_gz(obj) -> bytes:
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode='wb', mtime=0) as f:
    f.write(json.dumps(obj, sort_keys=True).encode())
  return buf.getvalue()


def loads_json(data: bytes):
  """JSON from a model file; orjson (same values, ~5x faster: profiles are most of a model's
  load, and `postauth run` loads the model in its preflight check and again in the workers).
  Python's json writes NaN/Infinity, which orjson refuses: such a file is read by json."""
  try:
    return orjson.loads(data)
  except orjson.JSONDecodeError:
    return json.loads(data)


def loads_json_gz(data: bytes):
  return loads_json(gzip.decompress(data))
