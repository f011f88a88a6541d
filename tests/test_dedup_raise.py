"""Issue 22 item 6: a fold never hides a raise. A later finding with the same reasons within
``--dedup-period`` is folded into the earlier one only when it is no more severe; a worse one is
shown on its own and pages as a first version does (medium or above), in batch and streaming."""
from __future__ import annotations

import datetime

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from conftest import streaming_options
from postauth.transforms.findings import rfc3339
from postauth.transforms.triage import DeduplicateFindings, _Deduplicator

T0 = 1_800_000_000  # aligned to 1 h
H, Q = 3600, 900
DAY = 24 * H
EPS = 1e-6

SCOPE = {'rule': 'out_of_scope', 'detail': 'ecs:UpdateService x3 outside', 'severity': 'medium',
         'actions': ['ecs:UpdateService']}
NOVEL = {'feature': 'novel_action_share', 'value': 1, 'baseline': 0, 'detail': 'never-seen actions'}


def version(fid, start, end, severity, reasons=(SCOPE, NOVEL), updates=0):
  """A finding version as MergeOverlappingWindows emits it (same identity, same reason names)."""
  reasons = list(reasons)
  return {'finding_id': fid, 'identity': 'role/ci', 'window_start': rfc3339(T0 + start),
          'window_end': rfc3339(T0 + end), 'first_detected_at': rfc3339(T0 + start + H),
          'score': 4.0, 'severity': severity, 'reasons': reasons,
          'rules': [r['rule'] for r in reasons if 'rule' in r], 'actions': {'ecs:UpdateService': 3},
          'resources': {'prod/x': 3}, 'occurrences': 1, 'updates': updates}


def _ms(f):
  return int(round(datetime.datetime.fromisoformat(f['window_end'].replace('Z', '+00:00')).timestamp() * 1000)) - 1


def view(f):
  # (id, updates, severity, occurrences, severity_raised, page, pages)
  return (f['finding_id'], f['updates'], f['severity'], f['occurrences'], f['severity_raised'], f['page'],
          f['pages'])


def walk(period, findings):
  """The unit: ``_Deduplicator.step`` once all versions are due (as the batch walk does)."""
  waiting = [(_ms(f), f) for f in findings]
  out, rest, nxt = _Deduplicator(period).step(max(t for t, _ in waiting), waiting)
  assert (rest, nxt) == ([], None)
  return [tv.value for tv in out]


# -- the case: low, then critical 3 h later, same reasons, 24 h period -------------------
LOW_THEN_CRITICAL = [version('f1', 0, H, 'low'), version('f2', 3 * H, 4 * H, 'critical')]
LOW_THEN_CRITICAL_EXPECTED = [('f1', 0, 'low', 1, False, False, 0),
                              ('f2', 0, 'critical', 1, False, True, 1)]  # shown on its own: a page


def test_a_worse_finding_is_not_folded_into_an_earlier_one_unit():
  assert [view(f) for f in walk(DAY, LOW_THEN_CRITICAL)] == LOW_THEN_CRITICAL_EXPECTED


def test_a_worse_finding_reaches_the_sinks_and_pages_batch_and_streaming():
  items = [TimestampedValue(f, _ms(f) / 1000.0) for f in LOW_THEN_CRITICAL]
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = p | beam.Create(list(reversed(items))) | DeduplicateFindings(DAY)
    assert_that(out | beam.Map(view), equal_to(LOW_THEN_CRITICAL_EXPECTED))
  stream = TestStream()
  for tv in items:
    stream = stream.add_elements([tv]).advance_watermark_to(round(float(tv.timestamp)) + 1)
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  out = p | stream.advance_watermark_to_infinity() | DeduplicateFindings(DAY)
  assert_that(out | beam.Map(view), equal_to(LOW_THEN_CRITICAL_EXPECTED))
  p.run().wait_until_finish()


# -- equal or lower severity still folds; a repeat folds into a finding severe enough -----------
MIXED = [version('f1', 0, H, 'low'),
         version('f2', 2 * H, 3 * H, 'low'),  # same severity: folded into f1
         version('f3', 3 * H, 4 * H, 'critical'),  # worse: its own finding, a page
         version('f4', 5 * H, 6 * H, 'critical'),  # as severe as f3: folded into f3, not f1
         version('f5', 7 * H, 8 * H, 'medium')]  # less severe than f3: folded (into f3, the first that covers it)
MIXED_EXPECTED = [('f1', 0, 'low', 1, False, False, 0),
                  ('f1', 1, 'low', 2, False, False, 0),
                  ('f3', 0, 'critical', 1, False, True, 1),
                  ('f3', 1, 'critical', 2, False, False, 1),
                  ('f3', 2, 'critical', 3, False, False, 1)]


def test_equal_or_lower_severity_repeats_still_fold_without_a_page_unit():
  assert [view(f) for f in walk(DAY, MIXED)] == MIXED_EXPECTED


def test_equal_or_lower_severity_repeats_still_fold_without_a_page_batch():
  items = [TimestampedValue(f, _ms(f) / 1000.0) for f in MIXED]
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = p | beam.Create(list(reversed(items))) | DeduplicateFindings(DAY)
    assert_that(out | beam.Map(view), equal_to(MIXED_EXPECTED))


def test_an_equal_severity_repeat_folds_with_a_count_and_no_page():
  rows = walk(DAY, [version('f1', 0, H, 'medium'), version('f2', 3 * H, 4 * H, 'medium')])
  assert [view(f) for f in rows] == [('f1', 0, 'medium', 1, False, True, 1),
                                     ('f1', 1, 'medium', 2, False, False, 1)]
  assert rows[-1]['occurrence_ids'] == ['f2']


def test_a_repeat_folds_into_a_finding_whose_update_raised_it():
  # f1 raised to high by its own update: a high repeat is no raise over what the sinks show
  rows = walk(DAY, [version('f1', 0, H, 'low'), version('f1', 0, H + Q, 'high', updates=1),
                    version('f2', 3 * H, 4 * H, 'high')])
  assert [view(f) for f in rows] == [('f1', 0, 'low', 1, False, False, 0),
                                     ('f1', 1, 'high', 1, True, True, 1),
                                     ('f1', 2, 'high', 2, False, False, 1)]


# -- an update of a folded finding that is worse than its host leaves the fold ------------------
UPDATE_RAISED = [version('f1', 0, H, 'low'),
                 version('f2', 3 * H, 4 * H, 'low'),  # folded into f1
                 version('f2', 3 * H, 4 * H + Q, 'low', updates=1),  # still a repeat: f1 lasts longer
                 version('f2', 3 * H, 4 * H + 2 * Q, 'critical', updates=2)]  # worse: leaves the fold
UPDATE_RAISED_EXPECTED = [('f1', 0, 'low', 1, False, False, 0),
                          ('f1', 1, 'low', 2, False, False, 0),
                          ('f1', 2, 'low', 2, False, False, 0),
                          ('f1', 3, 'low', 1, False, False, 0),  # f2's count leaves f1
                          ('f2', 0, 'critical', 1, False, True, 1)]  # first shown: a page


def test_an_update_worse_than_its_host_leaves_the_fold_and_pages_unit():
  rows = walk(DAY, UPDATE_RAISED)
  assert [view(f) for f in rows] == UPDATE_RAISED_EXPECTED
  assert 'occurrence_ids' not in rows[3] and 'last_occurrence' not in rows[3]


def test_an_update_worse_than_its_host_leaves_the_fold_and_pages_batch():
  items = [TimestampedValue(f, _ms(f) / 1000.0) for f in UPDATE_RAISED]
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = p | beam.Create(list(reversed(items))) | DeduplicateFindings(DAY)
    assert_that(out | beam.Map(view), equal_to(UPDATE_RAISED_EXPECTED))


def test_an_older_version_a_window_short_arriving_last_is_stale_not_the_latest():
  """Two versions of one run a window apart, with the same end and events (the extra window added
  no event): if the runner delivers the newer one first, the older one adds nothing and is
  dropped, so the newer stays the latest version the sinks hold."""
  newer = dict(version('f1', 0, 5 * H, 'low', updates=18), windows=19, event_count=172)
  older = dict(version('f1', 0, 5 * H, 'low', updates=17), windows=18, event_count=172)
  dedup = _Deduplicator(6 * H)
  out, _, _ = dedup.step(_ms(newer), [(_ms(newer), newer)])
  assert [tv.value['windows'] for tv in out] == [19]
  out, _, _ = dedup.step(_ms(older), [(_ms(older), older)])
  assert out == []  # stale: before, it became the latest version, a window short
