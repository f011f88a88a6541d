"""Versions of a finding: the first emission, its updates, and which of them page.

A finding is emitted when its first anomalous window closes and re-emitted, under
the same ``finding_id``, each time it grows (a later window of its run, a late
window, a repeat folded into it). Every version carries:

- ``updates``: how many versions came before it (0 for the first): the latest
  version of a finding is the one with the highest ``updates``;
- ``severity_raised``: its severity is above the previous version's;
- ``page``: it should page a responder: a first version at medium or above, or an
  update whose raise crosses into a higher paging tier (see ``PAGE_TIERS``); an
  update at the same or a lower severity is not a page, and neither is a raise
  within a tier (medium -> high: the responder already paged for this finding
  sees the new severity on the update, ``severity_raised`` says so);
- ``pages``: the pages of this finding so far, this version included.

``stamp`` keeps these counters for what actually reached the findings sinks
(after suppression and deduplication), so a finding that was first held back
and then shown pages when it is first shown.
"""
from __future__ import annotations

from typing import Dict, Optional

RANK = {'low': 0, 'medium': 1, 'high': 2, 'critical': 3}  # as transforms/findings.py
PAGE_LEVEL = RANK['medium']
# Paging tiers: low does not page; medium and high page once; critical escalates.
# Early emission (issue 16) sends a finding when its first window closes, often one
# step below where the whole run ends; paging on every raise would page the same
# responder twice for one incident (seeds 7-9: 28 -> 35 pages on 28 attacks).
PAGE_TIERS = {'low': 0, 'medium': 1, 'high': 1, 'critical': 2}


def higher(a: str, b: str) -> str:
  return a if RANK.get(a, -1) >= RANK.get(b, -1) else b


def version_flags(previous: Optional[str], severity: str) -> Dict:
  """``severity_raised`` and ``page`` of a version at ``severity`` after one at ``previous`` (None: first)."""
  if previous is None:
    return {'severity_raised': False, 'page': RANK.get(severity, 0) >= PAGE_LEVEL}
  raised = RANK.get(severity, 0) > RANK.get(previous, 0)
  new_tier = PAGE_TIERS.get(severity, 0) > PAGE_TIERS.get(previous, 0)
  return {'severity_raised': raised, 'page': raised and new_tier and RANK.get(severity, 0) >= PAGE_LEVEL}


def first_version(severity: str) -> Dict:
  """The version fields of a finding's first emission."""
  flags = version_flags(None, severity)
  return {'updates': 0, 'pages': int(flags['page']), **flags}


def stamp(sent: Dict[str, Dict], finding: Dict, now: float) -> Dict:
  """``finding`` numbered as the next version of what ``sent`` (finding_id -> counters) says
  the sinks already have; ``sent`` is updated. Severity never goes down between versions."""
  fid = finding['finding_id']
  prev = sent.get(fid)
  if prev is None:
    severity = finding['severity']
    flags = version_flags(None, severity)
    out = dict(finding, updates=0, pages=int(flags['page']), **flags)
  else:
    severity = higher(prev['severity'], finding['severity'])
    flags = version_flags(prev['severity'], severity)
    out = dict(finding, severity=severity, updates=prev['updates'] + 1,
               pages=prev['pages'] + int(flags['page']), **flags)
  sent[fid] = {'severity': severity, 'updates': out['updates'], 'pages': out['pages'], 'seen': now}
  return out


def version_rank(finding: Dict) -> tuple:
  """Orders the versions of one finding: the latest is the greatest."""
  return (int(finding.get('updates', 0) or 0), int(finding.get('occurrences', 1) or 1),
          finding.get('window_end', ''))


def is_update(finding: Dict) -> bool:
  return int(finding.get('updates', 0) or 0) > 0
