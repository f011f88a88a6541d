"""The compiled modules (setup.py ``COMPILED``, docs/compiled.md): built where `make` builds them,
and never run stale. (That they find what pure Python finds: tests/test_packaging.py.)"""
from __future__ import annotations

import importlib
import importlib.machinery
import os
import runpy
import subprocess
import sys

import setuptools
from conftest import require_compiled_modules

from postauth.pipeline import compiled

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _listed(monkeypatch):
  monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: None)
  monkeypatch.chdir(ROOT)
  return runpy.run_path(os.path.join(ROOT, 'setup.py'), run_name='setup')['COMPILED']


def test_every_listed_module_runs_compiled(monkeypatch):
  """A module whose build failed stays pure Python without a word (``optional=True``): here, it
  fails."""
  require_compiled_modules()
  pure = []
  for path in _listed(monkeypatch):
    module = importlib.import_module('postauth.' + path[:-len('.py')].replace('/', '.'))
    if not module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
      pure.append(path)
  assert not pure, f'listed in setup.py COMPILED but imported as Python: {pure}'


def test_a_source_edited_after_its_build_is_named_and_the_cli_warns():
  require_compiled_modules()
  ext = compiled.extensions()[0]
  source = compiled.source_of(ext)
  before = os.stat(source)
  try:
    os.utime(source, (before.st_atime, os.path.getmtime(ext) + 10))
    assert compiled.stale() == [source]
    out = subprocess.run([sys.executable, '-m', 'postauth.pipeline.cli', 'rollback', '--help'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'changed since compiled' in out.stderr and os.path.basename(source) in out.stderr
  finally:
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
  assert compiled.stale() == []
