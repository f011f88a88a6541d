"""Case-insensitive glob patterns ("ecr:*", "s3:Get*"), as an inventory declares an identity's
expected services and actions and the services that may speak for an agent.

Caches, not state (like ``fnmatch``'s own): an inventory declares a few pattern lists, and the
rules ask about every call of every window, which an identity's windows repeat.
"""
from __future__ import annotations

import fnmatch
import functools
import re
from typing import Callable, Dict, List, Tuple

MAX_ANSWERS = 4096  # values remembered per pattern list; beyond it, all forgotten


def matches_any(value: str, patterns: List[str]) -> bool:
  """``fnmatchcase`` of the lowered value against any lowered pattern."""
  return bool(patterns) and matcher(tuple(patterns))(value)


@functools.lru_cache(maxsize=1 << 10)
def matcher(patterns: Tuple[str, ...]) -> Callable[[str], bool]:
  """``matches_any(value, patterns)`` as a function of the value, remembering its answers."""
  match = _globs(patterns)
  answers: Dict[str, bool] = {}

  def matches(value: str) -> bool:
    known = answers.get(value)
    if known is None:
      if len(answers) >= MAX_ANSWERS:
        answers.clear()
      known = answers[value] = match(value.lower()) is not None
    return known
  return matches


@functools.lru_cache(maxsize=1 << 12)
def _globs(patterns: Tuple[str, ...]):
  """One compiled alternation of the patterns' ``fnmatch.translate``: one match call per value."""
  return re.compile('|'.join(fnmatch.translate(p.lower()) for p in patterns)).match
