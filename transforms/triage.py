"""What responders see: allow-listed reasons suppressed (and counted), repeats deduplicated.

Suppression: an allow-list file of entries ``{"identity", "rule", "action", "resource",
"expires", "reason"}`` (globs; ``rule`` matches a rule or feature name; ``expires`` is RFC 3339,
compared with when the finding was first emitted (``first_detected_at``, the same for all its
versions) so a replay judges as the live job did). A reason is suppressed when an unexpired
entry matches it; a finding whose every reason is suppressed goes to the ``suppressed`` output,
with the entries that matched, instead of disappearing.

Deduplication: a finding whose reasons were all reported for the same identity within
``period``, at the same or a lower severity, is folded into the earlier finding: the earlier
finding is re-emitted with the same ``finding_id`` and a higher ``occurrences`` count (sinks
keep the latest version per id), so a responder gets one alert, not one per hour. A fold never
hides a raise: a finding more severe than the one it would be folded into is shown on its own,
and pages as any first version does (medium or above). Updates of one finding (same
``finding_id``) are its versions, not repeats; the dedup step numbers what reaches the sinks
(transforms/versions.py).
"""
from __future__ import annotations

import datetime
import fnmatch
import functools
import json
import typing
from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue

from postauth.transforms.earliest_pending import EarliestPending
from postauth.transforms.packed import PackedStateCoder
from postauth.transforms.timer_walk import at_ms, in_global_window, per_identity, timer_ms
from postauth.transforms.versions import RANK, stamp

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
    if finding_time(finding) >= self.expires:
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


def finding_time(finding: Dict) -> float:
  """When the finding was first emitted: the same for all its versions, so an entry that
  suppressed a finding keeps suppressing its updates (``window_end`` grows with them)."""
  return _epoch(finding.get('first_detected_at') or finding['window_end'])


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


class _Deduplicator:
  """(identity, finding version) -> versions for the sinks: new findings, their updates, and
  earlier findings re-emitted with their new count; each numbered by ``versions.stamp``.

  Versions wait for the watermark (a timer at the earliest) and are handled in
  event-time order, each on its own, so batch (any arrival order) and streaming
  emit the same versions. An update of a finding is a version, never a repeat:
  it replaces the finding it updates. An update of a finding folded as a repeat
  stays folded while it adds no new reason and is no more severe than that finding;
  once it adds one or is more severe, it is shown on its own (and its count leaves the
  finding it was folded into). Invariant: a fold never hides a raise; a finding (or an
  update of one) is folded only into a finding at least as severe, so a worse finding
  reaches the sinks as its own first version and pages there at medium or above. Held
  in state by the streaming DoFn, in local variables by the batch walk.

  State is bounded in event time: an entry (a finding shown, a finding's counters) is kept
  for ``retention`` after it last grew; the streaming DoFn sets a timer at ``expiry()`` that
  drops it (``expire``), so an identity that never fires again leaves nothing behind. Each
  step first drops what has expired by ``now``: exactly what those timers did before it, so
  batch (whose walk needs no expiry timer: its state ends with the walk) and streaming decide
  from the same state at every step. A new finding folds only into one that last grew
  within the dedup period before its start, so with ``retention`` >= the period plus a window
  (defaults: 6 h + 1 h <= 24 h) expiry never changes what folds.
  """

  def __init__(self, period_seconds: float, retention_seconds: float = 86400.0):
    self._period = period_seconds
    self._retention = max(retention_seconds, period_seconds)
    self.known: List[Dict[str, Any]] = []
    self.sent: Dict[str, Dict] = {}
    self.folded = Metrics.counter('postauth', 'findings_deduplicated')
    self.stale = Metrics.counter('postauth', 'finding_versions_stale')
    self.expired = Metrics.counter('postauth', 'dedup_state_expired')

  def step(self, now: int, waiting: List):
    """(versions for the sinks, (ms, finding) still waiting, next timer in ms or None)."""
    due = sorted((x for x in waiting if x[0] <= now),
                 key=lambda x: (x[0], x[1]['window_start'], x[1].get('updates', 0), x[1]['finding_id']))
    rest = [x for x in waiting if x[0] > now]
    out = []
    self.expire(now)
    if due:
      known, sent = self.known, self.sent
      for ms, f in due:
        for version in self._handle(known, f):
          out.append(TimestampedValue(stamp(sent, version, ms / 1000.0), at_ms(ms)))
      if known:
        horizon = max(k['last'] for k in known) - self._retention
        known = [k for k in known if k['last'] >= horizon]
      newest = max(v['seen'] for v in sent.values()) if sent else 0.0
      self.known = known
      self.sent = {k: v for k, v in sent.items() if v['seen'] >= newest - self._retention}
    return out, rest, min(t for t, _ in rest) if rest else None

  def _until(self, t: float) -> int:
    """The last timer time (ms) at which state that last grew at ``t`` is kept."""
    return timer_ms(t + self._retention)

  def expiry(self):
    """When the oldest entry is due to go (ms), or None when nothing is kept."""
    times = [self._until(k['last']) for k in self.known] + [self._until(v['seen']) for v in self.sent.values()]
    return min(times) + 1 if times else None

  def expire(self, now: int) -> None:
    """Drops what has not grown for ``retention`` by ``now`` (the expiry timer's work)."""
    known = [k for k in self.known if self._until(k['last']) >= now]
    sent = {f: v for f, v in self.sent.items() if self._until(v['seen']) >= now}
    self.expired.inc(len(self.known) - len(known) + len(self.sent) - len(sent))
    self.known, self.sent = known, sent

  def _handle(self, known: List[Dict[str, Any]], f: Dict) -> Iterable[Dict]:
    """The versions ``f`` sends to the sinks (none when it is a repeat adding nothing)."""
    fid = f['finding_id']
    keys = reason_keys(f)
    shown = next((k for k in known if k['finding']['finding_id'] == fid), None)
    if shown is not None:  # an update of a finding already shown: it replaces it
      base = shown['finding']
      if _growth(f) < _growth(base):
        # A version older than the one shown (a runner that fires the merge's timers out of
        # order, e.g. after an idle watermark jump): versions grow, so it adds nothing.
        self.stale.inc()
        return
      updated = dict(f, occurrences=base.get('occurrences', 1))
      for field in ('last_occurrence', 'occurrence_ids'):
        if base.get(field):
          updated[field] = base[field]
      shown.update(finding=updated, keys=keys, own=f['window_end'])
      _refresh(shown)
      yield shown['finding']
      return
    host = next((k for k in known if fid in (k['finding'].get('occurrence_ids') or [])), None)
    if host is not None:
      if keys <= host['keys'] and self._covers(host, f):
        # still a repeat: the finding it was folded into may last longer
        before = host['finding'].get('last_occurrence')
        host['ends'][fid] = f['window_end']
        _refresh(host)
        if host['finding'].get('last_occurrence') != before:
          yield host['finding']
        return
      # no longer a repeat (a new reason, or worse than the finding it was folded into):
      # its count and its span leave that finding
      self.folded.dec()  # the counter says how many findings end folded
      del host['ends'][fid]
      host['finding'] = dict(host['finding'], occurrences=host['finding']['occurrences'] - 1,
                             occurrence_ids=[i for i in host['finding']['occurrence_ids'] if i != fid])
      _refresh(host)
      yield host['finding']
    start = _epoch(f['window_start'])
    original = (None if self._period <= 0 else
                next((k for k in known if keys and keys <= k['keys'] and start - k['last'] <= self._period
                      and k['finding']['finding_id'] != fid and self._covers(k, f)), None))
    if original is None:
      known.append({'keys': keys, 'last': _epoch(f['window_end']), 'finding': f,
                    'own': f['window_end'], 'ends': {}})
      yield f
      return
    self.folded.inc()
    base = original['finding']
    original['finding'] = dict(base, occurrences=base.get('occurrences', 1) + f.get('occurrences', 1),
                               occurrence_ids=(base.get('occurrence_ids') or []) + [fid])
    original['ends'][fid] = f['window_end']
    _refresh(original)
    yield original['finding']

  def _covers(self, entry: Dict[str, Any], f: Dict) -> bool:
    """Whether ``f`` may be folded into ``entry``'s finding: it is no more severe than that
    finding as the sinks have it (``stamp`` never lowers a finding's severity), so a fold
    never hides a raise."""
    host = entry['finding']
    shown = (self.sent.get(host['finding_id']) or {}).get('severity')
    return RANK.get(f.get('severity'), 0) <= max(RANK.get(host.get('severity'), 0), RANK.get(shown, 0))


def _growth(f: Dict) -> tuple:
  """How far a version has grown: end, events, windows, then the merge's own version count."""
  return f['window_end'], f.get('event_count', 0), f.get('windows', 0), f.get('updates', 0)


def _refresh(entry: Dict[str, Any]) -> None:
  """An entry's reach (its own end or its latest repeat's) and its ``last_occurrence``."""
  ends = entry.setdefault('ends', {})
  own = entry.setdefault('own', entry['finding']['window_end'])
  entry['last'] = _epoch(max([own] + list(ends.values())))
  finding = dict(entry['finding'])
  if ends:
    finding['last_occurrence'] = max(ends.values())
  else:
    finding.pop('last_occurrence', None)
  if not finding.get('occurrence_ids'):
    finding.pop('occurrence_ids', None)  # as a finding that never had a repeat
  entry['finding'] = finding


class _DedupFn(beam.DoFn):
  """Streaming: (identity, finding version) -> versions for the sinks; ``_Deduplicator`` in state,
  a timer at the earliest waiting version and one at the state's expiry."""

  PENDING = BagStateSpec('pending', PackedStateCoder())
  REPORTED = ReadModifyWriteStateSpec('reported', PackedStateCoder())
  SENT = ReadModifyWriteStateSpec('sent', PickleCoder())
  FLUSH = TimerSpec('flush', TimeDomain.WATERMARK)
  EXPIRE = TimerSpec('expire', TimeDomain.WATERMARK)

  def __init__(self, period_seconds: float, retention_seconds: float = 86400.0):
    self._period = period_seconds
    self._retention = retention_seconds

  def setup(self):
    self._dedup = _Deduplicator(self._period, self._retention)
    self._earliest = EarliestPending(lambda x: x[0])

  def start_bundle(self):
    self._earliest.start_bundle()

  def process(self, kv, ts=beam.DoFn.TimestampParam, pending=beam.DoFn.StateParam(PENDING),
              flush=beam.DoFn.TimerParam(FLUSH)):
    flush.set(at_ms(self._earliest.add(kv[0], pending, (timer_ms(ts), kv[1]))))  # ms, as timers carry them

  @on_timer(FLUSH)
  def flush(self, fired=beam.DoFn.TimestampParam, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING),
            reported=beam.DoFn.StateParam(REPORTED), sent_state=beam.DoFn.StateParam(SENT),
            flush=beam.DoFn.TimerParam(FLUSH), expire=beam.DoFn.TimerParam(EXPIRE)):
    dedup, waiting = self._dedup, list(pending.read())
    dedup.known, dedup.sent = reported.read() or [], sent_state.read() or {}
    out, rest, nxt = dedup.step(fired.micros // 1000, waiting)
    self._earliest.rewrite(key, pending, rest)
    if nxt is not None:
      flush.set(at_ms(nxt))
    self._keep(dedup, reported, sent_state, expire)
    yield from out

  @on_timer(EXPIRE)
  def expire(self, fired=beam.DoFn.TimestampParam, reported=beam.DoFn.StateParam(REPORTED),
             sent_state=beam.DoFn.StateParam(SENT), expire=beam.DoFn.TimerParam(EXPIRE)):
    dedup = self._dedup
    dedup.known, dedup.sent = reported.read() or [], sent_state.read() or {}
    dedup.expire(fired.micros // 1000)
    self._keep(dedup, reported, sent_state, expire)

  @staticmethod
  def _keep(dedup: _Deduplicator, reported, sent_state, expire) -> None:
    """Writes what is kept (empty cells cleared) and sets the timer at its expiry."""
    reported.write(dedup.known) if dedup.known else reported.clear()
    sent_state.write(dedup.sent) if dedup.sent else sent_state.clear()
    until = dedup.expiry()
    if until is not None:
      expire.set(at_ms(until))


def _new_deduplicator(period_seconds: float, retention_seconds: float):
  return _Deduplicator(period_seconds, retention_seconds).step


def _walk_start(stamped: List) -> Tuple[List, int]:
  """Batch: the (ms, finding) versions waiting, and the first flush (the earliest version's)."""
  return stamped, min(t for t, _ in stamped)


class DeduplicateFindings(beam.PTransform):
  """Findings -> one finding per identity and reason set within ``period_seconds``, every
  version numbered for the sinks (``updates``, ``page``: transforms/versions.py). A finding
  more severe than the one it repeats is not folded but shown (and pages) on its own: a fold
  never hides a raise. With a period of 0 nothing is folded; versions are still numbered."""

  def __init__(self, period_seconds: float, retention_seconds: float = 86400.0):
    super().__init__()
    self._period = period_seconds
    self._retention = retention_seconds

  def expand(self, findings):  # one PCollection, or several (deduplicated together)
    globally = in_global_window(findings, 'GlobalWindow')
    return per_identity(globally, functools.partial(_new_deduplicator, self._period, self._retention),
                        _walk_start, _DedupFn(self._period, self._retention), 'WalkRepeats', 'FoldRepeats')
