"""What responders see: allow-listed reasons suppressed (and counted), repeats deduplicated.

Suppression: an allow-list file of entries ``{"identity", "rule", "action",
"resource", "expires", "reason"}`` (globs; ``rule`` matches a rule or feature
name; ``expires`` is RFC 3339, compared with the finding's event time so a
replay judges as the live job did). A reason is suppressed when an unexpired
entry matches it; a finding whose every reason is suppressed goes to the
``suppressed`` output, with the entries that matched, instead of disappearing.

Deduplication: a finding whose reasons were all reported for the same identity
within ``period`` is folded into the earlier finding: the earlier finding is
re-emitted with the same ``finding_id`` and a higher ``occurrences`` count (sinks
keep the latest version per id), so a responder gets one alert, not one per hour.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import typing
from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer

SUPPRESSED = 'suppressed'


def _epoch(rfc3339: str) -> float:
  return datetime.datetime.fromisoformat(rfc3339.replace('Z', '+00:00')).timestamp()


class AllowEntry(typing.NamedTuple):
  identity: str
  rule: str
  action: str
  resource: str
  expires: float
  reason: str

  def matches(self, finding: Dict, r: Dict) -> bool:
    if finding_end(finding) >= self.expires:
      return False
    if not fnmatch.fnmatchcase(finding['identity'], self.identity):
      return False
    if not fnmatch.fnmatchcase(r.get('rule') or r.get('feature', ''), self.rule):
      return False
    if self.action:
      actions = r.get('actions') or list(finding.get('actions', {}))
      if not actions or not all(fnmatch.fnmatchcase(a.lower(), self.action.lower()) for a in actions):
        return False
    if self.resource:
      resources = r.get('resources') or list(finding.get('resources', {}))
      if not resources or not all(fnmatch.fnmatchcase(x, self.resource) for x in resources):
        return False
    return True


def finding_end(finding: Dict) -> float:
  return _epoch(finding['window_end'])


def load_allowlist(path: Optional[str]) -> List[AllowEntry]:
  """Entries from a JSON list or JSON lines file; each needs ``expires`` and ``reason``."""
  if not path:
    return []
  with FileSystems.open(path, compression_type='uncompressed') as f:
    text = f.read().decode('utf-8')
  stripped = text.strip()
  rows = json.loads(stripped) if stripped.startswith('[') else [
      json.loads(l) for l in stripped.splitlines() if l.strip()]
  entries = []
  for n, row in enumerate(rows, 1):
    if not isinstance(row, dict) or not row.get('expires') or not row.get('reason'):
      raise ValueError(f'{path}: entry {n} needs at least "expires" and "reason": {row!r}'[:300])
    entries.append(AllowEntry(row.get('identity') or '*', row.get('rule') or '*',
                              row.get('action') or '', row.get('resource') or '',
                              _epoch(row['expires']), row['reason']))
  return entries


def apply_allowlist(finding: Dict, entries: List[AllowEntry]) -> Dict:
  """The finding with matching reasons moved to ``suppressed_reasons``."""
  if not entries:
    return finding
  kept, suppressed = [], []
  for r in finding['reasons']:
    entry = next((e for e in entries if e.matches(finding, r)), None)
    if entry is None:
      kept.append(r)
    else:
      suppressed.append(dict(r, suppressed_by=entry.reason))
  if not suppressed:
    return finding
  out = dict(finding, reasons=kept, suppressed_reasons=suppressed)
  out['rules'] = sorted({r['rule'] for r in kept if 'rule' in r})
  return out


class _SuppressFn(beam.DoFn):
  def __init__(self, path: Optional[str]):
    self._path = path
    self.suppressed = Metrics.counter('postauth', 'findings_suppressed')
    self.partly = Metrics.counter('postauth', 'findings_partly_suppressed')

  def setup(self):
    self._entries = load_allowlist(self._path)

  def process(self, finding: Dict):
    out = apply_allowlist(finding, self._entries)
    if out is finding:
      yield finding
    elif out['reasons']:
      self.partly.inc()
      yield out
    else:
      self.suppressed.inc()
      yield beam.pvalue.TaggedOutput(SUPPRESSED, out)


class Suppress(beam.PTransform):
  """Findings -> findings (main) and wholly allow-listed findings (``suppressed``)."""

  def __init__(self, allowlist_path: Optional[str]):
    super().__init__()
    self._path = allowlist_path

  def expand(self, findings):
    return findings | 'ApplyAllowList' >> beam.ParDo(_SuppressFn(self._path)).with_outputs(
        SUPPRESSED, main='findings')


def reason_keys(finding: Dict) -> frozenset:
  """What makes two findings of an identity repeats: their rules and features; for a
  fleet-change notice the change itself (two new calls in one team are two changes)."""
  return frozenset(_reason_key(r) for r in finding['reasons'])


def _reason_key(r: Dict) -> str:
  key = r.get('rule') or r.get('feature', '')
  if key == 'fleet_change':
    return key + ':' + ','.join(r.get('actions') or [])
  return key


class _DedupFn(beam.DoFn):
  """(identity, finding) -> new findings, and earlier findings re-emitted with their new count.

  Findings are buffered and handled in event-time order on a watermark timer,
  so batch (any arrival order) and streaming give the same result.
  """

  PENDING = BagStateSpec('pending', PickleCoder())
  REPORTED = ReadModifyWriteStateSpec('reported', PickleCoder())
  FLUSH = TimerSpec('flush', TimeDomain.WATERMARK)

  def __init__(self, period_seconds: float):
    self._period = period_seconds
    self.folded = Metrics.counter('postauth', 'findings_deduplicated')

  def process(self, kv, ts=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
              flush=beam.DoFn.TimerParam(FLUSH)):
    pending.add(kv[1])
    flush.set(ts)

  @on_timer(FLUSH)
  def flush(self, pending=beam.DoFn.StateParam(PENDING), reported=beam.DoFn.StateParam(REPORTED)):
    items = sorted(pending.read(), key=lambda f: (f['window_start'], f['finding_id']))
    pending.clear()
    if not items:
      return
    known: List[Dict[str, Any]] = reported.read() or []
    emit: Dict[str, Dict] = {}
    for f in items:
      start = _epoch(f['window_start'])
      keys = reason_keys(f)
      original = next((k for k in known if keys and keys <= k['keys']
                       and start - k['last'] <= self._period
                       and k['finding']['finding_id'] != f['finding_id']), None)
      if original is None:
        known.append({'keys': keys, 'last': _epoch(f['window_end']), 'finding': f})
        emit[f['finding_id']] = f
        continue
      self.folded.inc()
      base = original['finding']
      updated = dict(base, occurrences=base.get('occurrences', 1) + f.get('occurrences', 1),
                     last_occurrence=f['window_end'],
                     occurrence_ids=(base.get('occurrence_ids') or []) + [f['finding_id']])
      original['finding'] = updated
      original['last'] = max(original['last'], _epoch(f['window_end']))
      emit[updated['finding_id']] = updated
    horizon = max(k['last'] for k in known) - self._period
    reported.write([k for k in known if k['last'] >= horizon])
    for f in emit.values():
      yield f


class DeduplicateFindings(beam.PTransform):
  """Findings -> one finding per identity and reason set within ``period_seconds``."""

  def __init__(self, period_seconds: float):
    super().__init__()
    self._period = period_seconds

  def expand(self, findings):
    if self._period <= 0:
      return findings
    return (findings
            | 'GlobalWindow' >> beam.WindowInto(window.GlobalWindows())
            | 'KeyByIdentity' >> beam.Map(lambda f: (f['identity'], f)).with_output_types(
                typing.Tuple[str, typing.Any])
            | 'FoldRepeats' >> beam.ParDo(_DedupFn(self._period)))
