"""Issue 4: inventory sources and refresh, per-identity history (batch == streaming == training),
deterministic rules, suppression and deduplication."""
from __future__ import annotations

import csv
import functools
import json

import apache_beam as beam
import fastavro
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from postauth.models.features import feature_vector
from postauth.models.fleet import FleetProfile
from postauth.models.history import IdentityHistory
from postauth.models.profile import IdentityProfile
from postauth.pipeline.train import WalkIdentityHistory
from postauth.transforms import rules
from postauth.domain.window import WindowAggregate
from postauth.domain.event import Event
from postauth.transforms.findings import contextual_severity, rfc3339
from postauth.transforms.history import TrackHistory
from postauth.transforms.inventory import (EnrichWindows, InventoryError, newest, normalise, read_inventory,
                                  read_snapshot, snapshot_of)
from postauth.transforms.updates import _ReadNow
from postauth.transforms.triage import DeduplicateFindings, Suppress, apply_allowlist, load_allowlist
from postauth.transforms.windowing import EPSILON, IdentityWindow

DAY = 86400
T0 = 1_800_000_000 - 1_800_000_000 % DAY  # midnight UTC
HEADER = ['identity', 'identity_type', 'owner', 'team', 'environment', 'criticality',
          'expected_services', 'expected_actions', 'status']


def ev(identity, t, service='s3', action='GetObject', category='data_read', resource='b/k',
       ip='10.0.0.1', ok=True):
  return Event(f'{identity}-{t}-{action}', float(t), identity, 'AssumedRole', identity, '', 'aws',
               service, action, category, resource, 'us-east-1', ip, 'aws-cli/2 linux', ok, '', True, 'x#0')


def window(identity, end, events):
  agg = WindowAggregate()
  for e in events:
    agg.add(e, 900)
  return IdentityWindow(identity, float(end - 3600), float(end), agg)


def ctx(**kw):
  row = normalise(dict({'identity': 'id', 'identity_type': 'service_account', 'owner': 'o',
                        'team': 't', 'environment': 'prod'}, **kw))
  return dict(row, registered='true')


def streaming():
  o = PipelineOptions()
  o.view_as(StandardOptions).streaming = True
  return o


# -- inventory ------------------------------------------------------------------
ROWS = [
    {'identity': 'role/ci', 'identity_type': 'service_account', 'owner': 'a@x', 'team': 'build',
     'environment': 'ci', 'criticality': 'High', 'expected_services': 'ecr;s3',
     'expected_actions': 'ecr:*', 'status': ''},
    {'identity': 'user/key', 'identity_type': 'api_key', 'owner': 'b@x', 'team': 'pay',
     'environment': 'Prod', 'criticality': 'low', 'expected_services': '', 'expected_actions': '',
     'status': 'disabled'},
]


def test_csv_jsonl_and_avro_inventories_read_the_same(tmp_path):
  with open(tmp_path / 'inv.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, HEADER)
    w.writeheader()
    w.writerows(ROWS)
  with open(tmp_path / 'inv.jsonl', 'w') as f:
    for r in ROWS:  # lists, as a JSON export has them
      f.write(json.dumps(dict(r, expected_services=r['expected_services'].split(';') if r['expected_services'] else [])) + '\n')
  schema = {'type': 'record', 'name': 'Identity', 'fields': [{'name': h, 'type': 'string'} for h in HEADER]}
  with open(tmp_path / 'inv.avro', 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(schema), ROWS)
  read = {ext: dict(read_inventory(str(tmp_path / f'inv.{ext}'))) for ext in ('csv', 'jsonl', 'avro')}
  assert read['csv'] == read['jsonl'] == read['avro']
  ci = read['csv']['role/ci']
  assert ci['expected_services'] == ['ecr', 's3'] and ci['expected_actions'] == ['ecr:*']
  assert ci['criticality'] == 'high' and ci['status'] == 'active'  # normalised, default status
  assert read['csv']['user/key']['status'] == 'disabled' and read['csv']['user/key']['environment'] == 'prod'


def test_inventory_without_required_columns_fails_loudly(tmp_path):
  (tmp_path / 'bad.csv').write_text('identity,owner\nx,y\n')
  with pytest.raises(InventoryError, match='lacks columns'):
    list(read_inventory(str(tmp_path / 'bad.csv')))


def test_enrichment_uses_the_newest_snapshot_it_can_see():
  """Several snapshots in view: the newest read wins (the mid-stream refresh: test_live_updates.py)."""
  v1 = snapshot_of([('a', normalise({'identity': 'a', 'identity_type': 'ai_agent', 'team': 'old'}))], 1.0)
  v2 = snapshot_of([('a', normalise({'identity': 'a', 'identity_type': 'ai_agent', 'team': 'new'})),
                    ('b', normalise({'identity': 'b', 'identity_type': 'api_key', 'team': 'x'}))], 2.0)
  w = window('a', T0 + 3600, [ev('a', T0 + 10)])
  with beam.Pipeline(runner='FnApiRunner') as p:
    snapshots = p | 'Snapshots' >> beam.Create([v2, v1])
    out = (p | 'Windows' >> beam.Create([w, window('c', T0 + 3600, [ev('c', T0 + 10)])])
           | EnrichWindows(snapshots)
           | beam.Map(lambda wc: (wc[0].identity, wc[1]['team'], wc[1]['registered'], wc[1]['identity_type'])))
    assert_that(out, equal_to([('a', 'new', 'true', 'ai_agent'), ('c', '', 'false', 'workload_identity')]))


def _enrich_from_file(at_setup, team):
  """Run EnrichWindows on a file read at setup, check 'a' gets ``team``; the number of workers
  that counted inventory_changed_since_launch."""
  from apache_beam.metrics.metric import MetricsFilter
  p = beam.Pipeline(runner='FnApiRunner')
  out = (p | beam.Create([window('a', T0 + 3600, [ev('a', T0 + 10)])])
         | EnrichWindows(at_setup) | beam.Map(lambda wc: wc[1]['team']))
  assert_that(out, equal_to([team]))
  result = p.run()
  result.wait_until_finish()
  changed = result.metrics().query(MetricsFilter().with_name('inventory_changed_since_launch'))['counters']
  return sum(c.committed or 0 for c in changed)


def test_a_batch_job_reads_its_inventory_file_at_setup_and_counts_a_change_since_launch(tmp_path):
  """No side input (a Prism stage that reads one keeps the runner's scheduler spinning while it
  runs): each worker reads the file in setup; one rewritten after launch is counted."""
  import os
  from postauth.transforms.inventory import InventoryAtSetup
  path = tmp_path / 'inv.csv'
  path.write_text('identity,identity_type,owner,team,environment\na,api_key,o,t1,prod\n')
  at_launch = InventoryAtSetup.at_launch(str(path))
  assert _enrich_from_file(at_launch, 't1') == 0
  path.write_text('identity,identity_type,owner,team,environment\na,api_key,o,t2,prod\n')
  os.utime(path, (T0, T0))  # a different stamp even within the filesystem's time resolution
  assert _enrich_from_file(at_launch, 't2') >= 1


def test_an_inventory_gone_before_launch_is_named_not_an_index_error(tmp_path):
  from postauth.transforms.inventory import InventoryAtSetup
  with pytest.raises(InventoryError, match='not found'):
    InventoryAtSetup.at_launch(str(tmp_path / 'gone.csv'))


def test_the_batch_detection_graph_has_no_side_input_the_streaming_one_reads_its_inventory(sample, model_dir, tmp_path):
  from postauth.pipeline import preflight
  from postauth.pipeline.detect import build_detection

  def side_inputs(streaming):
    source = (['--streaming', '--subscription=projects/my-project/subscriptions/cloudtrail'] if streaming
              else [f'--events={sample["dir"]}/live/*'])
    options = PipelineOptions([f'--inventory={sample["inventory"]}', f'--model-dir={model_dir}', *source,
                               f'--findings={tmp_path}/findings.jsonl'])
    preflight.validate_run(options)
    p = beam.Pipeline(runner='BundleBasedDirectRunner', options=options)
    build_detection(p, options)
    found = []

    def walk(node):
      if node.side_inputs:
        found.append(node.full_label)
      for part in node.parts:
        walk(part)
    walk(p.transforms_stack[0])
    return found

  assert side_inputs(streaming=False) == []
  assert any('Enrich' in label for label in side_inputs(streaming=True))


def test_inventory_reread_survives_a_half_written_edit(tmp_path):
  path = tmp_path / 'inv.csv'
  path.write_text('identity,identity_type,owner,team,environment\na,api_key,o,t1,prod\n')
  read_now = _ReadNow(functools.partial(read_snapshot, str(path)), 'inventory')

  def reader():  # what the periodic re-read emits: (read time, snapshot), or nothing
    out = list(read_now.process(None, ts=1.0))
    return out[0][1] if out else None

  first, again = reader(), reader()
  path.write_text('identity,identity_type,owner,team,environment\na,api_key,o,t2,prod\n')
  edited = reader()
  path.write_text('identity,owner\n')  # half-written edit: no snapshot, the last good one stays in use
  assert reader() is None
  assert first.digest == again.digest != edited.digest
  assert newest([first, edited]).rows['a']['team'] == 't2'


# -- rules ----------------------------------------------------------------------
def test_out_of_scope_names_the_actions_outside_the_declared_patterns():
  w = window('id', T0 + 3600, [ev('id', T0 + 1, 'ecr', 'PutImage', 'data_write'),
                               ev('id', T0 + 2, 'ecs', 'UpdateService', 'config_change'),
                               ev('id', T0 + 3, 's3', 'DeleteBucket', 'delete')])
  context = ctx(expected_services='ecr;s3', expected_actions='ecr:*;s3:Get*')
  r = rules.out_of_scope(w, context, IdentityProfile(), rules.RuleConfig())
  assert set(r['actions']) == {'ecs:UpdateService', 's3:DeleteBucket'} and r['severity'] == 'high'
  assert rules.out_of_scope(w, ctx(), IdentityProfile(), rules.RuleConfig()) is None  # no scope declared
  reads = window('id', T0 + 3600, [ev('id', T0 + 1, 'sqs', 'ReceiveMessage', 'data_read')])
  assert rules.out_of_scope(reads, context, IdentityProfile(), rules.RuleConfig())['severity'] == 'low'


def test_disabled_identity_active_needs_a_successful_call():
  ok = window('id', T0 + 3600, [ev('id', T0 + 1)])
  denied = window('id', T0 + 3600, [ev('id', T0 + 1, ok=False)])
  cfg = rules.RuleConfig()
  assert rules.disabled_identity_active(ok, ctx(status='disabled'), None, cfg)['severity'] == 'critical'
  assert rules.disabled_identity_active(denied, ctx(status='disabled'), None, cfg) is None
  assert rules.disabled_identity_active(ok, ctx(), None, cfg) is None


def test_dormant_identity_revived_after_the_configured_silence():
  old = IdentityProfile().update(window('id', T0 - 40 * DAY, [ev('id', T0 - 40 * DAY - 100)]).agg, T0 - 40 * DAY)
  w = window('id', T0 + 3600, [ev('id', T0 + 1, 'secretsmanager', 'GetSecretValue', 'secret_access')])
  r = rules.dormant_identity_revived(w, ctx(), old, rules.RuleConfig(dormant_days=30))
  assert r and r['severity'] == 'high' and '40 days' in r['detail']
  assert rules.dormant_identity_revived(w, ctx(), old, rules.RuleConfig(dormant_days=60)) is None
  assert rules.dormant_identity_revived(w, ctx(), IdentityProfile(), rules.RuleConfig()) is None  # never seen


def test_credential_and_privilege_rules_fire_for_nhis_only_and_say_if_first():
  w = window('id', T0 + 3600, [ev('id', T0 + 1, 'iam', 'CreateAccessKey', 'credential_create'),
                               ev('id', T0 + 2, 'iam', 'AttachRolePolicy', 'privilege_change')])
  cfg = rules.RuleConfig()
  fired = {r['rule']: r for r in rules.evaluate(w, ctx(), IdentityProfile(), cfg)}
  assert {'credential_created_by_nhi', 'privilege_change_by_nhi'} <= set(fired)
  assert fired['credential_created_by_nhi']['severity'] == 'high'  # never before
  assert fired['privilege_change_by_nhi']['actions'] == ['iam:AttachRolePolicy']
  routine = IdentityProfile().update(w.agg, T0)
  assert rules.credential_created_by_nhi(w, ctx(), routine, cfg)['severity'] == 'low'
  assert not rules.evaluate(w, ctx(identity_type='human'), IdentityProfile(), cfg)
  assert not rules.evaluate(w, ctx(), IdentityProfile(),
                            rules.RuleConfig(disabled=('credential_created_by_nhi', 'privilege_change_by_nhi')))


def test_severity_weighs_criticality_and_environment():
  assert contextual_severity('medium', {'criticality': 'critical', 'environment': 'prod'})[0] == 'high'
  assert contextual_severity('high', {'criticality': 'medium', 'environment': 'sandbox'})[0] == 'medium'
  assert contextual_severity('critical', {'criticality': 'high'})[0] == 'critical'  # capped
  assert contextual_severity('low', {'criticality': 'low', 'environment': 'dev'})[0] == 'low'  # floored


# -- history --------------------------------------------------------------------
def _day_windows(identity, days=3):
  """Hourly windows over ``days`` days with a new action on the last day."""
  out = []
  for d in range(days):
    for h in range(0, 24, 3):
      end = T0 + d * DAY + (h + 1) * 3600
      action = 'PutObject' if d == days - 1 and h == 12 else 'GetObject'
      out.append(window(identity, end, [ev(identity, end - 100, action=action)]))
  return out


def _history_view(item):
  return (item.window.identity, int(item.window.window_end - T0), item.history.windows,
          min(item.history_days, 99), tuple(feature_vector(item.window.agg, item.history, item.window.window_end).round(9)))


def test_history_is_the_same_in_batch_streaming_and_training():
  """Train/serve skew test: the live fold gives the training job's feature vectors."""
  windows = _day_windows('a') + _day_windows('b', 2)
  inventory = {'a': ctx(identity='a'), 'b': ctx(identity='b')}
  pairs = [(w, inventory[w.identity]) for w in windows]
  walk = WalkIdentityHistory(warmup_days=1)
  trained = []
  for identity in ('a', 'b'):
    for out in walk.process((identity, [w for w in windows if w.identity == identity]), inventory,
                            FleetProfile()):
      if not isinstance(out, beam.pvalue.TaggedOutput):
        trained.append(tuple(out[1][1].round(9)))

  def check(collected):
    # Windows of day 0 are judged against nothing; later days against the days before only.
    by_day = {}
    for identity, end, n, days, _ in collected:
      by_day.setdefault((identity, (end - 1) // DAY), set()).add((n, days))
    assert by_day[('a', 0)] == {(0, 0)} and by_day[('a', 1)] == {(8, 1)} and by_day[('a', 2)] == {(16, 2)}
    judged = sorted(x[4] for x in collected if x[3] >= 1)
    assert judged == sorted(trained)  # the training job's vectors: no train/serve skew
    assert len(judged) == 8 * 2 + 8

  with beam.Pipeline(runner='FnApiRunner') as p:
    batch = (p | beam.Create(pairs) | TrackHistory(None))['windows'] | beam.Map(_history_view)
    assert_that(batch, check)
  stream = TestStream()
  for end in sorted({w.window_end for w in windows}):
    stream = stream.add_elements([TimestampedValue((w, inventory[w.identity]), end - EPSILON)
                                  for w in windows if w.window_end == end])
    stream = stream.advance_watermark_to(end)
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming())
  live = (p | stream.advance_watermark_to_infinity() | TrackHistory(None))['windows'] | beam.Map(_history_view)
  assert_that(live, check)
  p.run().wait_until_finish()


def test_unregistered_identity_is_reported_once_per_day():
  windows = _day_windows('shadow', 2)
  unregistered = dict(ctx(identity='shadow'), registered='false')
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = (p | beam.Create([(w, unregistered) for w in windows]) | TrackHistory(None))
    days = out['unregistered'] | beam.Map(lambda f: (f['identity'], f['window_end'][:10], f['rules']))
    assert_that(days, equal_to([('shadow', rfc3339(T0)[:10], ['unregistered_identity']),
                                ('shadow', rfc3339(T0 + DAY)[:10], ['unregistered_identity'])]))


def test_history_state_is_bounded():
  hist = IdentityHistory()
  for d in range(3):
    for k in range(200):
      events = [ev('x', T0 + d * DAY + k * 400 + i, action=f'A{k}-{i}', resource=f'r/{d}/{k}/{i}',
                   ip=f'10.{k % 250}.{i}.1') for i in range(20)]
      hist.observe(window('x', T0 + d * DAY + (k + 1) * 400, events).agg, T0 + d * DAY + (k + 1) * 400)
  base = hist.final_profile()
  assert len(base.seen['actions']) <= 512 * 1.25 and len(base.seen['resources']) <= 2048 * 1.25
  assert len(base.seen['networks']) <= 64 * 1.25


# -- suppression and dedup ------------------------------------------------------
def finding(fid, start, reasons, identity='role/ci', actions=None):
  return {'finding_id': fid, 'identity': identity, 'window_start': rfc3339(start),
          'window_end': rfc3339(start + 3600), 'score': 5.0, 'severity': 'high',
          'reasons': reasons, 'rules': [r['rule'] for r in reasons if 'rule' in r],
          'actions': actions or {'ecs:UpdateService': 3}, 'resources': {'prod/x': 3}, 'occurrences': 1}


SCOPE = {'rule': 'out_of_scope', 'detail': 'ecs:UpdateService x3 outside', 'severity': 'high',
         'actions': ['ecs:UpdateService']}
NOVEL = {'feature': 'novel_action_share', 'value': 1, 'baseline': 0, 'detail': 'never-seen actions'}


def test_allowlist_suppresses_matching_reasons_until_it_expires(tmp_path):
  path = tmp_path / 'allow.jsonl'
  path.write_text(json.dumps({'identity': 'role/ci*', 'rule': 'out_of_scope', 'action': 'ecs:*',
                              'expires': rfc3339(T0 + DAY), 'reason': 'CHG-42 deploy migration'}) + '\n')
  entries = load_allowlist(str(path))
  partly = apply_allowlist(finding('f1', T0, [SCOPE, NOVEL]), entries)
  assert [r.get('feature') for r in partly['reasons']] == ['novel_action_share']
  assert partly['suppressed_reasons'][0]['suppressed_by'] == 'CHG-42 deploy migration'
  expired = apply_allowlist(finding('f2', T0 + 2 * DAY, [SCOPE]), entries)
  assert expired['reasons'] == [SCOPE]
  other = apply_allowlist(finding('f3', T0, [dict(SCOPE, actions=['iam:PutUserPolicy'])]), entries)
  assert other['reasons'] and 'suppressed_reasons' not in other
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = p | beam.Create([finding('f1', T0, [SCOPE, NOVEL]), finding('f4', T0, [SCOPE])]) | Suppress(str(path))
    assert_that(out.findings | beam.Map(lambda f: f['finding_id']), equal_to(['f1']), label='kept')
    assert_that(out.suppressed | beam.Map(lambda f: (f['finding_id'], len(f['suppressed_reasons']))),
                equal_to([('f4', 1)]), label='suppressed')
  with pytest.raises(ValueError, match='expires'):
    (tmp_path / 'bad.json').write_text('[{"identity": "x"}]')
    load_allowlist(str(tmp_path / 'bad.json'))


def _dedup_input():
  return [finding('f1', T0, [SCOPE]), finding('f2', T0 + 7200, [SCOPE]),
          finding('f3', T0 + 4 * 3600, [SCOPE, NOVEL]),  # a new reason: a new finding
          finding('f4', T0 + 5 * 3600, [SCOPE]),
          finding('f5', T0 + 2 * DAY, [SCOPE])]  # beyond the period: new again


def _final(rows):
  latest = {}
  for f in rows:
    if f['finding_id'] not in latest or f['occurrences'] >= latest[f['finding_id']]['occurrences']:
      latest[f['finding_id']] = f
  return sorted((f['finding_id'], f['occurrences']) for f in latest.values())


def test_repeats_fold_into_one_finding_with_a_count_in_batch_and_streaming():
  expected = [('f1', 3), ('f3', 1), ('f5', 1)]
  with beam.Pipeline(runner='FnApiRunner') as p:
    out = (p | beam.Create(list(reversed(_dedup_input())))
           | beam.Map(lambda f: TimestampedValue(f, T0 + 10 * DAY)) | DeduplicateFindings(6 * 3600))
    assert_that(out | beam.combiners.ToList() | beam.Map(_final), equal_to([expected]))
  stream = TestStream()
  for f in _dedup_input():
    end = T0 + (int(f['finding_id'][1]) * 4 * 3600) + 7200
    stream = stream.add_elements([TimestampedValue(f, end)]).advance_watermark_to(end + 1)
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming())
  out = p | stream.advance_watermark_to_infinity() | DeduplicateFindings(6 * 3600)

  def check(rows):
    assert _final(rows) == expected
    # alerted at once (occurrences 1), then re-emitted with the count as repeats arrive
    assert sorted(f['occurrences'] for f in rows if f['finding_id'] == 'f1') == [1, 2, 3]

  assert_that(out, check)
  p.run().wait_until_finish()


def test_scope_patterns_match_as_fnmatch_does_case_insensitively():
  import fnmatch
  from postauth.domain.glob_match import matches_any
  lists = [['ecr:*', 's3:Get*'], ['S3', 'sts'], ['a?c', '[ab]*'], ['a|b', '(c)'], ['.*'], ['*'], []]
  values = ['ecr:BatchGetImage', 's3:getobject', 'S3', 'sts:AssumeRole', 'abc', 'bcd', 'a|b', '(c)',
            '.*', 'a', '', 'x\ny']
  for patterns in lists:
    for value in values:
      expected = any(fnmatch.fnmatchcase(value.lower(), p.lower()) for p in patterns)
      assert matches_any(value, patterns) is expected, (value, patterns)
