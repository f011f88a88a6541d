"""Sinks chosen by URI: JSON lines, Avro (batch and windowed streaming), BigQuery schema and wiring."""
from __future__ import annotations

import glob
import json
import os
import shutil

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from postauth.pipeline import options as opts
from postauth.pipeline import preflight
from postauth.pipeline.jobs import run
from postauth.transforms import outputs
from postauth.transforms import sink_uris
from postauth.transforms import sink_records
from postauth.transforms.sink_uris import SinkSpec, parse_sink


@pytest.mark.parametrize('uri,expected', [
    ('out/findings.jsonl', SinkSpec('jsonl', 'out/findings.jsonl', 'out/findings.jsonl')),
    ('gs://bucket/f/findings.avro', SinkSpec('avro', 'gs://bucket/f/findings.avro', 'gs://bucket/f/findings.avro')),
    ('pubsub://projects/my-project/topics/findings',
     SinkSpec('pubsub', 'projects/my-project/topics/findings', 'pubsub://projects/my-project/topics/findings')),
    ('projects/my-project/topics/findings',
     SinkSpec('pubsub', 'projects/my-project/topics/findings', 'projects/my-project/topics/findings')),
    ('bq://my-project:security.findings',
     SinkSpec('bigquery', 'my-project:security.findings', 'bq://my-project:security.findings')),
    ('bq://my-project.security.findings',
     SinkSpec('bigquery', 'my-project:security.findings', 'bq://my-project.security.findings')),
])
def test_sink_uris(uri, expected):
  assert parse_sink(uri) == expected


@pytest.mark.parametrize('uri,message', [
    ('kafka://broker/topic', 'unknown scheme'),
    ('out/findings.parquet', 'cannot tell its kind'),
    ('pubsub://projects/x/topics/t', 'not a Pub/Sub topic'),
    ('bq://my-project:only_dataset', 'not a BigQuery table'),
])
def test_bad_sink_uris_say_what_is_accepted(uri, message):
  with pytest.raises(ValueError, match=message):
    parse_sink(uri)


def _options(*args):
  return PipelineOptions(['--inventory=i.csv', '--model-dir=m', *args])


@pytest.mark.parametrize('args,message', [
    (['--streaming', '--subscription=projects/my-project/subscriptions/s',
      '--topic=projects/my-project/topics/t', '--findings=f.jsonl'], 'not both'),
    (['--subscription=projects/my-project/subscriptions/s', '--findings=f.jsonl'], 'needs --streaming'),
    (['--streaming', '--events=x', '--subscription=projects/my-project/subscriptions/s',
      '--findings=f.jsonl'], 'not both'),
    (['--events=x', '--timestamp-attribute=ts', '--findings=f.jsonl'], 'applies to a Pub/Sub source'),
    (['--streaming', '--subscription=projects/x/subscriptions/s', '--findings=f.jsonl'],
     'is not projects/PROJECT/subscriptions/NAME'),
    (['--events=x', '--sink=kafka://b/t'], 'unknown scheme'),
    (['--events=x', '--sink=bq://my-project:ds.t'], '--dead-letters is needed'),
    (['--events=x', '--sink=bq://my-project:ds.t', '--dead-letters=dl.jsonl',
      '--bigquery-method=FILE_LOADS'], '--temp_location'),
    (['--events=x', '--findings=f.jsonl', '--dead-letters=f.jsonl'], 'also a findings sink'),
    (['--events=x', '--findings=f.jsonl', '--publish-retries=0'], '--publish-retries'),
    (['--events=x'], r'--findings \(or --sink\)'),
    (['--streaming'], r'--events \(or --subscription/--topic\)'),
])
def test_invalid_source_and_sink_combinations_fail_before_submission(args, message):
  with pytest.raises(opts.OptionsError, match=message):
    preflight.validate_run(_options(*args))


def test_sinks_can_be_repeated_and_comma_separated():
  o = _options('--events=x', '--findings=a.jsonl', '--sink=b.avro,projects/my-project/topics/alerts',
               '--sink', 'a.jsonl', '--sink', 'bq://my-project:ds.t')
  preflight.validate_run(o)
  assert [s.kind for s in sink_uris.sink_specs(o)] == ['jsonl', 'avro', 'pubsub', 'bigquery']
  assert sink_uris.dead_letter_spec(o).target == os.path.abspath('dead-letter.jsonl')


# --- a batch run writing JSON lines, Avro and Avro dead letters at once ----------------------

@pytest.fixture(scope='module')
def multi_sink_run(sample, model_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp('sinks')
  events = out / 'events'
  events.mkdir()
  for path in glob.glob(os.path.join(sample['dir'], 'live', '*')):
    shutil.copy(path, events)
  (events / 'broken.jsonl').write_text('{"eventTime": "2026-11-05T01:00:00Z",\n[1, 2]\n')
  result = run([f'--events={events}/*', f'--inventory={sample["inventory"]}', f'--model-dir={model_dir}',
                f'--findings={out}/findings.jsonl', f'--sink={out}/findings.avro',
                f'--dead-letters={out}/dead.avro', '--runner=FnApiRunner'])
  with open(out / 'findings.jsonl') as f:
    findings = [json.loads(line) for line in f]
  return findings, outputs.read_avro(str(out / 'findings.avro')), outputs.read_avro(str(out / 'dead.avro')), result


def test_avro_sink_holds_the_same_findings_as_json_lines(multi_sink_run):
  findings, avro, _, _ = multi_sink_run
  assert findings and len(avro) == len(findings)
  by_id = {r['finding_id']: r for r in avro}
  for f in findings:
    r = by_id[f['finding_id']]
    assert r['window_start'].strftime('%Y-%m-%dT%H:%M:%SZ') == f['window_start']
    # every field survives, incl. mixed int/float/str reason values through the union type
    assert sink_records.finding_from_avro(r) == f


def test_dead_letters_go_to_their_own_avro_sink(multi_sink_run):
  _, _, dead, result = multi_sink_run
  assert len(dead) == 2
  assert all(d['stage'] == 'parse' and d['reason'] and d['source'].endswith('broken.jsonl') for d in dead)
  assert sorted(d['raw'] for d in dead) == ['[1, 2]', '{"eventTime": "2026-11-05T01:00:00Z",']
  assert result['counters']['dead_lettered'] == 2


def test_bigquery_schema_validates_every_produced_row(multi_sink_run):
  from apache_beam.io.gcp import bigquery_tools
  findings, _, dead, _ = multi_sink_run
  schema = sink_records.bigquery_schema('finding')
  table_schema = bigquery_tools.get_bq_tableschema(schema)  # Beam's own parser accepts it
  assert [f.name for f in table_schema.fields] == [f['name'] for f in schema['fields']]
  rows = [sink_records.finding_to_bigquery(f) for f in findings]
  assert any(r['value_text'] for row in rows for r in row['reasons']), 'expected a text-valued reason'
  for row in rows:
    assert sink_records.validate_bigquery_row(schema['fields'], row) == []
    assert json.loads(json.dumps(row)) == row  # streaming inserts send JSON
  dl_fields = sink_records.bigquery_schema('dead_letter')['fields']
  for d in dead:
    assert sink_records.validate_bigquery_row(dl_fields, d) == []


def test_bigquery_row_validation_catches_type_and_mode_errors(multi_sink_run):
  fields = sink_records.bigquery_schema('finding')['fields']
  good = sink_records.finding_to_bigquery(multi_sink_run[0][0])
  bad = dict(good, score='4.2', event_count=3.0, registered='true', window_start='yesterday')
  bad.pop('identity')
  bad['reasons'] = [dict(good['reasons'][0], value='12', detail=None)]
  bad['score_components'] = {'isolation_forest': 1.0}
  bad['extra'] = 1
  errors = '\n'.join(sink_records.validate_bigquery_row(fields, bad))
  for expected in ('score: FLOAT got str', 'event_count: INTEGER got float', 'registered: BOOLEAN got str',
                   "window_start: TIMESTAMP got 'yesterday'", 'identity: REQUIRED but missing',
                   'reasons[0].value: FLOAT got str', 'reasons[0].detail: REQUIRED but missing',
                   'score_components.feature_rarity: REQUIRED but missing', 'extra: not in the schema'):
    assert expected in errors


def _transforms(pipeline, cls):
  found = []

  def walk(node):
    if isinstance(node.transform, cls):
      found.append(node.transform)
    for part in node.parts:
      walk(part)
  walk(pipeline.transforms_stack[0])
  return found


@pytest.mark.parametrize('streaming', [False, True])
def test_bigquery_sinks_build_with_the_shipped_schema_and_dispositions(sample, model_dir, streaming):
  from apache_beam.io.gcp.bigquery import WriteToBigQuery
  from apache_beam.io.gcp.bigquery_tools import RetryStrategy
  from apache_beam.io.gcp.pubsub import ReadFromPubSub
  from postauth.pipeline.detect import build_detection
  source = (['--streaming', '--subscription=projects/my-project/subscriptions/cloudtrail']
            if streaming else [f'--events={sample["dir"]}/live/*'])
  options = PipelineOptions([f'--inventory={sample["inventory"]}', f'--model-dir={model_dir}', *source,
                             '--sink=bq://my-project:security.findings',
                             '--dead-letters=bq://my-project:security.dead_letters'])
  preflight.validate_run(options)
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=options)
  build_detection(p, options)  # built, not run: BigQuery is not reachable here
  writes = {str(w.table_reference.datasetId) + '.' + str(w.table_reference.tableId): w
            for w in _transforms(p, WriteToBigQuery)}
  assert set(writes) == {'security.findings', 'security.dead_letters'}
  for name, kind, retry in (('security.findings', 'finding', RetryStrategy.RETRY_ON_TRANSIENT_ERROR),
                            ('security.dead_letters', 'dead_letter', RetryStrategy.RETRY_ON_TRANSIENT_ERROR)):
    w = writes[name]
    assert w.table_reference.projectId == 'my-project'
    assert w.schema == sink_records.bigquery_schema(kind)
    assert (w.create_disposition, w.write_disposition, w.method) == (
        'CREATE_IF_NEEDED', 'WRITE_APPEND', 'STREAMING_INSERTS')
    assert w.insert_retry_strategy == retry
  assert bool(_transforms(p, ReadFromPubSub)) == streaming


# --- streaming: windowed Avro parts, compacted at the end of a bounded replay -----------------

def test_streaming_avro_sink_writes_window_parts_and_compacts_them(tmp_path):
  path = str(tmp_path / 'findings.avro')
  schema = sink_records.avro_schema('dead_letter')
  rows = [{'stage': 'parse', 'reason': f'r{i}', 'source': 's', 'index': str(i), 'raw': 'x'} for i in range(6)]
  t0 = 1_800_000_000
  stream = (test_stream.TestStream()
            .advance_watermark_to(t0)
            .add_elements([TimestampedValue(r, t0 + 60 * int(r['index'])) for r in rows[:3]])
            .advance_watermark_to(t0 + 3600)
            .add_elements([TimestampedValue(r, t0 + 3600 + 60 * int(r['index'])) for r in rows[3:]])
            .advance_watermark_to_infinity())
  o = PipelineOptions()
  o.view_as(StandardOptions).streaming = True
  with beam.Pipeline(runner='BundleBasedDirectRunner', options=o) as p:
    p | stream | outputs.WriteAvro(path, schema, streaming=True)
  parts = sorted(glob.glob(path + '.parts/*.avro'))
  assert len(parts) == 2  # one file per hourly window
  assert [sorted(r['index'] for r in outputs.read_avro(x)) for x in parts] == [['0', '1', '2'], ['3', '4', '5']]
  assert outputs.compact_avro_parts(path, schema, key='index') == 6
  assert sorted(r['index'] for r in outputs.read_avro(path)) == ['0', '1', '2', '3', '4', '5']


def test_run_help_lists_the_source_and_sink_options():
  from postauth.pipeline.cli import _help
  out = _help('run')
  for flag in ('--subscription', '--topic', '--timestamp-attribute', '--dedup-seconds', '--sink',
               '--dead-letters', '--publish-retries', '--publish-backoff', '--publish-timeout',
               '--bigquery-method', '--direct-pubsub-watermark', '--watermark-max-delay',
               '--watermark-idle-seconds', '--pubsub-max-messages'):
    assert flag in out
  assert '--subscription' not in _help('train')


def test_batch_file_writer_writes_whole_files_even_when_empty(tmp_path):
  """A batch file sink writes one whole file per path: sorted lines, an empty file for no
  input (an earlier run's file is replaced, not kept), no temporary file left beside it."""
  import apache_beam as beam
  from postauth.transforms.sinks import WriteWholeFiles
  out = tmp_path / 'sub' / 'lines.jsonl'
  for lines, expected in ((['{"b": 2}', '{"a": 1}'], '{"a": 1}\n{"b": 2}\n'), ([], '')):
    with beam.Pipeline(runner='FnApiRunner') as p:
      _ = (p | beam.Create(lines, reshuffle=False).with_output_types(str)
           | WriteWholeFiles(str(out)))
    assert out.read_text() == expected
    assert sorted(x.name for x in out.parent.iterdir()) == ['lines.jsonl']
  two = tmp_path / 'two'
  with beam.Pipeline(runner='FnApiRunner') as p:
    _ = (p | beam.Create(['x', 'y', 'z']).with_output_types(str)
         | WriteWholeFiles(str(two / 'all.txt'),
                           lambda lines: {str(two / 'all.txt'): lines, str(two / 'last.txt'): lines[-1:]}))
  assert (two / 'all.txt').read_text() == 'x\ny\nz\n' and (two / 'last.txt').read_text() == 'z\n'


def test_gathered_files_are_counted_behind_a_grouping_so_the_writing_stage_has_an_output(tmp_path):
  """``FileGathering.write`` counts the files it wrote (``files_written``) in a step behind a
  grouping: the writing stage then has a data output, which Prism needs not to poll the stage's
  closed data channel, a core busy, while it writes (docs/performance.md)."""
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter
  from postauth.transforms.sinks import FileGathering
  p = beam.Pipeline(runner='FnApiRunner')
  files = FileGathering()
  files.add(p | 'A' >> beam.Create(['a']).with_output_types(str), str(tmp_path / 'a.jsonl'))
  files.add(p | 'B' >> beam.Create([], reshuffle=False).with_output_types(str), str(tmp_path / 'b.jsonl'),
            render=lambda lines: {str(tmp_path / 'b.jsonl'): lines, str(tmp_path / 'c.jsonl'): lines})
  files.write()
  proto = p.to_runner_api()
  result = p.run()
  result.wait_until_finish()
  counted = result.metrics().query(MetricsFilter().with_name('files_written'))['counters']
  assert sum(c.committed for c in counted) == 3
  assert sorted(x.name for x in tmp_path.iterdir()) == ['a.jsonl', 'b.jsonl', 'c.jsonl']
  writes = [t for t in proto.components.transforms.values() if t.unique_name == 'WriteFiles/Write']
  written = set(writes[0].outputs.values())
  readers = [t.unique_name for t in proto.components.transforms.values()
             if written & set(t.inputs.values()) and not t.subtransforms]
  assert len(readers) == 1 and readers[0].startswith('WriteFilesCounted/')


# --- a restart loses nothing: no run deletes or overwrites another's parts ---------------------

def _stream_one_run(path, rows, t0):
  stream = (test_stream.TestStream().advance_watermark_to(t0)
            .add_elements([TimestampedValue(json.dumps(r), t0 + 60) for r in rows])
            .advance_watermark_to_infinity())
  o = PipelineOptions()
  o.view_as(StandardOptions).streaming = True
  with beam.Pipeline(runner='BundleBasedDirectRunner', options=o) as p:
    p | stream | outputs.WriteJsonLines(path, streaming=True)


def test_a_restarted_streaming_job_writes_beside_the_earlier_runs_part_of_the_same_hour(tmp_path):
  """The same window and pane in two runs (a Pub/Sub or watch job restarted within the hour):
  before, the second run's part had the first's name and replaced it."""
  from postauth.transforms.sinks import compact_parts
  path, t0 = str(tmp_path / 'dead-letter.jsonl'), 1_780_000_000 - 1_780_000_000 % 3600
  _stream_one_run(path, [{'run': 1}], t0)
  _stream_one_run(path, [{'run': 2}], t0)
  assert len(glob.glob(path + '.parts/*.jsonl')) == 2
  assert compact_parts(path) == 2
  assert sorted(json.loads(l)['run'] for l in open(path)) == [1, 2]


def _earlier_parts(tmp_path):
  """Parts an earlier run left at the findings, dead-letter and suppressed paths."""
  paths = [tmp_path / 'findings.jsonl', tmp_path / 'dead-letter.jsonl', tmp_path / 'suppressed.jsonl']
  for p in paths:
    os.makedirs(str(p) + '.parts')
    with open(str(p) + '.parts/earlier-run.jsonl', 'w') as f:
      f.write(json.dumps({'finding_id': 'f1', 'run': 'earlier'}) + '\n')
  return [f'--findings={paths[0]}', f'--dead-letters={paths[1]}', f'--suppressed={paths[2]}'], paths


def test_a_restarted_watch_job_keeps_the_earlier_runs_parts(tmp_path):
  from postauth.pipeline.jobs import pipeline_options
  flags, paths = _earlier_parts(tmp_path)
  options = pipeline_options(['--streaming', f'--events-watch={tmp_path}/in/*', *flags])
  moved = outputs.prepare_file_sinks(options)
  assert all(os.path.exists(f'{p}.parts/earlier-run.jsonl') for p in paths) and not moved
  # its compaction joins them with its own parts (this run wrote none here)
  assert outputs.finish_file_sinks(options) == {str(paths[0]): 1, str(paths[1]): 1}


def test_a_replay_sets_the_earlier_runs_parts_aside_instead_of_deleting_them(tmp_path):
  """A bounded replay recomputes its files: its earlier parts are kept beside, not compacted
  with its own (its dead letters would count twice)."""
  from postauth.pipeline.jobs import pipeline_options
  flags, paths = _earlier_parts(tmp_path)
  options = pipeline_options(['--streaming', f'--events={tmp_path}/in/*', *flags])
  aside = outputs.prepare_file_sinks(options)
  assert len(aside) == 3 and all(os.path.exists(os.path.join(a, 'earlier-run.jsonl')) for a in aside)
  assert sorted(os.path.dirname(a) for a in aside) == sorted(f'{p}.parts' for p in paths)
  assert outputs.finish_file_sinks(options) == {str(paths[0]): 0, str(paths[1]): 0}
