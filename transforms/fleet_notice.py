"""One notice per fleet change: many identities starting the same new call on the same day.

A release rolls a new call out to a share of a team's or a type's identities: each of
them shows a never-seen action, and paging for each would bury the on-call responder.
This step counts, per peer group (identity type, and team), UTC day and newly made action,
the identities that made it for the first time (against their own history before that
day), and when enough of them did (``min_identities``, and ``MIN_SHARE`` of a type's
identities in the model),
emits *one* low-severity finding that names the change and the identities. A
high-impact change made by many identities at once (keys created everywhere) is one
medium finding: one page, not one per identity.

Aggregates only: a ``CombinePerKey`` over daily event-time windows, keyed by
(peer group, action), so it scales out like the rest of the job.
"""
from __future__ import annotations

import typing
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils import shared

from postauth.domain import evidence
from postauth.domain.evidence import FIELDS, MAX_EVIDENCE
from postauth.domain.origin import network_of
from postauth.transforms.corroborate import fleet_change_id
from postauth.transforms.findings import rfc3339
from postauth.transforms.versions import first_version
from postauth.transforms.model_cache import acquire_model
from postauth.transforms.timer_walk import in_global_window
from postauth.transforms.window_context import windows_of
from postauth.domain.taxonomy import HIGH_IMPACT_CATEGORIES

NOTICE = 'fleet_change'
DAY = 86400
MIN_SHARE = 0.10  # of the type's identities in the model
MAX_KEPT = 10000  # identities kept per change (a fleet-wide change names at most this many)
LISTED = 8  # identities named in the notice's words (all are in ``identities``)


@beam.typehints.with_output_types(typing.Tuple[typing.Tuple[str, str, int], typing.Any])
class NewActionsFn(beam.DoFn):
  """WindowInContext (or an identity's list of them, batch) -> ((peer group, action, day),
  (identity, calls, category, start, end)) per new action.

  Peer groups are the identity's type (``type:service_account``) and its team
  (``team:payments``): releases roll out per service type and per team. Only
  identities with history of their own count: a new identity's every call is new.
  """

  def __init__(self):
    self.sightings = Metrics.counter('postauth', 'fleet_new_action_sightings')

  def process(self, element):
    for item in windows_of(element):
      yield from self._new_actions(item)

  def _new_actions(self, item):
    history = item.history
    if history is None or not history.windows:
      return
    agg = item.window.agg
    groups = [f'type:{item.context.get("identity_type", "") or agg.identity_type}']
    if item.context.get('team'):
      groups.append(f'team:{item.context["team"]}')
    day = int((item.window.window_end - 1e-6) // DAY)  # the UTC day of the window's last instant
    for action in history.unseen('actions', agg.actions):
      first = (agg.evidence.get('a' + action) or [None])[0]  # its first event, for the notice's evidence
      seen = (item.window.identity, agg.actions[action], agg.action_category.get(action, ''),
              item.window.window_start, item.window.window_end, first)
      for group in groups:
        self.sightings.inc()
        yield (group, action, day), seen


class AdoptersFn(beam.CombineFn):
  """New-action sightings -> {identity: calls}, the category, and the span they cover."""

  def create_accumulator(self):
    return {'identities': {}, 'category': '', 'start': float('inf'), 'end': float('-inf'), 'samples': {}}

  def add_input(self, acc, element):
    identity, calls, category, start, end, sample = element
    ids = acc['identities']
    if identity in ids or len(ids) < MAX_KEPT:
      ids[identity] = max(ids.get(identity, 0), calls)  # overlapping windows count a call more than once
      _keep_first(acc['samples'], identity, sample)
    acc['category'] = acc['category'] or category
    acc['start'] = min(acc['start'], start)
    acc['end'] = max(acc['end'], end)
    return acc

  def merge_accumulators(self, accs):
    accs = iter(accs)
    out = next(accs)
    for a in accs:
      for identity, calls in a['identities'].items():
        if identity in out['identities'] or len(out['identities']) < MAX_KEPT:
          out['identities'][identity] = max(out['identities'].get(identity, 0), calls)
          _keep_first(out.setdefault('samples', {}), identity, (a.get('samples') or {}).get(identity))
      out['category'] = out['category'] or a['category']
      out['start'], out['end'] = min(out['start'], a['start']), max(out['end'], a['end'])
    return out

  def extract_output(self, acc):
    return acc


def _keep_first(samples: Dict, identity: str, sample) -> None:
  """Keeps the earliest event sample per identity (ties by event id): exact under merging."""
  if sample is None:
    return
  kept = samples.get(identity)
  if kept is None or (sample[1], sample[0]) < (kept[1], kept[0]):
    samples[identity] = tuple(sample)


def _evidence(adopters: Dict) -> List[Dict]:
  """One event per adopter (the first of the new call), with the log's own id."""
  out = []
  for identity, s in sorted((adopters.get('samples') or {}).items())[:MAX_EVIDENCE]:
    ev = dict(zip(FIELDS, s))
    ev['network'] = network_of(ev['source_ip'])
    ev['new'] = ['action']
    out.append(dict(evidence.public(ev, NOTICE), identity=identity))
  return out


def notice(group: str, action: str, adopters: Dict, day_start: float, model_version: str,
           type_size: int) -> Dict:
  """The fleet-change finding for ``adopters`` of ``action`` in peer ``group`` ("type:T" or "team:T")."""
  kind, _, name = group.partition(':')
  identity_type = name if kind == 'type' else ''
  team = name if kind == 'team' else ''
  who = f'{identity_type or "unknown-type"} identities' if kind == 'type' else f'identities of team {team}'
  ids = sorted(adopters['identities'])
  n = len(ids)
  category = adopters['category']
  # One page for a high-impact change across a type (a campaign or a risky rollout), at high;
  # the same change seen by team is a low notice (one fleet event, one page), as is any other
  # change: its adopters' findings name it and stay low.
  severity = 'high' if category in HIGH_IMPACT_CATEGORIES and kind == 'type' else 'low'
  day = rfc3339(day_start)[:10]
  names = ', '.join(i.rsplit('/', 1)[-1] for i in ids[:LISTED]) + (f' and {n - LISTED} more' if n > LISTED else '')
  share = f' of {type_size}' if type_size else ''
  detail = (f'{n}{share} {who} made {action} ({category or "?"}) '
            f'for the first time on {day}: a fleet change (a rollout or a new feature) rather than {n} '
            f'separate anomalies: {names}')
  calls = sum(adopters['identities'].values())
  start, end = adopters['start'], adopters['end']
  return {
      'finding_id': fleet_change_id(group, action, int(day_start // DAY)),
      'kind': NOTICE,
      'identity': f'fleet:{group}',
      'identity_type': identity_type,
      'window_start': rfc3339(start),
      'window_end': rfc3339(end),
      'score': 0.0,
      'score_components': {},
      'severity': severity,
      'severity_basis': {'detected': severity, 'fleet_change': f'{n} identities'},
      'model_version': model_version,
      'cohort': group,
      'reasons': [{'rule': NOTICE, 'severity': severity, 'actions': [action], 'detail': detail}],
      'rules': [NOTICE],
      'actions': {action: calls},
      'resources': {},
      'event_count': calls,
      'windows': n,
      'peak_window': [rfc3339(start), rfc3339(end)],
      'owner': '', 'team': team, 'environment': '', 'criticality': '',
      'registered': True,
      'occurrences': 1,
      'identities': ids,
      'evidence': _evidence(adopters),
      'page_basis': {'evidence': [NOTICE] if severity != 'low' else [], 'shareable': [], 'change': []},
      'first_detected_at': rfc3339(day_start + DAY),  # the day closes: when the notice is emitted
      **first_version(severity),
  }


class NoticeFn(beam.DoFn):
  """((identity_type, action), adopters) of one day -> a fleet-change finding when enough adopted it."""

  def __init__(self, model_dir: Optional[str], version: Optional[str], min_identities: int,
               shared_handle: Optional[shared.Shared] = None):
    self._model_dir = model_dir
    self._version = version
    self._min = min_identities
    self._shared = shared_handle or shared.Shared()
    self.notices = Metrics.counter('postauth', 'findings_fleet_change')
    self.candidates = Metrics.counter('postauth', 'fleet_change_candidates')

  def setup(self):
    model = acquire_model(self._shared, self._model_dir, self._version) if self._model_dir else None
    self._sizes = dict(model.fleet.identities) if model is not None else {}
    self._model_version = model.version if model is not None else ''

  def process(self, kv):
    (group, action, day), adopters = kv
    self.candidates.inc()
    n = len(adopters['identities'])
    kind, _, name = group.partition(':')
    size = self._sizes.get(name, 0) if kind == 'type' else 0  # team sizes are not in the model
    if n < self._min or n < MIN_SHARE * size:
      return
    self.notices.inc()
    yield notice(group, action, adopters, float(day * DAY), self._model_version, size)


class FleetChangeNotices(beam.PTransform):
  """WindowInContext -> fleet-change findings (global window), one per peer group, day and new action."""

  def __init__(self, model_dir: Optional[str], version: Optional[str] = None, min_identities: int = 3,
               shared_handle: Optional[shared.Shared] = None, allowed_lateness: int = 0):
    super().__init__()
    self._fn = NoticeFn(model_dir, version, min_identities, shared_handle)
    self._lateness = allowed_lateness

  def expand(self, windows):
    # The day is in the key. Streaming also closes each day with an event-time window (a late
    # window within the lateness still joins its day, which then fires again); batch combines
    # in the global window: the batch history walk stamps windows with their own (earlier)
    # times after a global GroupByKey, which a runner that tracks watermarks in batch too
    # (Prism) would count as late for a day window, and drop.
    # (Bounded input in the global window fires once: no step is needed for it.)
    actions = windows | 'NewActions' >> beam.ParDo(NewActionsFn())
    if windows.is_bounded:
      daily = in_global_window(actions, 'Daily', self._lateness)
    else:
      # accumulating: a late window re-fires its day with every adopter, not only the late
      # one, so the notice is updated (same finding_id) rather than replaced by a partial one
      daily = actions | 'Daily' >> beam.WindowInto(
          window.FixedWindows(DAY), allowed_lateness=self._lateness,
          accumulation_mode=trigger.AccumulationMode.ACCUMULATING)
    notices = (daily
               | 'AdoptersPerAction' >> beam.CombinePerKey(AdoptersFn())
               | 'Notice' >> beam.ParDo(self._fn))
    return in_global_window(notices, 'NoticesGlobal')
