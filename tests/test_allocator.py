"""The `postauth` command keeps the memory its bundles free for the next ones (glibc's allocator:
one arena, buffers up to 32 MiB from the heap), unless the user set glibc's parameters."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# In a fresh process after the CLI's import: whether a 4 MiB buffer was mmapped on its own
# (mallinfo2's hblks), and how many arenas malloc_stats lists once a thread has allocated.
PROBE = r'''
import ctypes, json, os, sys, threading
import postauth.pipeline.cli
libc = ctypes.CDLL('libc.so.6')
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                             'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
buffer = bytearray(4 << 20)
mmapped = libc.mallinfo2().hblks - before
kept = []
t = threading.Thread(target=lambda: kept.append(bytearray(1 << 20)))
t.start(); t.join()
r, w = os.pipe()
saved = os.dup(2); os.dup2(w, 2); libc.malloc_stats(); os.dup2(saved, 2); os.close(w)
stats = os.read(r, 1 << 16).decode()
print(json.dumps({'mmapped': mmapped, 'arenas': stats.count('Arena ')}))
'''

glibc = pytest.mark.skipif(not (hasattr(os, 'confstr') and os.confstr('CS_GNU_LIBC_VERSION') or '').startswith('glibc'),
                           reason='glibc allocator only')


def _probe(**env_extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  env.update(env_extra)
  out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_the_cli_serves_large_buffers_from_one_heap_it_keeps():
  got = _probe()
  assert got == {'mmapped': 0, 'arenas': 1}


@glibc
def test_the_users_malloc_settings_are_kept():
  # glibc's defaults, set by the user: a 4 MiB buffer mmapped, a thread with an arena of its own
  default = str(128 << 10)
  got = _probe(MALLOC_ARENA_MAX='8', MALLOC_MMAP_THRESHOLD_=default, MALLOC_TRIM_THRESHOLD_=default,
               MALLOC_TOP_PAD_=default)
  assert got['mmapped'] == 1 and got['arenas'] > 1
