"""Which of postauth's modules run compiled, and which compiled copies are older than their source.

setup.py builds the per-window modules (its ``COMPILED`` list) as C extensions with Cython; in a
source tree (`make compiled`, an editable install) they sit beside their ``.py``. Python imports
an extension before the source beside it, so a module edited after it was built would run its
old compiled copy: ``stale`` names those. The tests refuse to start on one and `postauth` warns.
An installed package (a wheel, a Dataflow worker's sdist) is built whole and never checked.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from typing import List

PACKAGES = ('domain', 'models', 'transforms', 'pipeline')


def _package_dirs() -> List[str]:
  dirs = []
  for name in PACKAGES:
    spec = importlib.util.find_spec(f'postauth.{name}')
    dirs += list(spec.submodule_search_locations or []) if spec else []
  return dirs


def extensions() -> List[str]:
  """Paths of the compiled modules (C extensions) of postauth's packages."""
  suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
  return sorted(os.path.join(d, f) for d in _package_dirs() for f in os.listdir(d) if f.endswith(suffixes))


def _in_source_tree(package_dir: str) -> bool:
  return os.path.exists(os.path.join(os.path.dirname(package_dir), 'setup.py'))


def source_of(extension: str) -> str:
  """The ``.py`` a compiled module was built from (``window.cpython-311-....so`` -> ``window.py``)."""
  return os.path.join(os.path.dirname(extension), os.path.basename(extension).split('.', 1)[0] + '.py')


def stale() -> List[str]:
  """Sources in a source tree changed since their compiled copy was built (`make compiled`)."""
  out = []
  for ext in extensions():
    source = source_of(ext)
    if (_in_source_tree(os.path.dirname(ext)) and os.path.exists(source)
        and os.path.getmtime(source) > os.path.getmtime(ext)):
      out.append(source)
  return out


def stale_message(sources: List[str]) -> str:
  names = ', '.join(os.path.relpath(s, os.path.dirname(os.path.dirname(s))) for s in sources)
  return (f'{names} changed since compiled: Python would run the old compiled copy; '
          '`make compiled` rebuilds it')
