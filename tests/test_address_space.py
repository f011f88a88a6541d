"""Issue 22 item 2: the fleet's address space (private ranges, provider egress ranges, internal callers)."""
from __future__ import annotations

import json

import pytest

from postauth.domain.origin import address_scope, enclosing, network_of, special_block
from postauth.models.fleet import (FLEET_PRIVATE, FLEET_PUBLIC_RANGE, FOREIGN, INTERNAL_CALLER, KNOWN,
                                   FleetProfile, network_key)
from postauth.models.profile import IdentityProfile, seen_key
from postauth.pipeline.train import FleetTableFn, _actions_used
from tests.test_identity_context import ev, window

DAY0 = 1_762_300_800


def _windows(identity, ips, days=2):
  """An identity's history: a window a day, each with a call from each of ``ips``."""
  out = []
  for d in range(days):
    end = DAY0 + d * 86400 + 3600
    out.append(window(identity, end, [ev(identity, end - 600 + k, ip=ip) for k, ip in enumerate(ips)]))
  return out


def _fleet(histories, identity_type='AssumedRole'):
  """The fleet table as training builds it: ``_actions_used`` per identity, through ``FleetTableFn``."""
  fn = FleetTableFn()
  accs = []
  for windows in histories.values():  # two accumulators, merged: as the combiner runs sharded
    acc = fn.create_accumulator()
    accs.append(fn.add_input(acc, (identity_type, _actions_used(windows))))
  return fn.extract_output(fn.merge_accumulators(accs)), {i: _actions_used(w) for i, w in histories.items()}


# A fleet: a cluster's pod network (10.53/16 and 10.61/16), serverless calls through a
# provider /16, a NAT address, an identity calling through a provider service.
HISTORIES = {
    'pods-a': _windows('pods-a', ['10.53.1.7', '10.53.2.9']),
    'pods-b': _windows('pods-b', ['10.53.3.4']),
    'pods-c': _windows('pods-c', ['10.61.0.12']),
    'fn-1': _windows('fn-1', ['52.94.1.10', '52.94.7.3']),
    'fn-2': _windows('fn-2', ['52.94.9.1']),
    'fn-3': _windows('fn-3', ['52.94.200.77']),
    'nat': _windows('nat', ['34.120.5.5']),
    'svc': _windows('svc', ['ec2.amazonaws.com', '54.1.2.3']),
}
FLEET, OWN = _fleet(HISTORIES)


def _standing(network, identity='outsider', fleet=FLEET, own=OWN):
  return fleet.view('AssumedRole', own.get(identity)).network_standing(network)


# -- domain/origin.py -------------------------------------------------------------
@pytest.mark.parametrize('network, scope', [
    ('10.53.176.0/24', 'private'), ('172.20.1.0/24', 'private'), ('192.168.7.0/24', 'private'),
    ('100.70.3.0/24', 'private'), ('169.254.9.0/24', 'private'), ('fd12:3456:789a::/48', 'private'),
    ('fe80::/48', 'private'), ('172.32.0.0/24', 'public'), ('52.94.133.0/24', 'public'),
    ('2600:1f18:abcd::/48', 'public'), ('203.0.113.0/24', 'reserved'), ('198.51.100.0/24', 'reserved'),
    ('192.0.2.0/24', 'reserved'), ('198.19.4.0/24', 'reserved'), ('127.0.0.0/24', 'reserved'),
    ('2001:db8:1::/48', 'reserved'), ('ec2.amazonaws.com', 'internal'), ('aws internal', 'internal'),
    ('AWS Internal', 'internal'), ('logging.googleapis.com', 'internal'), ('private', 'internal'),
    ('gce-internal-ip', 'internal'), ('', 'internal'), ('10.1.2.3', 'private'),
    ('1.2.3.4:443', 'public'), ('1.2.3.4, 5.6.7.8', 'public'), ('<attacker source ip>', 'public'),
])
def test_address_scope(network, scope):
  assert address_scope(network) == scope


def test_enclosing_prefixes():
  assert enclosing('10.53.176.0/24') == ('10.53.0.0/16', '10.0.0.0/8')
  assert enclosing('172.20.1.0/24') == ('172.20.0.0/16', '172.16.0.0/12')
  assert enclosing('192.168.7.0/24') == ('192.168.0.0/16',)  # the /16 is the block
  assert enclosing('100.70.3.0/24') == ('100.70.0.0/16', '100.64.0.0/10')
  assert enclosing('52.94.133.0/24') == ('52.94.0.0/16',)
  assert enclosing('203.0.113.0/24') == ('203.0.0.0/16',)  # reserved stands as public
  assert enclosing('fd12:3456:789a::/48') == ('fc00::/7',)
  assert enclosing('2600:1f18:abcd::/48') == ('2600:1f18::/32',)
  assert enclosing('ec2.amazonaws.com') == enclosing('') == ()
  assert enclosing('10.53.176.9') == enclosing(network_of('10.53.176.9'))
  assert special_block('203.0.113.0/24')[2].startswith('RFC 5737')


# -- the fleet table ----------------------------------------------------------------
def test_the_table_counts_prefixes_beside_exact_networks():
  counts = FLEET.actions['*']
  assert counts[seen_key(network_key('10.53.1.0/24'))] == 1
  assert counts[seen_key('netin:10.53.0.0/16')] == 2  # pods-a counted once for its two /24s
  assert counts[seen_key('netin:10.0.0.0/8')] == 3
  assert counts[seen_key('netin:52.94.0.0/16')] == 3
  assert FLEET.counts_ranges()


def test_network_users_keeps_working():
  assert FLEET.view('AssumedRole', None).network_users('10.53.1.0/24') == (1, 8)
  assert FLEET.view('AssumedRole', OWN['pods-a']).network_users('10.53.1.0/24') == (0, 7)


def test_a_new_slash24_inside_a_private_range_the_fleet_uses_is_routine():
  standing, why = _standing('10.53.176.0/24')  # a new node of the pod network
  assert standing == FLEET_PRIVATE
  assert why == '10.53.176.0/24 is new, inside 10.53.0.0/16 where 2 other identities of the fleet call from'
  standing, why = _standing('10.9.4.0/24')  # a new subnet elsewhere in 10/8
  assert standing == FLEET_PRIVATE and 'inside 10.0.0.0/8 where 3 other identities' in why


def test_a_private_block_the_fleet_never_uses_is_foreign():
  standing, why = _standing('192.168.4.0/24')
  assert standing == FOREIGN
  assert '192.168.0.0/16' in why and 'no other identity' in why
  assert _standing('172.31.5.0/24')[0] == FOREIGN


def test_an_internet_network_no_identity_used_is_foreign():
  standing, why = _standing('185.220.101.0/24')
  assert standing == FOREIGN and 'internet network no other identity' in why
  # One identity's NAT in the /16 does not make the /16 the fleet's.
  standing, why = _standing('34.120.9.0/24')
  assert standing == FOREIGN and '1 other identity called from 34.120.0.0/16' in why


def test_a_public_slash24_in_a_provider_range_three_identities_use():
  standing, why = _standing('52.94.133.0/24')
  assert standing == FLEET_PUBLIC_RANGE and 'inside 52.94.0.0/16 where 3 other identities' in why


def test_reserved_blocks_stand_as_public_and_are_named():
  standing, why = _standing('203.0.113.0/24')
  assert standing == FOREIGN and 'RFC 5737' in why


def test_known_and_internal():
  assert _standing('10.53.1.0/24')[0] == KNOWN
  assert _standing('52.94.9.0/24')[0] == KNOWN
  assert _standing('ec2.amazonaws.com')[0] == KNOWN  # svc called through it
  standing, why = _standing('aws internal')
  assert standing == INTERNAL_CALLER and 'cloud-internal' in why
  assert _standing('logging.googleapis.com')[0] == INTERNAL_CALLER
  assert _standing('')[0] == INTERNAL_CALLER
  standing, why = _standing('1.2.3.4:443')  # neither an address nor a name: never a pass
  assert standing == FOREIGN and 'not an address' in why
  assert _standing('ec2.amazonaws.com', identity='svc')[0] == INTERNAL_CALLER  # its own use is not the fleet's


def test_an_identitys_own_use_is_not_the_fleets():
  # 10.61/16 is pods-c's alone: a new /24 there is routine to the fleet only through 10/8 (3 others for
  # anyone else, 2 besides pods-c).
  assert 'inside 10.0.0.0/8 where 2 other identities' in _standing('10.61.9.0/24', identity='pods-c')[1]
  # pods-a and pods-b are the /16's users: to pods-b only one other identity used it, to the fleet two.
  assert 'inside 10.53.0.0/16' not in _standing('10.53.99.0/24', identity='pods-b')[1]
  assert _standing('10.53.1.0/24', identity='pods-a')[0] == FLEET_PRIVATE  # its own /24: not "known"
  # fn-1 is one of the three in 52.94/16: to it only two others, not a fleet range.
  assert _standing('52.94.133.0/24', identity='fn-1')[0] == FOREIGN
  assert _standing('52.94.133.0/24', identity='nat')[0] == FLEET_PUBLIC_RANGE


def test_a_fleet_on_one_private_block_only():
  fleet, own = _fleet({f'k{k}': _windows(f'k{k}', [f'10.{k}.0.5']) for k in range(3)})
  assert _standing('10.200.3.0/24', fleet=fleet, own=own)[0] == FLEET_PRIVATE
  assert _standing('192.168.1.0/24', fleet=fleet, own=own)[0] == FOREIGN
  assert _standing('172.16.1.0/24', fleet=fleet, own=own)[0] == FOREIGN
  # Two identities in 10/8: to either of them, only one other.
  assert _standing('10.200.3.0/24', identity='k0', fleet=fleet, own=own)[0] == FLEET_PRIVATE
  two, own2 = _fleet({f'k{k}': _windows(f'k{k}', [f'10.{k}.0.5']) for k in range(2)})
  assert _standing('10.200.3.0/24', identity='k0', fleet=two, own=own2)[0] == FOREIGN


def test_scoring_view_with_the_profiles_networks_leaves_out_its_own_ranges():
  """At scoring ``own`` is the trained profile's action hashes; its networks come beside them."""
  profile = IdentityProfile()
  for w in HISTORIES['fn-1']:
    profile.update(w.agg, w.window_end)
  own_actions = profile.seen['actions']
  counted = FLEET.view('AssumedRole', own_actions)  # networks not passed: its own /16 counts
  assert counted.network_standing('52.94.133.0/24')[0] == FLEET_PUBLIC_RANGE
  peers = FLEET.view('AssumedRole', own_actions, networks=profile.seen['networks'])
  assert peers.network_standing('52.94.133.0/24') == _standing('52.94.133.0/24', identity='fn-1')
  assert peers.peers('s3:GetObject') == counted.peers('s3:GetObject') == (7, 7)  # actions as before


def test_round_trip_keeps_the_address_space():
  back = FleetProfile.from_dict(json.loads(json.dumps(FLEET.to_dict())))
  assert back.counts_ranges()
  for network in ('10.53.176.0/24', '192.168.4.0/24', '52.94.133.0/24', '185.220.101.0/24', 'aws internal',
                  '10.53.1.0/24'):
    for identity in ('outsider', 'pods-a', 'fn-1'):
      assert _standing(network, identity, fleet=back) == _standing(network, identity)


def test_a_table_without_prefixes_from_an_older_model_answers():
  """Built as training did before: exact networks only. New networks are foreign, as they were."""
  old = FleetProfile()
  own = {}
  for identity, windows in HISTORIES.items():
    keys = set()
    for w in windows:
      keys.update(seen_key(a) for a in w.agg.actions)
      keys.update(seen_key(network_key(n)) for n in w.agg.networks)
    own[identity] = keys
    old.add('AssumedRole', keys)
  old = FleetProfile.from_dict(old.to_dict())
  assert not old.counts_ranges()
  assert _standing('10.53.1.0/24', fleet=old, own=own)[0] == KNOWN
  assert _standing('aws internal', fleet=old, own=own)[0] == INTERNAL_CALLER
  standing, why = _standing('10.53.176.0/24', fleet=old, own=own)
  assert standing == FOREIGN and 'retrain' in why
  assert _standing('52.94.133.0/24', fleet=old, own=own)[0] == FOREIGN
  assert old.view('AssumedRole', own['pods-a']).range_users('10.53.0.0/16') == (0, 7)
  assert FleetProfile().view('x', None).network_standing('10.0.0.0/24')[0] == FOREIGN  # no fleet at all


@pytest.mark.parametrize('text', ['1.2.3.4', '0.0.0.0', '255.255.255.255', '10.0.0.1', '256.1.1.1', '01.2.3.4',
                                  '1.2.3.04', '1.2.3', '1.2.3.4.5', '1..3.4', '+1.2.3.4', ' 1.2.3.4',
                                  '\u0661.2.3.4', '::1', '2001:db8::1', 'ec2.amazonaws.com', ''])
def test_network_of_reads_dotted_quads_as_ipaddress_does(text):
  import ipaddress
  try:
    addr = ipaddress.ip_address(text)
    expected = str(ipaddress.ip_network(f'{text}/{24 if addr.version == 4 else 48}', strict=False))
  except ValueError:
    expected = text.lower()[:128]
  assert network_of.__wrapped__(text) == expected
