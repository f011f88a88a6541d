"""The model registry: versions in a model directory, which one is live, and how it got there.

Over Beam ``FileSystems``, so a local directory, ``gs://`` or ``s3://`` behave
the same. Layout (``models.artifact`` writes the versions):

- ``MODEL_DIR/<version>/manifest.json``: one per version (hashes, summary, ``created``).
- ``MODEL_DIR/LATEST``: the promoted version; scoring jobs read it.
- ``MODEL_DIR/HISTORY.jsonl``: one JSON line per promotion or rollback, oldest
  first ({"time", "action", "version", "previous", "reason"}), so a rollback
  knows what was live before.

Promotion writes the pointer to a temporary name and renames it over LATEST: a
single atomic rename on local and POSIX filesystems; on GCS and S3 the rename is
a copy of one small object, and an object is replaced whole, so a reader sees
the old or the new version, never a torn one. HISTORY.jsonl is rewritten the
same way (object stores cannot append). LATEST is written first: if the process
dies before HISTORY is updated, the live version is still the one LATEST names
and the history treats it as an unrecorded promotion. One writer at a time:
schedule retraining so that runs do not overlap.

The promotion stack: replaying HISTORY, a promotion pushes a version, a
rollback pops back to its target, so rolling back twice goes two promotions
back (not back and forth).
"""
from __future__ import annotations

import datetime
import json
import logging
import uuid
from typing import Dict, List, Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from postauth.models import artifact

HISTORY = 'HISTORY.jsonl'
_log = logging.getLogger('postauth.registry')


class RegistryError(artifact.ArtifactError):
  """A registry operation that cannot be done (unknown version, nothing to roll back to)."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:12]}'
  with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(data)
  try:
    FileSystems.rename([tmp], [path])
  except Exception:
    # A filesystem that refuses to rename onto an existing name: replace, then retry once.
    if FileSystems.exists(path):
      FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def current(model_dir: str) -> Optional[str]:
  """The promoted version (LATEST), or None when nothing was promoted yet."""
  path = FileSystems.join(model_dir, artifact.LATEST)
  if not FileSystems.exists(path):
    return None
  return artifact._read(path).decode().strip() or None


def history(model_dir: str) -> List[Dict]:
  path = FileSystems.join(model_dir, HISTORY)
  if not FileSystems.exists(path):
    return []
  out = []
  for i, line in enumerate(artifact._read(path).decode().splitlines()):
    if line.strip():
      try:
        out.append(json.loads(line))
      except ValueError as e:
        raise RegistryError(f'{path}:{i + 1}: not valid JSON ({e})') from e
  return out


def promotion_stack(model_dir: str, entries: Optional[List[Dict]] = None) -> List[str]:
  """Versions that were live, oldest first, the live one last (see module doc)."""
  stack: List[str] = []
  for e in history(model_dir) if entries is None else entries:
    version = e.get('version')
    if e.get('action') == 'rollback' and version in stack:
      del stack[len(stack) - stack[::-1].index(version):]
    elif not stack or stack[-1] != version:
      stack.append(version)
  live = current(model_dir)
  if live and (not stack or stack[-1] != live):
    stack.append(live)  # LATEST written by hand, by an old `postauth train`, or before a crash
  return stack


def _manifest(model_dir: str, version: str) -> Optional[Dict]:
  path = FileSystems.join(model_dir, version, artifact.MANIFEST)
  try:
    return json.loads(artifact._read(path))
  except (artifact.ArtifactError, ValueError):
    return None


def list_versions(model_dir: str) -> List[Dict]:
  """Every version directory with its manifest summary, newest first."""
  pattern = FileSystems.join(model_dir, '*', artifact.MANIFEST)
  try:
    found = FileSystems.match([pattern])[0].metadata_list
  except Exception:  # no match at all raises on some filesystems
    found = []
  live = current(model_dir)
  stack = promotion_stack(model_dir)
  out = []
  for meta in found:
    version = meta.path.rstrip('/').split('/')[-2]
    m = _manifest(model_dir, version)
    if m is None:
      out.append({'version': version, 'error': 'manifest unreadable'})
      continue
    created = m.get('created') or datetime.datetime.fromtimestamp(
        meta.last_updated_in_seconds, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    out.append({
        'version': version,
        'created': created,
        'promoted': version == live,
        'was_promoted': version in stack,
        'training_window': m.get('training_window'),
        'cohorts': m.get('cohorts'),
        'training_windows': (m.get('counts') or {}).get('training_windows'),
        'identities': (m.get('counts') or {}).get('identities'),
        'team_cohorts': (m.get('hyperparameters') or {}).get('team_cohorts', False),
        'report': 'report.json' in (m.get('files') or {}),
    })
  out.sort(key=lambda v: (v.get('created') or '', v['version']), reverse=True)
  return out


def _record(model_dir: str, entry: Dict) -> None:
  entries = history(model_dir) + [entry]
  data = ''.join(json.dumps(e, sort_keys=True) + '\n' for e in entries).encode()
  _write_atomic(FileSystems.join(model_dir, HISTORY), data)


def promote(model_dir: str, version: str, reason: str = '', action: str = 'promote',
            details: Optional[Dict] = None) -> Dict:
  """Points LATEST at ``version`` after verifying every file of it; records it in HISTORY."""
  artifact.load_verified(model_dir, version)  # refuses a missing or tampered version by name
  previous = current(model_dir)
  entry = {'time': _now(), 'action': action, 'version': version, 'previous': previous,
           'reason': reason}
  if details:
    entry['details'] = details
  if previous == version:
    entry['unchanged'] = True
    return entry
  _write_atomic(FileSystems.join(model_dir, artifact.LATEST), (version + '\n').encode())
  _record(model_dir, entry)
  _log.info('%s %s (was %s)', action, version, previous)
  return entry


def _exists(model_dir: str, version: str) -> bool:
  return FileSystems.exists(FileSystems.join(model_dir, version, artifact.MANIFEST))


def rollback_target(model_dir: str) -> Optional[str]:
  """The version live before the current one that still exists, or None."""
  stack = promotion_stack(model_dir)
  live = stack[-1] if stack else None
  for version in reversed(stack[:-1]):
    if version != live and _exists(model_dir, version):
      return version
  return None


def rollback(model_dir: str, to: Optional[str] = None, reason: str = '') -> Dict:
  """Promotes the previously live version (or ``to``), recording it as a rollback."""
  live = current(model_dir)
  target = to or rollback_target(model_dir)
  if target is None:
    raise RegistryError(f'{model_dir}: nothing to roll back to (promotion history: '
                        f'{promotion_stack(model_dir)})')
  if not _exists(model_dir, target):
    raise RegistryError(f'{FileSystems.join(model_dir, target)}: no such version')
  return promote(model_dir, target, reason or f'rollback from {live}', action='rollback')


def _delete_version(model_dir: str, version: str) -> None:
  root = FileSystems.join(model_dir, version)
  paths = [m.path for m in FileSystems.match([FileSystems.join(root, '*')])[0].metadata_list]
  manifest = FileSystems.join(root, artifact.MANIFEST)
  # The manifest goes last: a version interrupted mid-delete is still visible and is retried.
  rest = [p for p in paths if p != manifest]
  if rest:
    FileSystems.delete(rest)
  if FileSystems.exists(manifest):
    FileSystems.delete([manifest])
  if FileSystems.exists(root):  # local directories; object stores have no directory object
    FileSystems.delete([root])


def prune(model_dir: str, keep: int) -> List[str]:
  """Deletes all but the ``keep`` newest versions; never the live one or its rollback target."""
  if keep < 1:
    raise RegistryError('keep must be >= 1')
  versions = list_versions(model_dir)
  protected = {current(model_dir), rollback_target(model_dir)}
  kept = {v['version'] for v in versions[:keep]} | protected
  deleted = []
  for v in versions:
    if v['version'] not in kept:
      _delete_version(model_dir, v['version'])
      deleted.append(v['version'])
  if deleted:
    _log.info('pruned %d versions of %s: %s', len(deleted), model_dir, ', '.join(deleted))
  return deleted
