"""Peers in the stream: same-day adoption by peers is change; evidence no rollout explains pages.

The corroboration step (transforms/corroborate.py) and the judgment it rests on
(transforms/judgment.py), through real Beam pipelines in batch and streaming.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue

from postauth.models.fleet import FleetProfile
from postauth.models.profile import IdentityProfile, seen_key
from postauth.models.fleet import network_key
from postauth.transforms.corroborate import CorroborateWithPeers, _Corroborator, fleet_change_id, group_of
from postauth.transforms.findings import contextual_severity, rfc3339
from postauth.transforms.window_context import WindowInContext
from postauth.transforms.judgment import judge
from postauth.transforms.windowing import EPSILON
from postauth.pipeline.prism import NO_RUNNER_SPLITS
from tests.test_identity_context import ctx, ev, streaming, window

DAY0 = 1_762_300_800  # 2025-11-05T00:00:00Z
TYPE = 'workload_identity'
NEW = ('apps', 'patch:horizontalpodautoscalers', 'config_change')  # a sensitive call nobody made before


def _history(identity, ip='10.0.0.1', calls=10):
  """A day of routine: the profile the live day's windows are judged against."""
  return IdentityProfile().update(
      window(identity, DAY0 - 3600, [ev(identity, DAY0 - 1800 + k, ip=ip) for k in range(calls)]).agg, DAY0 - 3600)


def _adopting(identity, end, service=NEW[0], action=NEW[1], category=NEW[2]):
  w = window(identity, end, [ev(identity, end - 900), ev(identity, end - 600, service, action, category, 'hpa/web')])
  return WindowInContext(w, ctx(identity=identity, identity_type=TYPE), _history(identity), 5)


def _finding(item, severity='medium', evidence=()):
  """The first version of a finding on ``item``'s window, as the merge emits it, with its judgment."""
  verdict = judge(item.window, item.context, item.history, None, severity)
  assert verdict.shareable == [f'action:{NEW[0]}:{NEW[1]}'] and not verdict.evidence
  end = item.window.window_end
  return {'finding_id': item.window.identity, 'identity': item.window.identity, 'identity_type': TYPE,
          'severity': severity, 'severity_basis': {'detected': severity}, 'reasons': [], 'rules': [],
          'first_detected_at': rfc3339(end), 'window_end': rfc3339(end), 'updates': 0,
          'page_basis': {'evidence': list(evidence), 'shareable': verdict.shareable, 'change': []}}


def _run(findings, items, check, streaming_mode=False, delay=1800.0, runner='FnApiRunner'):
  if streaming_mode:
    events = sorted([(i.window.window_end - EPSILON, i) for i in items]
                    + [(_end_of(f) - EPSILON, f) for f in findings], key=lambda x: x[0])
    stream, mark = TestStream(), None
    for t, x in events:  # each element before the watermark passes it, as a source delivers them
      if mark is None or int(t) - 1 > mark:
        mark = int(t) - 1  # whole milliseconds, as TestStream carries watermarks
        stream = stream.advance_watermark_to(mark)
      stream = stream.add_elements([TimestampedValue(x, t)])
    # past every release before the end of time: outputs of timers that fire on the final
    # advance would reach the assertion's grouping after it fired
    stream = stream.advance_watermark_to(mark + 2 * 86400).advance_watermark_to_infinity()
    p = beam.Pipeline(options=streaming())
    both = p | stream
    windows = both | 'W' >> beam.Filter(lambda x: isinstance(x, WindowInContext))
    found = both | 'F' >> beam.Filter(lambda x: isinstance(x, dict))
  else:
    args = ([f'--prism_location={runner[len("prism:"):]}', f'--experiments={NO_RUNNER_SPLITS}']
            if runner.startswith('prism:') else [])
    p = beam.Pipeline(runner='PrismRunner' if args else runner, options=PipelineOptions(args))
    windows = (p | 'Windows' >> beam.Create(items)
               | 'StampW' >> beam.Map(lambda i: TimestampedValue(i, i.window.window_end - EPSILON)))
    found = (p | 'Findings' >> beam.Create(findings)
             | 'StampF' >> beam.Map(lambda f: TimestampedValue(f, _end_of(f) - EPSILON)))
  out = found | CorroborateWithPeers(windows, delay_seconds=delay, min_peers=2) | 'All' >> beam.Flatten()
  assert_that(out | beam.Map(lambda f: (f['identity'], f['severity'], f.get('fleet_change_id'))), check)
  p.run().wait_until_finish()


def _end_of(f):
  from postauth.transforms.triage import _epoch
  return _epoch(f['window_end'])


def _adoption(spacing=600):
  """Four workloads of one type start the same never-seen sensitive call, ``spacing`` s apart."""
  items = [_adopting(f'wl-{k}', DAY0 + 9 * 3600 + spacing * k) for k in range(4)]
  return items, [_finding(i) for i in items]


def _expect_all_low(adopters):
  fid = fleet_change_id(group_of(TYPE), f'{NEW[0]}:{NEW[1]}', DAY0 // 86400)

  def check(got):
    assert sorted(got) == sorted((a, 'low', fid) for a in adopters), got
  return check


def test_a_peer_groups_same_day_adoption_stays_low_for_each_adopter_batch():
  items, findings = _adoption()
  _run(findings, items, _expect_all_low([i.window.identity for i in items]))


def test_a_peer_groups_same_day_adoption_stays_low_for_each_adopter_streaming():
  items, findings = _adoption()
  _run(findings, items, _expect_all_low([i.window.identity for i in items]), streaming_mode=True)


def test_corroboration_on_prism_equals_the_fnapi_runner(prism_binary):
  items, findings = _adoption()
  _run(findings, items, _expect_all_low([i.window.identity for i in items]), runner=f'prism:{prism_binary}')


def test_a_lone_adopter_pages_after_the_delay_and_one_beyond_the_delay_is_not_waited_for():
  """One identity alone pages; peers adopting only after the delay do not corroborate it."""
  items, findings = _adoption(spacing=3 * 3600)  # each one 3 h after the previous
  step = _Corroborator(1800.0, 2)
  waiting = [(int((_end_of(f) - EPSILON) * 1000), f) for f in findings]
  waiting += [(int((i.window.window_end - EPSILON) * 1000),
               {'kind': 'peer_sighting', 'group': group_of(TYPE), 'identity': i.window.identity,
                'actions': [f'{NEW[0]}:{NEW[1]}'], 'window_end': i.window.window_end}) for i in items]
  from postauth.transforms.timer_walk import walk
  got = [v.value for v in walk(step.step, waiting, min(step.due(e) for e in waiting))]
  by = {f['identity']: f['severity'] for f in got}
  # wl-0 and wl-1 had fewer than 2 other adopters before their release: they page;
  # wl-2 and wl-3 were preceded by 2 and 3 adopters within the day: a fleet change.
  assert by == {'wl-0': 'medium', 'wl-1': 'medium', 'wl-2': 'low', 'wl-3': 'low'}
  released = {f['identity']: v.timestamp.micros / 1e6 for v, f in
              zip(walk(_Corroborator(1800.0, 2).step, waiting, min(step.due(e) for e in waiting)), got)}
  for i in items:  # every held finding is released exactly the delay after its first window closed
    assert abs(released[i.window.identity] - (i.window.window_end + 1800)) < 0.01


def test_evidence_never_waits_and_is_never_folded():
  items, findings = _adoption()
  findings[0]['page_basis']['evidence'] = ['foreign_network']
  step = _Corroborator(1800.0, 2)
  ms = int((_end_of(findings[0]) - EPSILON) * 1000)
  assert step.due((ms, findings[0])) == ms  # released at once
  waiting = [(ms, findings[0])] + [(int((i.window.window_end - EPSILON) * 1000),
                                    {'kind': 'peer_sighting', 'group': group_of(TYPE),
                                     'identity': i.window.identity, 'actions': [f'{NEW[0]}:{NEW[1]}'],
                                     'window_end': i.window.window_end}) for i in items]
  from postauth.transforms.timer_walk import walk
  got = [v.value for v in walk(step.step, waiting, min(step.due(e) for e in waiting))]
  assert [f['severity'] for f in got] == ['medium'] and 'fleet_change_id' not in got[0]


def test_only_findings_that_wait_reach_the_keyed_step_the_rest_pass_untouched():
  """The step's key is a whole type: a finding that cannot wait (evidence, or below a page)
  must not load it, and must come out as it went in."""
  items, findings = _adoption()
  findings[0]['page_basis']['evidence'] = ['foreign_network']  # never waits
  findings[1]['severity'] = 'low'  # not a page: nothing to wait for
  p = beam.Pipeline('FnApiRunner')
  windows = (p | 'Windows' >> beam.Create(items)
             | 'StampW' >> beam.Map(lambda i: TimestampedValue(i, i.window.window_end - EPSILON)))
  found = (p | 'Findings' >> beam.Create(findings)
           | 'StampF' >> beam.Map(lambda f: TimestampedValue(f, _end_of(f) - EPSILON)))
  passing, decided = found | CorroborateWithPeers(windows, delay_seconds=1800.0, min_peers=2)
  assert_that(passing, lambda got: _same(got, findings[:2]), label='Passing')
  assert_that(decided | beam.Map(lambda f: (f['identity'], f['severity'])),
              lambda got: _same(got, [(i.window.identity, 'low') for i in items[2:]]), label='Decided')
  p.run().wait_until_finish()


def _same(got, want):
  key = repr
  assert sorted(got, key=key) == sorted(want, key=key), got


# -- the judgment ------------------------------------------------------------------------------

def _fleet(networks, identities=20):
  """A fleet of ``identities`` that called from ``networks`` (one each, round robin)."""
  from postauth.pipeline.train import _actions_used
  fleet = FleetProfile()
  for k in range(identities):
    net_ip = networks[k % len(networks)]
    w = window(f'peer-{k}', DAY0 - 3600, [ev(f'peer-{k}', DAY0 - 1800, ip=net_ip)])
    fleet.add(TYPE, _actions_used([w]))
  return fleet


def test_a_single_identitys_novel_high_impact_call_pages_whatever_its_context():
  item = _adopting('wl-0', DAY0 + 9 * 3600, 'cloudtrail', 'StopLogging', 'defense_evasion')
  peers = _fleet(['10.0.0.1']).view(TYPE, None)
  verdict = judge(item.window, item.context, item.history, peers, None)  # the model did not flag it
  assert verdict.pages() and verdict.severity in ('high', 'critical')
  assert any(e['kind'] == 'high_impact' and 'cloudtrail:StopLogging' in e['actions'] for e in verdict.evidence)
  for context in ({'criticality': 'low', 'environment': 'sandbox'}, {'environment': 'dev'}):
    severity, _ = contextual_severity(verdict.severity, dict(item.context, **context))
    assert severity in ('medium', 'high', 'critical')
  # ... unless the identity's own history shows it
  known = IdentityProfile().update(item.window.agg, DAY0 - 7200)
  assert not judge(item.window, item.context, known, peers, None).pages()


def test_a_new_24_inside_a_used_private_range_does_not_page_alone():
  peers = _fleet([f'10.{k}.7.9' for k in range(20)]).view(TYPE, None)
  identity = 'wl-moved'
  w = window(identity, DAY0 + 9 * 3600, [ev(identity, DAY0 + 9 * 3600 - 600 + k, ip='10.0.0.1') for k in range(10)]
             + [ev(identity, DAY0 + 9 * 3600 - 500 + k, ip='10.77.12.5') for k in range(10)])
  item = WindowInContext(w, ctx(identity=identity, identity_type=TYPE), _history(identity), 5)
  verdict = judge(item.window, item.context, item.history, peers, 'high')  # even when the model flags it
  assert not verdict.pages() and not verdict.evidence
  assert any('inside the fleet' in c for c in verdict.change)
  assert judge(item.window, item.context, item.history, peers, 'high', bare_if_quiet=True) == verdict
  # unflagged, no rule, no evidence: scoring drops the window, so it asks for no notes
  assert judge(item.window, item.context, item.history, peers, None, bare_if_quiet=True) == ('low', [], [], [])
  assert judge(item.window, item.context, item.history, peers, None).change == verdict.change
  # the same calls from an internet network no identity of the fleet used page
  w2 = window(identity, DAY0 + 9 * 3600, [ev(identity, DAY0 + 9 * 3600 - 600 + k, ip='10.0.0.1') for k in range(10)]
              + [ev(identity, DAY0 + 9 * 3600 - 500 + k, ip='93.184.216.34') for k in range(10)])
  verdict = judge(w2, item.context, item.history, peers, None)
  assert verdict.pages() and [e['kind'] for e in verdict.evidence] == ['foreign_network']


def test_harmless_novelty_and_a_routine_burst_stay_low_whatever_the_model_says():
  identity = 'wl-new-read'
  end = DAY0 + 9 * 3600
  history = IdentityProfile().update(
      window(identity, DAY0 - 3600, [ev(identity, DAY0 - 1800 + k) for k in range(10)]).agg, DAY0 - 3600)
  w = window(identity, end, [ev(identity, end - 600 + k, 'glue', 'GetPartitions', 'data_read', 'db_x')
                             for k in range(5)] + [ev(identity, end - 300 + k) for k in range(30)])  # 3x
  item = WindowInContext(w, ctx(identity=identity, identity_type=TYPE), history, 5)
  verdict = judge(item.window, item.context, item.history, None, 'critical')
  assert verdict.severity == 'low' and not verdict.evidence and not verdict.shareable


def test_an_identity_rotating_through_internet_egress_keeps_paging_only_with_a_new_client():
  """Serverless calls come from ever-new provider addresses: one more is routine for an identity
  whose own history already rotates; the same address with a new client is not."""
  identity = 'fn-orders'
  history = IdentityProfile().update(window(identity, DAY0 - 3600, [
      ev(identity, DAY0 - 1800 + k, ip=f'52.{10 + k}.3.4') for k in range(6)]).agg, DAY0 - 3600)
  peers = _fleet(['10.0.0.1']).view(TYPE, None)
  end = DAY0 + 9 * 3600
  w = window(identity, end, [ev(identity, end - 600 + k, ip='18.200.7.9') for k in range(10)])
  item = WindowInContext(w, ctx(identity=identity, identity_type=TYPE), history, 5)
  verdict = judge(item.window, item.context, history, peers, 'high')
  assert not verdict.pages() and any('rotates' in c for c in verdict.change)
  stolen = [e._replace(user_agent='python-requests/2.31') for e in
            (ev(identity, end - 600 + k, ip='18.200.7.9') for k in range(10))]
  verdict = judge(window(identity, end, stolen), item.context, history, peers, None)
  assert verdict.pages() and [e['kind'] for e in verdict.evidence] == ['foreign_network']
  # an identity that never left its private network pages on the same address and client
  verdict = judge(item.window, item.context, _history(identity), peers, None)
  assert verdict.pages()


def test_a_new_sensitive_call_within_the_identitys_own_namespace_is_its_own_change():
  """A deployer that starts patching its namespace's autoscalers changes within its scope; the
  same call in a namespace it never worked in (prod, from a CI account) could be abuse."""
  identity = 'system:serviceaccount:shop:deployer'
  end = DAY0 + 9 * 3600
  history = IdentityProfile().update(window(identity, DAY0 - 3600, [
      ev(identity, DAY0 - 1800 + k, 'apps', 'patch:deployments', 'config_change', 'shop/deployments/web')
      for k in range(10)]).agg, DAY0 - 3600)
  own = window(identity, end, [ev(identity, end - 600 + k, NEW[0], NEW[1], NEW[2], 'shop/horizontalpodautoscalers/web')
                               for k in range(3)])
  context = ctx(identity=identity, identity_type=TYPE)
  verdict = judge(own, context, history, None, 'high')
  assert verdict.severity == 'low' and not verdict.shareable
  assert any('within the scopes' in c for c in verdict.change)
  elsewhere = window(identity, end, [ev(identity, end - 600 + k, NEW[0], NEW[1], NEW[2], 'prod/horizontalpodautoscalers/api')
                                     for k in range(3)])
  verdict = judge(elsewhere, context, history, None, 'high')
  assert verdict.pages() and verdict.shareable == [f'action:{NEW[0]}:{NEW[1]}']
