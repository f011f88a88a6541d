"""A finding version's JSON line: ``json.dumps(finding, sort_keys=True)``, byte for byte.

A finding's versions repeat most of what they carry: each names up to 20 evidence records and
a line per window it spans, and the versions of one finding share those objects (the merge
makes a record once while its event is in the pool: domain/evidence_pool.py; a bundle's
versions are shuffled as one list, which keeps them shared: transforms/timer_walk.py). On a
day's batch run 28,000 evidence records are written for ~3,000 distinct ones. ``VersionLines``
renders each shared record or window line once and joins the texts, which is what
``json.dumps`` would write for them; everything else goes through ``json.dumps`` itself.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

from postauth.transforms.compact import VersionLine

SHARED = ('evidence', 'window_actions')  # lists of dicts that versions of a finding share
MAX_REMEMBERED = 8192  # rendered parts kept (each pins its object); all dropped when full


_ENCODE = json.JSONEncoder(sort_keys=True).encode  # what json.dumps(x, sort_keys=True) calls


def finding_line(finding: Dict) -> str:
  return _ENCODE(finding)


class VersionLines:
  """finding version -> its ``VersionLine``, the line exactly ``finding_line``'s.

  The line is the finding's keys in order, ``", "``-joined: the keys between the shared ones
  are written by the encoder a run at a time (a dict of them, braces dropped), each shared
  list from the remembered texts of its parts. A part's text is remembered by object (its
  ``id``, the object kept alive beside it so the id cannot be reused), per instance: a step's
  own, never process-wide. Parts are never changed once a version is made.
  """

  def __init__(self):
    self._texts: Dict[int, Tuple[Any, str]] = {}

  def __call__(self, finding: Dict) -> VersionLine:
    return VersionLine.of(finding, self.line(finding))

  def __getstate__(self):
    return {}

  def __setstate__(self, state):
    self.__init__()

  def line(self, finding: Dict) -> str:
    if any(not isinstance(finding.get(k, []), list) for k in SHARED) or any(not isinstance(k, str) for k in finding):
      return finding_line(finding)  # not the shape a version has: as json.dumps writes it
    pieces: List[str] = []
    run: Dict[str, Any] = {}
    for key in sorted(finding):
      if key in SHARED:
        if run:
          pieces.append(_ENCODE(run)[1:-1])
          run = {}
        pieces.append(_ENCODE(key) + ': [' + ', '.join(self._text(x) for x in finding[key]) + ']')
      else:
        run[key] = finding[key]
    if run:
      pieces.append(_ENCODE(run)[1:-1])
    return '{' + ', '.join(pieces) + '}'

  def _text(self, part: Any) -> str:
    kept = self._texts.get(id(part))
    if kept is not None and kept[0] is part:
      return kept[1]
    if len(self._texts) >= MAX_REMEMBERED:
      self._texts.clear()
    text = _ENCODE(part)
    self._texts[id(part)] = (part, text)
    return text
