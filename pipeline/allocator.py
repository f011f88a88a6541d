"""glibc's allocator, set for a `postauth` process before its threads start.

A job's process reads whole files, builds bundles of encoded elements and frees them again: buffers
of hundreds of KiB to MiB, allocated and freed bundle after bundle. glibc serves each one above its
mmap threshold with a fresh ``mmap`` and returns it with ``munmap``, and gives the top of its heap
back once 128 KiB are free there, so the next bundle faults every page in again (~86k page faults
over a day's batch job beyond a 200-event one). On a portable runner (Prism) the bundles run on
the SDK harness's threads, each with an arena of its own that glibc grows a page at a time
(~10k ``mprotect`` calls a day). Here the process keeps what it freed for its next bundle:

* one arena (``M_ARENA_MAX``): the job's Python threads take turns under the GIL anyway;
* buffers up to 32 MiB come from the heap (``M_MMAP_THRESHOLD``), which is given back above
  128 MiB free (``M_TRIM_THRESHOLD``) and grows 16 MiB at a time (``M_TOP_PAD``). glibc's own
  dynamic thresholds move towards these (up to 32 MiB, trimming at twice that) as large
  buffers are freed, one size at a time; here they hold from the start.

A parameter the user set (glibc's ``MALLOC_*_`` environment variables) is kept. Nothing happens
where the C library is not glibc. It is the CLI process's setting: workers a runner starts
elsewhere (Dataflow, Flink) keep their own allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Dict

# mallopt's parameter numbers (malloc.h), with the environment variable glibc reads for each.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
SETTINGS = {
    M_ARENA_MAX: ('MALLOC_ARENA_MAX', 1),
    M_MMAP_THRESHOLD: ('MALLOC_MMAP_THRESHOLD_', 32 << 20),
    M_TRIM_THRESHOLD: ('MALLOC_TRIM_THRESHOLD_', 128 << 20),
    M_TOP_PAD: ('MALLOC_TOP_PAD_', 16 << 20),
}


def _glibc() -> bool:
  try:
    return os.confstr('CS_GNU_LIBC_VERSION').startswith('glibc')
  except (AttributeError, ValueError, OSError):  # not a GNU C library
    return False


def keep_freed_memory() -> Dict[str, int]:
  """Sets the parameters above that the environment does not; returns those set (by variable
  name). Call before the process starts threads: an arena a thread already has stays its own."""
  if not _glibc():
    return {}
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
  except (OSError, AttributeError):
    return {}
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  done = {}
  for param, (variable, value) in SETTINGS.items():
    if variable not in os.environ and mallopt(param, value) == 1:
      done[variable] = value
  return done
