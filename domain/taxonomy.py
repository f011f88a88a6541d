"""Action taxonomy: provider action -> abuse-relevant category.

The mapping is data (``taxonomy/<provider>.csv`` plus verb-prefix rules in
``taxonomy/prefixes.csv``) so a security team can review it and extend it with
its own file instead of editing code.

Agent tool calls (``otel``: OpenTelemetry ``execute_tool`` spans) are categorised by tool
name (``taxonomy/otel.csv``); which keys of a call's arguments name its target, and how a
value is reduced (``email`` -> its domain, ``url`` -> scheme and host, ``path``, ``name``),
is data too (``taxonomy/otel_arguments.csv``). A ``--taxonomy-file`` with the header
``argument,kind`` adds argument keys (tried first); one with ``provider`` rows adds tools.
"""
from __future__ import annotations

import csv
import fnmatch
import io
from importlib import resources
from typing import Dict, Iterable, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

CATEGORIES = (
    'secret_access', 'credential_create', 'privilege_change', 'config_change',
    'data_read', 'data_write', 'message_publish', 'notify', 'enumerate',
    'defense_evasion', 'resource_sharing', 'remote_execution',
    'compute_launch', 'delete', 'auth_other')

# How a tool-call argument is reduced before it is kept (transforms/formats/otel.py).
ARGUMENT_KINDS = ('email', 'url', 'path', 'name')

# Categories whose use by a non-human identity matters most to a responder.
SENSITIVE_CATEGORIES = (
    'secret_access', 'credential_create', 'privilege_change', 'config_change',
    'notify', 'message_publish', 'defense_evasion', 'resource_sharing',
    'remote_execution')

# A single event in one of these can be an incident on its own.
HIGH_IMPACT_CATEGORIES = (
    'credential_create', 'privilege_change', 'defense_evasion',
    'resource_sharing', 'remote_execution')


def _rows(text: str) -> Iterable[dict]:
  lines = [l for l in text.splitlines() if l.strip() and not l.startswith('#')]
  return csv.DictReader(io.StringIO('\n'.join(lines)))


def _package_text(name: str) -> str:
  return resources.files('postauth.domain').joinpath('taxonomy', name).read_text()


class Taxonomy:
  """Looks up categories; exact rows, then globs, then verb prefixes."""

  def __init__(self, extra_files: Optional[List[str]] = None):
    self._exact: Dict[Tuple[str, str, str], str] = {}
    self._globs: List[Tuple[str, str, str, str]] = []
    self._cache: Dict[Tuple[str, str, str], str] = {}
    self.argument_keys: List[Tuple[str, str]] = []  # (key, kind) of tool-call arguments
    for provider in ('aws', 'gcp', 'k8s', 'otel'):
      self._load_table(provider, _package_text(f'{provider}.csv'))
    self._load_arguments(_package_text('otel_arguments.csv'))
    for path in extra_files or ():  # through FileSystems: gs:// and s3:// work on workers
      with FileSystems.open(path, compression_type='uncompressed') as f:
        data = f.read().decode('utf-8-sig')
      header = next(iter(_rows(data)), {})
      if 'argument' in header and 'kind' in header:
        self._load_arguments(data, first=True)
      else:
        self._load_table(None, data)
    prefixes = [(r['verb'].lower(), r['category'])
                for r in _rows(_package_text('prefixes.csv'))]
    self._prefixes = sorted(prefixes, key=lambda p: -len(p[0]))

  def _load_arguments(self, text: str, first: bool = False) -> None:
    rows = []
    for row in _rows(text):
      kind = row['kind'].strip()
      if kind not in ARGUMENT_KINDS:
        raise ValueError(f'unknown argument kind {kind!r} in row {row} (one of {ARGUMENT_KINDS})')
      rows.append((row['argument'].strip(), kind))
    known = {k for k, _ in rows}
    rest = [r for r in self.argument_keys if r[0] not in known]
    self.argument_keys = rows + rest if first else rest + rows

  def _load_table(self, default_provider: Optional[str], text: str) -> None:
    for row in _rows(text):
      provider = row.get('provider') or default_provider or 'aws'
      category = row['category'].strip()
      if category not in CATEGORIES:
        raise ValueError(f'unknown category {category!r} in taxonomy row {row}')
      key = (provider, row['service'].strip().lower(), row['action'].strip())
      if any(c in key[1] + key[2] for c in '*?['):  # a glob in service (k8s API groups) or action
        self._globs.insert(0, (key[0], key[1], key[2].lower(), category))  # later rows override
      else:
        self._exact[key] = category
        self._exact[(key[0], key[1], key[2].lower())] = category

  def categorize(self, provider: str, service: str, action: str) -> str:
    key = (provider, service.lower(), action)
    cached = self._cache.get(key)
    if cached is not None:
      return cached
    category = (self._exact.get(key) or
                self._exact.get((provider, key[1], action.lower())) or
                self._glob(provider, key[1], action) or
                self._prefix(action))
    if len(self._cache) < 100_000:
      self._cache[key] = category
    return category

  def _glob(self, provider: str, service: str, action: str) -> Optional[str]:
    lowered = action.lower()  # case-blind like the exact rows (SetIamPolicy, setIamPolicy)
    for g_provider, g_service, pattern, category in self._globs:
      if (g_provider == provider and fnmatch.fnmatchcase(service, g_service) and
          fnmatch.fnmatchcase(lowered, pattern)):
        return category
    return None

  def _prefix(self, action: str) -> str:
    # Dotted names (GCP 'v1.compute.instances.insert') end with their verb.
    lowered = action.lower().rpartition('.')[2]
    for verb, category in self._prefixes:
      if lowered.startswith(verb):
        return category
    return 'auth_other'
