"""CloudTrail as exports really write it: lower-case keys, nanosecond timestamps, IAM users
without an ARN, AWS service events without an actor (skipped, not dead letters)."""
from __future__ import annotations

import os

import orjson
import pytest

from conftest import shared_data
from postauth.pipeline.parse_report import file_records
from postauth.domain.event import Event
from postauth.transforms.parse import RecordParser
from postauth.transforms.records import RawRecord

PARSER = RecordParser()


def items(obj):
  raw = orjson.dumps(obj)
  return [item for _, item in PARSER.parse_items(RawRecord(raw, obj, '', 'x.jsonl#0'))]


def one_event(obj) -> Event:
  (item,) = items(obj)
  assert item.event is not None, item.reason
  return item.event


LOWER = {  # as Athena / CloudTrail Lake / Security Lake write it
    'eventversion': '1.08', 'eventtime': '2024-06-03 15:23:22.123456789', 'eventsource': 's3.amazonaws.com',
    'eventname': 'GetObject', 'awsregion': 'eu-west-1', 'sourceipaddress': '198.51.100.7',
    'useragent': 'aws-cli/2.15.30', 'eventid': 'e-lower-1', 'recipientaccountid': '123456789012',
    'requestparameters': '{"bucketName":"data-lake","key":"exports/a.csv"}',
    'useridentity': {'type': 'AssumedRole', 'principalid': 'AROAEXAMPLE:sess',
                     'arn': 'arn:aws:sts::123456789012:assumed-role/etl-role/sess',
                     'sessioncontext': {'sessionissuer': {'type': 'Role',
                                                          'arn': 'arn:aws:iam::123456789012:role/etl-role'}}},
    'errorcode': None, 'readonly': 'true'}


def test_lower_case_keys_and_nanosecond_space_timestamps():
  e = one_event(LOWER)
  assert e.identity == 'arn:aws:iam::123456789012:role/etl-role'
  assert (e.service, e.action, e.category) == ('s3', 'GetObject', 'data_read')
  assert e.resource == 'arn:aws:s3:::data-lake/exports/a.csv'  # requestparameters given as JSON text
  assert e.event_time == pytest.approx(1717428202.123456)
  assert (e.region, e.source_ip, e.event_id, e.success, e.read_only) == (
      'eu-west-1', '198.51.100.7', 'e-lower-1', True, True)
  # the same record in camelCase gives the same event
  camel = {'eventVersion': '1.08', 'eventTime': '2024-06-03T15:23:22.123456Z', 'eventSource': 's3.amazonaws.com',
           'eventName': 'GetObject', 'awsRegion': 'eu-west-1', 'sourceIPAddress': '198.51.100.7',
           'userAgent': 'aws-cli/2.15.30', 'eventID': 'e-lower-1', 'readOnly': True,
           'requestParameters': {'bucketName': 'data-lake', 'key': 'exports/a.csv'},
           'userIdentity': {'type': 'AssumedRole', 'arn': 'arn:aws:sts::123456789012:assumed-role/etl-role/sess',
                            'sessionContext': {'sessionIssuer': {'arn': 'arn:aws:iam::123456789012:role/etl-role'}}}}
  assert one_event(camel)._replace(raw_ref='', principal_raw='') == e._replace(raw_ref='', principal_raw='')


def test_iam_user_with_only_user_name_gets_its_arn():
  record = {'eventSource': 'signin.amazonaws.com', 'eventName': 'ConsoleLogin', 'eventTime': '2024-01-15T10:30:00Z',
            'recipientAccountId': '111122223333', 'userIdentity': {'type': 'IAMUser', 'userName': 'alice'}}
  assert one_event(record).identity == 'arn:aws:iam::111122223333:user/alice'
  record['userIdentity']['accountId'] = '444455556666'  # the identity's own account wins
  assert one_event(record).identity == 'arn:aws:iam::444455556666:user/alice'
  root = dict(record, userIdentity={'type': 'Root', 'userName': 'root'})
  assert one_event(root).identity == 'arn:aws:iam::111122223333:root'
  # no account anywhere: still a dead letter, not a made-up identity
  (item,) = items({k: v for k, v in record.items() if k != 'recipientAccountId'} |
                  {'userIdentity': {'type': 'IAMUser', 'userName': 'alice'}})
  assert item.event is None and not item.skipped and 'missing identity' in item.reason


def test_service_event_without_actor_is_skipped_not_dead_lettered():
  record = {'eventSource': 'sso.amazonaws.com', 'eventName': 'Authenticate', 'eventType': 'AwsServiceEvent',
            'eventTime': '2024-06-03 15:23:22.000000000', 'eventID': 'svc-1'}
  (item,) = items(record)
  assert item.event is None and item.skipped and 'service event without an actor' in item.reason
  # an API call without an actor is still bad input
  (item,) = items(dict(record, eventType='AwsApiCall'))
  assert item.event is None and not item.skipped and 'missing userIdentity' in item.reason


def test_postauth_parse_counts_add_up_with_skipped(tmp_path, capsys):
  from test_parse_job import parse_cli
  lines = [LOWER, {'eventSource': 'sso.amazonaws.com', 'eventName': 'Authenticate', 'eventType': 'AwsServiceEvent',
                   'eventTime': '2024-06-03 15:23:22.000000000'},
           {'eventSource': 's3.amazonaws.com', 'eventName': 'GetObject', 'eventTime': '2024-06-03T15:23:22Z'}]
  src = tmp_path / 'in' / 'ct.jsonl'
  src.parent.mkdir()
  src.write_bytes(b'\n'.join(orjson.dumps(l) for l in lines) + b'\nnot json\n')
  code, s = parse_cli(capsys, f'--events={src}', f'--out={tmp_path / "out"}')
  assert code == 0
  assert (s['read'], s['parsed'], s['dead_lettered'], s['skipped']) == (4, 1, 2, 1)
  assert s['read'] == s['parsed'] + s['dead_lettered'] + s['skipped']
  assert s['skipped_by_reason'] == {'cloudtrail: AWS service event without an actor': 1}


def test_panther_cloudtrail_fixtures_dead_letter_less():
  path = shared_data('panther-rule-tests', 'aws-cloudtrail.jsonl')
  if not os.path.exists(path):
    pytest.skip(f'{path} absent (../shared/data)')
  n = parsed = dead = skipped = 0
  for record in file_records(path):
    for _, item in PARSER.parse_items(record):
      n += 1
      parsed += item.event is not None
      skipped += item.skipped
      dead += item.event is None and not item.skipped
  assert n == parsed + dead + skipped == 461
  assert skipped >= 2 and dead <= 31  # was 40 (8.7%) before lower-case keys and built ARNs
