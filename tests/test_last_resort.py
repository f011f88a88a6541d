"""A sink that refuses a message never retries the same bundle forever: it goes to the last resort.

Refusals are real: Google's pstest server refuses a 5 MB publish (its gRPC limit), the
google-cloud-pubsub client refuses one over Pub/Sub's 10 MB request limit before sending it,
and Beam's own ``WriteToBigQuery`` code runs against a stand-in for BigQuery itself that answers
``insertAll`` with per-row errors as the service does. Each refused dead letter lands in the
``--last-resort`` file with the refusal and the ``last_resort_records`` counter; the job finishes.
"""
from __future__ import annotations

import json
import os
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from postauth.pipeline import local_pubsub
from postauth.transforms.outputs import WriteDeadLetters
from postauth.transforms.pubsub_sink import PublishToPubSub, finding_message
from test_pubsub import _pull, _start_server, _topic_with_subscription

MB = 1000 * 1000


@pytest.fixture(scope='module')
def pubsub():
  server = _start_server()
  with server, local_pubsub.emulator_host(server.host):
    yield server


def _line(reason: str, size: int = 10) -> str:
  """A dead-letter line whose payload is ``size`` characters (larger than any parse would write)."""
  return json.dumps({'stage': 'parse', 'reason': reason, 'source': 'logs.jsonl', 'index': '1',
                     'raw': 'r' * size})


def _run(options: PipelineOptions, lines, **kwargs):
  p = beam.Pipeline(runner='FnApiRunner', options=options)
  _ = p | beam.Create(lines) | WriteDeadLetters(options, **kwargs)
  result = p.run()
  result.wait_until_finish()
  [counter] = result.metrics().query(MetricsFilter().with_name('last_resort_records'))['counters'] or [None]
  return counter.committed if counter else 0


def _last_resort(path: str):
  with open(path) as f:
    return sorted((json.loads(line) for line in f if line.strip()), key=lambda d: d['reason'])


def test_pubsub_dead_letter_sink_sends_what_it_refuses_to_the_last_resort(pubsub, tmp_path):
  topic, sub = _topic_with_subscription('dl-refuse')
  last = str(tmp_path / 'last-resort.jsonl')
  options = PipelineOptions([f'--findings={tmp_path}/findings.jsonl', f'--dead-letters=pubsub://{topic}',
                             f'--last-resort={last}', '--publish-retries=2', '--publish-backoff=0.05',
                             '--publish-timeout=20'])
  lines = [_line('a small one'), _line('b server refuses 5 MB', 5 * MB), _line('c client refuses 11 MB', 11 * MB)]
  t0 = time.time()
  assert _run(options, lines) == 2
  assert time.time() - t0 < 120
  got = _pull(sub, lambda m: len(m) >= 1, time.time() + 30)
  assert [json.loads(m.data)['reason'] for m in got] == ['a small one']
  server, client = _last_resort(last)
  assert server['reason'] == 'b server refuses 5 MB' and len(server['raw']) == 5 * MB
  assert server['refused_by'] == f'pubsub://{topic}' and 'ResourceExhausted' in server['refusal']
  assert 'after 2 attempt(s)' in server['refusal']
  assert client['reason'] == 'c client refuses 11 MB' and len(client['raw']) == 11 * MB
  assert 'MessageTooLargeError' in client['refusal'] and '(permanent)' in client['refusal']


def test_pubsub_findings_sink_dead_letters_a_finding_over_the_limit(pubsub, tmp_path):
  topic, _ = _topic_with_subscription('findings-refuse')
  out = str(tmp_path / 'failed.jsonl')
  huge = {'finding_id': 'f-huge', 'identity': 'arn:aws:iam::1:role/r', 'identity_type': 'ai_agent',
          'severity': 'high', 'score': 5.0, 'model_version': 'v1', 'reasons': [], 'blob': 'b' * (11 * MB)}
  ok = dict(huge, finding_id='f-ok', blob='')
  with beam.Pipeline(runner='FnApiRunner') as p:
    (p | beam.Create([huge, ok]) | PublishToPubSub(topic, finding_message, retries=2, backoff=0.05, timeout=20)
     | beam.io.WriteToText(out, shard_name_template='', num_shards=1))
  with open(out) as f:
    [d] = [json.loads(line) for line in f if line.strip()]
  assert d['stage'] == 'sink' and 'MessageTooLargeError' in d['reason'] and d['source'] == f'pubsub:{topic}'
  assert d['raw_truncated'] and d['raw_bytes'] > 11 * MB and len(d['raw']) < 1 << 20


class _Tables:
  def Get(self, request):  # apitools' client.tables.Get: the table exists
    from apache_beam.io.gcp.internal.clients import bigquery
    return bigquery.Table(tableReference=bigquery.TableReference(
        projectId=request.projectId, datasetId=request.datasetId, tableId=request.tableId))


class RefusingBigQuery:
  """BigQuery itself, as Beam's BigQueryWrapper calls it: ``tables.Get`` and ``insert_rows_json``,
  which answers rows it will not take with per-row ``invalid`` errors (the service's answer to
  a row that does not fit the table), and inserts the others."""

  def __init__(self):
    self.tables = _Tables()

  def insert_rows_json(self, table, json_rows, row_ids=None, skip_invalid_rows=False,
                       ignore_unknown_values=False, timeout=None):
    return [{'index': i, 'errors': [{'reason': 'invalid', 'location': 'raw', 'debugInfo': '',
                                     'message': 'row refused by the test table'}]}
            for i, row in enumerate(json_rows) if row['reason'].startswith('refuse')]


def test_bigquery_dead_letter_sink_sends_refused_rows_to_the_last_resort(tmp_path):
  last = str(tmp_path / 'last-resort.jsonl')
  options = PipelineOptions([f'--findings={tmp_path}/findings.jsonl',
                             '--dead-letters=bq://my-project:security.dead_letters', f'--last-resort={last}'])
  lines = [_line('kept'), _line('refused by the service'), _line('too large for insertAll', 10 * MB)]
  lines[1] = lines[1].replace('"refused by', '"refuse: refused by')
  assert _run(options, lines, bigquery_client=RefusingBigQuery()) == 2
  service, big = _last_resort(last)
  assert service['reason'] == 'refuse: refused by the service' and "'invalid'" in service['refusal']
  assert service['refused_by'] == 'bq://my-project:security.dead_letters'
  assert big['reason'] == 'too large for insertAll' and 'exceeds the maximum insert payload' in big['refusal']


def test_last_resort_defaults_beside_the_dead_letters(tmp_path):
  from postauth.transforms.sink_uris import last_resort_path
  def path(*args):
    return last_resort_path(PipelineOptions(list(args)))
  assert path(f'--findings={tmp_path}/out/f.jsonl') == str(tmp_path / 'out' / 'last-resort.jsonl')
  assert path(f'--findings={tmp_path}/f.jsonl', f'--dead-letters={tmp_path}/dl/d.jsonl') == \
      str(tmp_path / 'dl' / 'last-resort.jsonl')
  assert path('--sink=gs://b/run/f.jsonl', '--dead-letters=pubsub://projects/my-project/topics/dl') == \
      'gs://b/run/last-resort.jsonl'
  assert path('--sink=bq://my-project:s.f', '--dead-letters=bq://my-project:s.d',
              '--temp_location=gs://b/tmp') == 'gs://b/tmp/postauth/last-resort.jsonl'
  assert path('--sink=bq://my-project:s.f', '--dead-letters=bq://my-project:s.d', '--last-resort=/x/l.jsonl') \
      == '/x/l.jsonl'
  assert path('--sink=bq://my-project:s.f', '--dead-letters=bq://my-project:s.d') == \
      os.path.abspath('last-resort.jsonl')
