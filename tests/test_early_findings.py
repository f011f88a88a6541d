"""Issue 16: a finding at its first anomalous window, then updates under the same id (batch and
TestStream), pages on first emission and severity raises only, late windows update (issue 13),
dedup and suppression through updates, sinks keep the latest version."""
from __future__ import annotations

import json
import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from conftest import streaming_options
from postauth.transforms.compact import VersionLine, compact_findings, latest_lines, latest_of, versions_path
from postauth.transforms.findings import MergeOverlappingWindows, finding_id, rfc3339
from postauth.transforms.outputs import apply_sinks
from postauth.transforms.sink_records import finding_from_avro, finding_to_avro
from postauth.transforms.sink_uris import FINDING, SinkSpec
from postauth.transforms.pubsub_sink import finding_message
from postauth.transforms.triage import DeduplicateFindings, Suppress
from postauth.transforms.versions import stamp

T0 = 1_800_000_000  # aligned to 1 h
H, Q = 3600, 900
EPS = 1e-6


def scored(start, severity='low', score=3.2, identity='svc-a', feature='novel_resources', panes=1):
  """A scored window as ScoreWindows emits it (stamped just before its end)."""
  s = T0 + start
  return TimestampedValue({
      'identity': identity, 'window_start': s, 'window_end': s + H, 'score': score,
      'score_forest': score, 'score_rarity': 0.0, 'model_flagged': True, 'severity': severity,
      'model_version': 'v1', 'cohort': 'api_key',
      'reasons': [{'feature': feature, 'value': 1, 'baseline': 0, 'detail': f'{feature} at {start}'}],
      'rules': [], 'actions': {'s3:GetObject': panes}, 'resources': {f'b/{start}': panes},
      'panes': {str(s + k * Q): panes for k in range(4)}, 'event_count': 4 * panes,
      'context': {'identity_type': 'api_key', 'owner': 'o', 'team': 't', 'environment': 'prod'}},
      s + H - EPS)


# A run of three overlapping windows whose severity grows, then a separate run hours later.
RUN = [scored(0, 'low', 3.2), scored(Q, 'medium', 4.2), scored(2 * Q, 'high', 5.3), scored(3 * Q, 'high', 5.1)]
LATER = [scored(8 * H, 'medium', 4.1)]


def view(f):
  return (f['finding_id'], f['updates'], f['window_end'], f['event_count'], f['severity'],
          f['severity_raised'], f['page'], f['pages'], f['first_detected_at'])


def expected_versions():
  fid = finding_id('svc-a', T0, T0 + H)
  first = rfc3339(T0 + H)
  later = finding_id('svc-a', T0 + 8 * H, T0 + 9 * H)
  return [
      (fid, 0, rfc3339(T0 + H), 4, 'low', False, False, 0, first),  # emitted at its first window
      (fid, 1, rfc3339(T0 + H + Q), 5, 'medium', True, True, 1, first),  # raised to medium: a page
      # raised within the paging tier (medium -> high): says so, but pages no one twice
      (fid, 2, rfc3339(T0 + H + 2 * Q), 6, 'high', True, False, 1, first),
      (fid, 3, rfc3339(T0 + H + 3 * Q), 7, 'high', False, False, 1, first),  # same severity: no page
      (later, 0, rfc3339(T0 + 9 * H), 4, 'medium', False, True, 1, rfc3339(T0 + 9 * H)),
  ]


def test_batch_emits_the_first_window_then_updates_in_event_time_order():
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = (p | beam.Create(list(reversed(RUN + LATER)))  # any arrival order

           | MergeOverlappingWindows(H))
    assert_that(out | beam.Map(view), equal_to(expected_versions()))


def _stream(windows, lateness=0, late=()):
  """Each window arrives as the watermark reaches its end; ``late`` ones after a jump."""
  stream = TestStream()
  for w in windows:
    stream = stream.add_elements([w]).advance_watermark_to(w.value['window_end'])
  if late:
    stream = stream.advance_watermark_to(T0 + 3 * H).add_elements(list(late))
  return stream.advance_watermark_to_infinity()


def test_streaming_emits_each_version_when_its_window_closes_and_equals_batch():
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  out = (p | _stream(RUN + LATER) | MergeOverlappingWindows(H)
         | beam.Map(lambda f, ts=beam.DoFn.TimestampParam: (view(f), float(ts))))
  # each version leaves at the end of the window that made it: the first at T0 + 1 h, not when
  # the run closes (T0 + 2 h 45 min + 1 h)
  ends = [T0 + H, T0 + H + Q, T0 + H + 2 * Q, T0 + H + 3 * Q, T0 + 9 * H]
  assert_that(out, equal_to([(v, e - EPS) for v, e in zip(expected_versions(), ends)]))
  p.run().wait_until_finish()


def test_a_late_window_within_the_lateness_updates_the_emitted_finding():
  # the run's second window is re-scored after late events (more panes, higher severity) once
  # the watermark has passed the run; within the allowed lateness it updates the same finding.
  late = scored(Q, 'critical', 7.0, panes=3)
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  out = p | _stream(RUN[:2], late=[late]) | MergeOverlappingWindows(H, allowed_lateness=2 * H)
  fid = finding_id('svc-a', T0, T0 + H)

  def check(rows):
    rows = sorted(rows, key=lambda f: f['updates'])
    assert [f['finding_id'] for f in rows] == [fid] * 3
    assert [f['updates'] for f in rows] == [0, 1, 2]
    assert rows[2]['severity'] == 'critical' and rows[2]['severity_raised'] and rows[2]['page']
    assert rows[2]['event_count'] == 1 + 3 * 4  # the pane before it, and its four panes now x3
    assert rows[2]['first_detected_at'] == rows[0]['first_detected_at'] == rfc3339(T0 + H)

  assert_that(out, check)
  p.run().wait_until_finish()


def test_a_late_window_beyond_the_lateness_does_not_reopen_the_finding():
  late = scored(Q, 'critical', 7.0, panes=3)
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  out = p | _stream(RUN[:2], late=[late]) | MergeOverlappingWindows(H, allowed_lateness=0)
  assert_that(out | beam.Map(lambda f: (f['finding_id'], f['updates'])),
              equal_to([(finding_id('svc-a', T0, T0 + H), 0), (finding_id('svc-a', T0, T0 + H), 1),
                        (finding_id('svc-a', T0 + Q, T0 + H + Q), 0)]))
  p.run().wait_until_finish()


# -- dedup and suppression through updates --------------------------------------------------
def version(fid, start, end, severity, reasons, updates=0):
  return {'finding_id': fid, 'identity': 'role/ci', 'window_start': rfc3339(T0 + start),
          'window_end': rfc3339(T0 + end), 'first_detected_at': rfc3339(T0 + start + H),
          'score': 4.0, 'severity': severity, 'reasons': reasons,
          'rules': [r['rule'] for r in reasons if 'rule' in r], 'actions': {'ecs:UpdateService': 3},
          'resources': {'prod/x': 3}, 'occurrences': 1, 'updates': updates}


SCOPE = {'rule': 'out_of_scope', 'detail': 'ecs:UpdateService x3 outside', 'severity': 'medium',
         'actions': ['ecs:UpdateService']}
NOVEL = {'feature': 'novel_action_share', 'value': 1, 'baseline': 0, 'detail': 'never-seen actions'}


def _triage_input():
  return [version('f1', 0, H, 'low', [SCOPE]),
          version('f1', 0, H + Q, 'medium', [SCOPE], 1),  # raised: a page
          version('f1', 0, H + 2 * Q, 'medium', [SCOPE], 2),  # same severity: an update, no page
          version('f2', 3 * H, 4 * H, 'medium', [SCOPE]),  # a repeat of f1: folded
          version('f2', 3 * H, 4 * H + Q, 'high', [SCOPE, NOVEL], 1)]  # adds a reason: shown, a page


def _triage_expected():
  # (id, updates, severity, occurrences, page, pages)
  return [('f1', 0, 'low', 1, False, 0), ('f1', 1, 'medium', 1, True, 1), ('f1', 2, 'medium', 1, False, 1),
          ('f1', 3, 'medium', 2, False, 1),  # f2 folded into f1
          ('f1', 4, 'medium', 1, False, 1),  # f2 no longer a repeat: its count leaves f1
          ('f2', 0, 'high', 1, True, 1)]


def _triage_view(f):
  return (f['finding_id'], f['updates'], f['severity'], f['occurrences'], f['page'], f['pages'])


def json_time(text):
  import datetime
  return datetime.datetime.fromisoformat(text.replace('Z', '+00:00')).timestamp()


def test_dedup_numbers_versions_and_never_folds_an_update_into_nothing_batch_and_streaming():
  items = [TimestampedValue(f, json_time(f['window_end']) - EPS) for f in _triage_input()]
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = (p | beam.Create(list(reversed(items)))
 | DeduplicateFindings(6 * H))
    assert_that(out | beam.Map(_triage_view), equal_to(_triage_expected()))
  stream = TestStream()
  for tv in items:
    stream = stream.add_elements([tv]).advance_watermark_to(round(float(tv.timestamp)))
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  out = p | stream.advance_watermark_to_infinity() | DeduplicateFindings(6 * H)
  assert_that(out | beam.Map(_triage_view), equal_to(_triage_expected()))
  p.run().wait_until_finish()


def test_without_dedup_versions_are_still_numbered():
  items = [TimestampedValue(f, json_time(f['window_end']) - EPS) for f in _triage_input()]
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = p | beam.Create(items) | DeduplicateFindings(0)
    assert_that(out | beam.Map(lambda f: (f['finding_id'], f['updates'], f['page'])),
                equal_to([('f1', 0, False), ('f1', 1, True), ('f1', 2, False), ('f2', 0, True),
                         ('f2', 1, False)]))  # medium -> high: raised within the tier, no second page


def test_a_suppressed_finding_stays_suppressed_through_its_updates(tmp_path):
  allow = tmp_path / 'allow.jsonl'
  # expires after the finding was first emitted but before its updates' window_end
  allow.write_text(json.dumps({'identity': 'role/*', 'rule': 'out_of_scope', 'expires': rfc3339(T0 + H + 60),
                               'reason': 'CHG-7 migration'}) + '\n')
  updates = [version('f1', 0, H, 'medium', [SCOPE]), version('f1', 0, H + Q, 'medium', [SCOPE], 1),
             version('f1', 0, 3 * H, 'high', [SCOPE], 2)]
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = p | beam.Create(updates + [version('f3', 0, 3 * H, 'medium', [SCOPE, NOVEL])]) | Suppress(str(allow))
    assert_that(out.suppressed | beam.Map(lambda f: (f['finding_id'], f['updates'])),
                equal_to([('f1', 0), ('f1', 1), ('f1', 2)]), label='suppressed')
    assert_that(out.findings | beam.Map(lambda f: f['finding_id']), equal_to(['f3']), label='kept')


def test_stamp_never_lowers_severity():
  sent = {}
  a = stamp(sent, version('f', 0, H, 'high', [SCOPE]), T0)
  b = stamp(sent, version('f', 0, H + Q, 'medium', [SCOPE]), T0 + Q)
  assert (a['page'], b['page'], b['severity'], b['updates'], b['pages']) == (True, False, 'high', 1, 1)


def test_a_raise_pages_when_it_crosses_a_paging_tier_only():
  # low does not page; medium and high page once; critical escalates: a second page
  sent = {}
  rows = [stamp(sent, version('f', 0, H + i * Q, sev, [SCOPE], i), T0 + i * Q)
          for i, sev in enumerate(['low', 'medium', 'high', 'critical', 'critical'])]
  assert [(f['severity_raised'], f['page'], f['pages']) for f in rows] == [
      (False, False, 0), (True, True, 1), (True, False, 1), (True, True, 2), (False, False, 2)]


# -- sinks ----------------------------------------------------------------------------------
def test_batch_file_sink_writes_the_latest_version_and_every_version(tmp_path):
  path = str(tmp_path / 'findings.jsonl')
  with beam.Pipeline(runner='FnApiRunner') as p:
    found = (p | beam.Create(list(reversed(RUN + LATER)))

             | MergeOverlappingWindows(H) | DeduplicateFindings(6 * H))
    apply_sinks(found, [SinkSpec('jsonl', path, path)], FINDING, False, PipelineOptions([]), 'W')
  with open(path) as f:
    latest = [json.loads(l) for l in f]
  with open(versions_path(path)) as f:
    every = [json.loads(l) for l in f]
  assert versions_path(path).endswith('findings.versions.jsonl')
  assert sorted((f['finding_id'], f['updates']) for f in latest) == sorted(
      (v[0], v[1]) for v in expected_versions() if v[1] == 3 or v[0] != expected_versions()[0][0])
  assert len(every) == 5 and sum(f['page'] for f in every) == 2
  by_id = {f['finding_id']: f for f in latest}
  assert by_id[finding_id('svc-a', T0, T0 + H)]['pages'] == 1


def test_streaming_parts_compact_to_the_latest_version_per_id(tmp_path):
  path = str(tmp_path / 'findings.jsonl')
  os.makedirs(path + '.parts')
  rows = [dict(version('f1', 0, H, 'low', [SCOPE]), updates=0),
          dict(version('f1', 0, H + Q, 'medium', [SCOPE]), updates=1),
          dict(version('f2', 3 * H, 4 * H, 'medium', [SCOPE]), updates=0)]
  # the later version of f1 is in the earlier part file: the rank decides, not the line order
  with open(path + '.parts/a.jsonl', 'w') as f:
    f.write(json.dumps(rows[1]) + '\n' + json.dumps(rows[2]) + '\n')
  with open(path + '.parts/b.jsonl', 'w') as f:
    f.write(json.dumps(rows[0]) + '\n')
  assert compact_findings(path) == {'findings': 2, 'versions': 3}
  with open(path) as f:
    latest = {d['finding_id']: d['updates'] for d in map(json.loads, f)}
  assert latest == {'f1': 1, 'f2': 0}
  with open(versions_path(path)) as f:
    assert [(d['finding_id'], d['updates']) for d in map(json.loads, f)] == [('f1', 0), ('f1', 1), ('f2', 0)]
  latest_only, _ = latest_lines([json.dumps(r) for r in rows])
  assert [json.loads(l)['updates'] for l in latest_only] == [1, 0]


def test_a_batch_file_step_orders_version_entries_as_it_would_their_parsed_lines():
  # ranks tie (f1's two versions with the same updates and occurrences), detection times tie
  # (f2 and f3) and the first-seen order differs from the time order: the line order decides
  rows = [dict(version('f1', 0, H, 'low', [SCOPE]), updates=0, occurrences=2),
          dict(version('f1', 0, H + Q, 'medium', [SCOPE]), updates=1),
          dict(version('f1', 0, H + Q, 'high', [SCOPE]), updates=1),
          dict(version('f3', 3 * H, 4 * H, 'medium', [SCOPE]), updates=0),
          dict(version('f2', 3 * H, 4 * H, 'low', [SCOPE]), updates=0)]
  rows[3]['first_detected_at'] = rows[4]['first_detected_at'] = '2000-01-01T00:00:00Z'
  lines = sorted(json.dumps(r, sort_keys=True) for r in rows)
  entries = sorted(VersionLine.of(r, json.dumps(r, sort_keys=True)) for r in rows)
  assert [e.line for e in entries] == lines
  assert latest_of(entries) == latest_lines(lines)
  latest, ordered = latest_of(entries)
  assert [json.loads(l)['severity'] for l in latest if json.loads(l)['finding_id'] == 'f1'] == ['medium']
  assert len(ordered) == 5 and [json.loads(l)['finding_id'] for l in ordered][:2] == ['f2', 'f3']


def test_pubsub_message_says_update_and_page_and_avro_keeps_the_version_fields():
  f = dict(version('f1', 0, H + Q, 'high', [SCOPE], 2), page=True, severity_raised=True, pages=2,
           kind='anomaly', identity_type='api_key', score_components={}, model_version='v', cohort='c',
           event_count=5, windows=2, peak_window=[], owner='', team='', environment='', criticality='',
           registered=True)
  _, attrs = finding_message(f)
  assert (attrs['update'], attrs['page'], attrs['severity_raised'], attrs['updates']) == ('true', 'true', 'true', '2')
  _, attrs = finding_message(dict(f, updates=0, page=False, severity_raised=False))
  assert (attrs['update'], attrs['page']) == ('false', 'false')
  back = finding_from_avro(finding_to_avro(f))
  assert (back['first_detected_at'], back['updates'], back['page'], back['pages']) == (
      f['first_detected_at'], 2, True, 2)


def test_evaluate_reads_the_latest_version_time_to_first_detection_and_pages():
  from postauth.pipeline import evaluate as ev
  label = {'identity': 'role/ci', 'scenario': 'burst', 'start': rfc3339(T0 + 600), 'end': rfc3339(T0 + 2 * H)}
  v0 = dict(version('f1', 0, H, 'medium', [SCOPE]), pages=1)
  v1 = dict(version('f1', 0, 2 * H, 'high', [SCOPE], 1), pages=2)  # a raise: a second page
  false = dict(version('f9', 0, H, 'medium', [SCOPE]), identity='role/other', pages=1)
  r = ev.evaluate([v1, v0, false], [label], identity_days=1000)  # a versions log, in any order
  s = r['scenarios'][0]
  assert r['findings'] == 2 and s['findings'] == 1
  assert s['time_to_detect_s'] == H - 600  # first_detected_at (T0 + 1 h) - the attack's start
  assert s['time_to_final_s'] == 2 * H - 600 and s['pages'] == 2
  assert r['pages']['pages'] == 1 and r['pages']['pages_all'] == 3
  assert r['time_to_detect'] == {'detected': 1, 'median_s': H - 600, 'max_s': H - 600,
                                 'median_final_s': 2 * H - 600}


def test_a_version_older_than_the_one_shown_is_dropped_not_numbered_as_the_latest():
  """A runner may fire the merge's timers out of order (the BundleBasedDirectRunner after an idle
  watermark jump): an older version arriving after a newer one must not become the latest."""
  newer = dict(version('f1', 0, 3 * H, 'medium', [SCOPE]), event_count=9)
  older = dict(version('f1', 0, 2 * H, 'medium', [SCOPE]), event_count=5)
  first = dict(version('f1', 0, H, 'medium', [SCOPE]), event_count=3)
  items = [TimestampedValue(first, json_time(first['window_end']) - EPS),
           TimestampedValue(newer, json_time(newer['window_end']) - EPS),
           TimestampedValue(older, json_time(newer['window_end']) + 60)]  # arrives after the newer
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = p | beam.Create(items) | DeduplicateFindings(0)
    assert_that(out | beam.Map(lambda f: (f['updates'], f['window_end'], f['event_count'])),
                equal_to([(0, first['window_end'], 3), (1, newer['window_end'], 9)]))
