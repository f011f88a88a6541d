"""Issue 12: one low notice per fleet change, not one finding per identity; what separates change from abuse."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue

from postauth.models.features import INDEX, feature_vector
from postauth.models.fleet import FleetProfile
from postauth.domain.resource_kind import resource_family
from postauth.models.profile import IdentityProfile, seen_key
from postauth.transforms import rules
from postauth.transforms.fleet_notice import FleetChangeNotices
from postauth.transforms.findings import contextual_severity
from postauth.transforms.window_context import WindowInContext
from postauth.transforms.windowing import EPSILON
from postauth.pipeline.prism import NO_RUNNER_SPLITS
from tests.test_identity_context import ctx, ev, streaming, window

DAY0 = 1_762_300_800  # 2025-11-05T00:00:00Z


def _history(identity):
  """A day of routine: the profile the live day's windows are judged against."""
  return IdentityProfile().update(window(identity, DAY0 - 3600, [ev(identity, DAY0 - 1800)]).agg, DAY0 - 3600)


def _items(adopters, action='PutTraceSegments', team='ml', identity_type='workload_identity'):
  out = []
  for k, identity in enumerate(adopters):
    end = DAY0 + 3600 * (9 + k)
    w = window(identity, end, [ev(identity, end - 600), ev(identity, end - 300, 'xray', action, 'data_write', '')])
    out.append(WindowInContext(w, ctx(identity=identity, team=team, identity_type=identity_type),
                               _history(identity), 5))
  return out


def _run(items, check, streaming_mode=False, min_identities=3, runner='FnApiRunner'):
  """Runs the notices over ``items``; ``check(findings)`` runs inside the pipeline (assert_that)."""
  if streaming_mode:
    stream = TestStream()
    for item in items:
      stream = stream.add_elements([TimestampedValue(item, item.window.window_end - EPSILON)])
    stream = stream.advance_watermark_to_infinity()
    p = beam.Pipeline(options=streaming())
    source = p | stream
  else:
    args = ([f'--prism_location={runner[len("prism:"):]}', f'--experiments={NO_RUNNER_SPLITS}']
            if runner.startswith('prism:') else [])
    p = beam.Pipeline(runner='PrismRunner' if args else runner, options=PipelineOptions(args))
    # As the batch history walk delivers them: grouped per identity in the global window,
    # then stamped with their own (earlier) window ends.
    source = (p | beam.Create([(i.window.identity, i) for i in items]) | beam.GroupByKey()
              | beam.FlatMap(lambda kv: [TimestampedValue(i, i.window.window_end - EPSILON) for i in kv[1]]))
  notices = source | FleetChangeNotices(None, min_identities=min_identities)
  assert_that(notices, check)
  p.run().wait_until_finish()


def _rollout_notice(adopters):
  return lambda got: _check_rollout_notice(got, adopters)


def _check_rollout_notice(got, adopters):
  by_group = {f['identity']: f for f in got}
  assert set(by_group) == {'fleet:type:workload_identity', 'fleet:team:ml'}
  for f in got:
    assert f['kind'] == 'fleet_change' and f['severity'] == 'low'
    assert f['identities'] == sorted(adopters)
    assert f['actions'] == {'xray:PutTraceSegments': 4}  # one call by each
    assert 'xray:PutTraceSegments' in f['reasons'][0]['detail'] and '4 ' in f['reasons'][0]['detail']


def test_one_notice_per_peer_group_when_several_identities_adopt_the_same_new_call():
  adopters = [f'wl-ml-{k}' for k in range(4)]
  _run(_items(adopters), _rollout_notice(adopters))


def test_fleet_notice_on_prism_equals_the_fnapi_runner(prism_binary):
  """Batch windows are stamped back in time after the history's global GroupByKey; on Prism,
  which tracks watermarks in batch too, a day window would drop them as late."""
  adopters = [f'wl-ml-{k}' for k in range(4)]
  _run(_items(adopters), _rollout_notice(adopters), runner=f'prism:{prism_binary}')


def test_fleet_notice_in_streaming_equals_batch():
  adopters = [f'wl-ml-{k}' for k in range(4)]
  _run(_items(adopters), _rollout_notice(adopters), streaming_mode=True)


def test_no_notice_below_the_minimum_and_none_for_a_single_identity():
  def none(got):
    assert got == [], got
  _run(_items(['wl-ml-0', 'wl-ml-1']), none)
  _run(_items(['wl-ml-0']), none)


def test_a_fleet_wide_high_impact_change_is_one_page():
  items = []
  for k in range(3):
    identity, end = f'wl-ml-{k}', DAY0 + 3600 * (9 + k)
    w = window(identity, end, [ev(identity, end - 300, 'iam', 'CreateAccessKey', 'credential_create', 'u')])
    items.append(WindowInContext(w, ctx(identity=identity, team='ml'), _history(identity), 5))
  def one_page_per_group(got):
    # one notice per type and per team, one page: the type's, at high (a campaign pages once)
    assert sorted((f['identity'], f['severity']) for f in got) == [
        ('fleet:team:ml', 'low'), ('fleet:type:service_account', 'high')], got
    assert all(len(f['evidence']) == 3 and {e['identity'] for e in f['evidence']} == {
        'wl-ml-0', 'wl-ml-1', 'wl-ml-2'} for f in got)  # one event per adopter, with its id
  _run(items, one_page_per_group)


def test_peers_routine_action_is_weak_evidence_a_fleet_rare_one_is_not():
  """The same never-seen sensitive call: counted when no peer makes it, not when a fifth of the fleet does."""
  identity = 'wl-a'
  routine = _history(identity)
  w = window(identity, DAY0 + 3600, [ev(identity, DAY0 + 60, 'sqs', 'SendMessage', 'message_publish', 'q')])
  fleet = FleetProfile()
  fleet.add('workload_identity', {seen_key('s3:GetObject')})  # the identity itself
  for k in range(9):
    fleet.add('api_key', {seen_key('sqs:SendMessage')} if k < 3 else set())
  own = set(routine.seen['actions'])
  common = feature_vector(w.agg, routine, w.window_end, fleet.view('workload_identity', own))
  rare = feature_vector(w.agg, routine, w.window_end, FleetProfile().add('workload_identity', own).view(
      'workload_identity', own))
  assert common[INDEX['novel_sensitive_actions']] == 0 and common[INDEX['novel_rare_actions']] == 0
  assert rare[INDEX['novel_sensitive_actions']] > 0 and rare[INDEX['novel_rare_actions']] > 0


def test_resource_families_follow_naming_patterns():
  assert resource_family('payments-orders-prod') == resource_family('payments-orders-archive-prod')
  assert resource_family('up-prod/inbox/1.json') == resource_family('up-prod/inbox/dt=2026-11-05/1.json')
  assert resource_family('ops-1@example.com') == resource_family('ops-7@example.com')
  assert resource_family('prod/payments/db') != resource_family('prod/identity/admin-token')
  assert resource_family('ops-1@example.com') != resource_family('customer-1@mail.example.net')
  # ARNs as the parsers write them: S3 objects as paths, other services by the name's namespace
  assert resource_family('arn:aws:s3:::up-prod/inbox/8.json') == resource_family('up-prod/inbox/dt=1/9.json')
  assert resource_family('arn:aws:s3:::lake-prod/finance/ledger/p-1') != resource_family('arn:aws:s3:::lake-prod/hr/x/p-2')
  assert resource_family('arn:aws:dynamodb:us-east-1:1:table/payments-orders') == 'payments'
  assert resource_family('arn:aws:secretsmanager:us-east-1:1:secret:prod/payments/db-x') == 'prod/payments'
  # Google resource names: project, collection, and the id's first token
  assert resource_family('projects/p/zones/us-central1-a/disks/disk-1') == 'projects/p/disks/disk'
  assert resource_family('projects/p/zones/us-east1-b/disks/disk-2') == 'projects/p/disks/disk'
  assert resource_family('projects/p/secrets/db-password/versions/3') != resource_family('projects/p/secrets/admin-token')
  assert resource_family('projects/p/global/images/image-1') == 'projects/p/images/image'


def test_a_new_network_beside_the_usual_one_is_not_a_redeploy():
  identity = 'svc-a'
  base = IdentityProfile().update(window(identity, DAY0 - 3600, [ev(identity, DAY0 - 1800, ip='10.0.0.5')]).agg,
                                  DAY0 - 3600)
  fleet = FleetProfile().add('api_key', {seen_key('s3:GetObject')})
  peers = fleet.view('api_key', None)
  end = DAY0 + 3600
  beside = window(identity, end, [ev(identity, end - 3000, ip='10.0.0.7'), ev(identity, end - 2900, ip='192.0.2.9'),
                                  ev(identity, end - 600, ip='10.0.0.8'), ev(identity, end - 500, ip='192.0.2.9')])
  replaced = window(identity, end, [ev(identity, end - 3000, ip='10.0.0.7'), ev(identity, end - 2000, ip='10.0.0.9'),
                                    ev(identity, end - 1500, ip='10.9.9.1'), ev(identity, end - 500, ip='10.9.9.2')])
  assert feature_vector(beside.agg, base, end, peers)[INDEX['new_network_beside_usual']] == 0.5
  assert feature_vector(replaced.agg, base, end, peers)[INDEX['new_network_beside_usual']] == 0
  cfg = rules.RuleConfig()
  fired = {r['rule']: r for r in rules.evaluate(beside, ctx(identity=identity), base, cfg, peers)}
  assert fired['new_network_beside_usual']['severity'] == 'medium'
  assert 'new_network_beside_usual' not in {r['rule'] for r in rules.evaluate(replaced, ctx(identity=identity),
                                                                                base, cfg, peers)}


def test_context_orders_pages_but_never_makes_or_removes_one():
  assert contextual_severity('low', {'criticality': 'high'})[0] == 'low'
  assert contextual_severity('medium', {'criticality': 'high'})[0] == 'high'
  assert contextual_severity('medium', {'criticality': 'low', 'environment': 'dev'})[0] == 'medium'
  assert contextual_severity('critical', {'environment': 'dev'})[0] == 'high'


def test_scope_drift_is_not_a_page():
  identity = 'wl-a'
  w = window(identity, DAY0 + 3600, [ev(identity, DAY0 + 60, 'logs', 'PutLogEvents', 'data_write', '/a')])
  declared = ctx(identity=identity, expected_services='s3')
  cfg = rules.RuleConfig()
  fresh = {r['rule']: r for r in rules.evaluate(w, declared, _history(identity), cfg)}
  assert fresh['out_of_scope']['severity'] == 'low'  # a harmless write outside the scope
  knows = _history(identity).update(w.agg, DAY0 - 60)
  secret = window(identity, DAY0 + 3600, [ev(identity, DAY0 + 60, 'secretsmanager', 'GetSecretValue',
                                               'secret_access', 'prod/other/db')])
  fired = {r['rule']: r for r in rules.evaluate(secret, declared, knows, cfg,
                                                 FleetProfile().add('workload_identity', set()).view('x', None))}
  assert fired['out_of_scope']['severity'] == 'high'  # a new sensitive call no peer makes, on a new kind
  again = {r['rule']: r for r in rules.evaluate(secret, declared, knows.update(secret.agg, DAY0 - 30), cfg)}
  assert again['out_of_scope']['severity'] == 'low' and 'stale' in again['out_of_scope']['detail']
