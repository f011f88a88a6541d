"""Sinks chosen by URI, several at once, for findings and for dead letters.

``PATH.jsonl`` JSON lines, ``PATH.avro`` Avro (schema shipped in
``transforms/schemas``), ``pubsub://projects/P/topics/T`` (or the bare topic
path) one message per record, ``bq://PROJECT:DATASET.TABLE`` BigQuery through
Beam's ``WriteToBigQuery`` with the shipped table schema. Files are written
whole in batch and as windowed parts in streaming (``fileio.WriteToFiles``);
``prepare_file_sinks``/``finish_file_sinks`` clear and compact the parts of a
bounded streaming replay. Deliveries that fail (Pub/Sub after retries, BigQuery
rows the service rejects) come back from ``apply_sinks`` as dead letters, so the
caller routes them to the dead-letter sink: a finding is delivered or
dead-lettered, never lost.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import re
import typing
from typing import Any, Dict, List, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.transforms.compact import LatestVersions, compact_findings, versions_path
from postauth.transforms.parse import dead_letter
from postauth.transforms.versions import version_rank
from postauth.transforms.sinks import WriteJsonLines, WriteParts, clear_parts, compact_parts, parts_dir

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'schemas')
FINDING, DEAD_LETTER = 'finding', 'dead_letter'
KINDS = ('jsonl', 'avro', 'pubsub', 'bigquery')

_PROJECT = r'[a-z][-a-z0-9]{4,28}[a-z0-9]'
TOPIC_RE = re.compile(rf'^projects/{_PROJECT}/topics/[A-Za-z][-A-Za-z0-9._~%+]{{2,254}}$')
SUBSCRIPTION_RE = re.compile(rf'^projects/{_PROJECT}/subscriptions/[A-Za-z][-A-Za-z0-9._~%+]{{2,254}}$')
TABLE_RE = re.compile(rf'^(?P<project>(?:[a-z][-a-z0-9.]*[a-z0-9]:)?{_PROJECT})[:.]'
                      r'(?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[-\w$]{1,1024})$')
FILE_SCHEMES = ('gs', 's3', 'file', 'hdfs', 'az', 'azfs')


def load_schema(name: str) -> Dict:
  with open(os.path.join(SCHEMA_DIR, name)) as f:
    return json.load(f)


def avro_schema(record_kind: str) -> Dict:
  return load_schema(f'{record_kind}.avsc')


def bigquery_schema(record_kind: str) -> Dict:
  """The table schema as Beam's WriteToBigQuery takes it: {'fields': [...]}."""
  return load_schema(f'{record_kind}.bigquery.json')


class SinkSpec(typing.NamedTuple):
  kind: str  # jsonl | avro | pubsub | bigquery
  target: str  # a path, projects/P/topics/T, or PROJECT:DATASET.TABLE
  uri: str
  format: str = 'postauth'  # or 'ocsf': OCSF Detection Findings (PATH.ocsf.jsonl, ?format=ocsf)


def parse_sink(uri: str, default_kind: Optional[str] = None) -> SinkSpec:
  """A sink URI -> SinkSpec; ValueError saying what is accepted when it is not understood."""
  u = (uri or '').strip()
  accepted = ('use PATH.jsonl, PATH.ocsf.jsonl, PATH.avro, pubsub://projects/P/topics/T '
              '(or projects/P/topics/T; ?format=ocsf for OCSF) or bq://PROJECT:DATASET.TABLE')
  if not u:
    raise ValueError(f'empty sink URI: {accepted}')
  if u.startswith('pubsub://') or u.startswith('projects/'):
    topic = u[len('pubsub://'):] if u.startswith('pubsub://') else u
    topic, _, query = topic.partition('?')
    if not TOPIC_RE.match(topic):
      raise ValueError(f'sink {uri!r}: not a Pub/Sub topic path projects/PROJECT/topics/TOPIC')
    if query not in ('', 'format=ocsf', 'format=postauth'):
      raise ValueError(f'sink {uri!r}: unknown query {query!r}; only ?format=ocsf is understood')
    return SinkSpec('pubsub', topic, u, 'ocsf' if query == 'format=ocsf' else 'postauth')
  if u.startswith('bq://') or u.startswith('bigquery://'):
    spec = u.split('://', 1)[1]
    m = TABLE_RE.match(spec)
    if not m:
      raise ValueError(f'sink {uri!r}: not a BigQuery table bq://PROJECT:DATASET.TABLE')
    return SinkSpec('bigquery', f'{m["project"]}:{m["dataset"]}.{m["table"]}', u)
  scheme = u.split('://', 1)[0] if '://' in u else ''
  if scheme and scheme not in FILE_SCHEMES:
    raise ValueError(f'sink {uri!r}: unknown scheme {scheme}://; {accepted}')
  if u.endswith('.avro'):
    return SinkSpec('avro', u, u)
  if u.endswith('.ocsf.jsonl'):
    return SinkSpec('jsonl', u, u, 'ocsf')
  if u.endswith(('.jsonl', '.json', '.ndjson')) or default_kind == 'jsonl':
    return SinkSpec('jsonl', u, u)
  raise ValueError(f'sink {uri!r}: cannot tell its kind; {accepted}')


def sink_specs(options: PipelineOptions) -> List[SinkSpec]:
  """Every findings sink: --findings PATH (JSON lines) and each --sink URI, in order, once each."""
  from postauth.pipeline.options import DetectOptions, SinkOptions
  uris = []
  findings = options.view_as(DetectOptions).findings
  specs = [parse_sink(findings, 'jsonl')] if findings else []
  for item in options.view_as(SinkOptions).sinks or []:
    uris += [u for u in item.split(',') if u.strip()]
  specs += [parse_sink(u) for u in uris]
  seen, out = set(), []
  for s in specs:
    if (s.kind, s.target) not in seen:
      seen.add((s.kind, s.target))
      out.append(s)
  return out


def dead_letter_spec(options: PipelineOptions) -> SinkSpec:
  """--dead-letters URI, else dead-letter.jsonl beside the first file sink."""
  from postauth.pipeline.options import EventOptions
  uri = options.view_as(EventOptions).dead_letters
  if uri:
    return parse_sink(uri, 'jsonl')
  files = [s for s in sink_specs(options) if s.kind in ('jsonl', 'avro')]
  if not files:
    raise ValueError('--dead-letters is needed when no file sink (--findings or --sink PATH) is given')
  base = files[0].target
  if '://' in base:
    return SinkSpec('jsonl', base.rsplit('/', 1)[0] + '/dead-letter.jsonl', '')
  path = os.path.join(os.path.dirname(os.path.abspath(base)), 'dead-letter.jsonl')
  return SinkSpec('jsonl', path, path)


def validate_io(options: PipelineOptions) -> None:
  """Sources and sinks fail here, before submission, with a message saying what to fix."""
  from postauth.pipeline.options import EventOptions, OptionsError, PubSubSourceOptions, SinkOptions
  ps, so = options.view_as(PubSubSourceOptions), options.view_as(SinkOptions)
  streaming = options.view_as(StandardOptions).streaming
  if ps.subscription and ps.topic:
    raise OptionsError('give --subscription or --topic, not both')
  if (ps.subscription or ps.topic) and options.view_as(EventOptions).events:
    raise OptionsError('give --events (files) or --subscription/--topic (Pub/Sub), not both')
  if (ps.subscription or ps.topic) and not streaming:
    raise OptionsError('reading Pub/Sub (--subscription/--topic) needs --streaming')
  if ps.timestamp_attribute is not None and not (ps.subscription or ps.topic):
    raise OptionsError('--timestamp-attribute applies to a Pub/Sub source (--subscription/--topic)')
  if ps.subscription and not SUBSCRIPTION_RE.match(ps.subscription):
    raise OptionsError(f'--subscription {ps.subscription!r} is not projects/PROJECT/subscriptions/NAME')
  if ps.topic and not TOPIC_RE.match(ps.topic):
    raise OptionsError(f'--topic {ps.topic!r} is not projects/PROJECT/topics/NAME')
  for flag, value, ok in (('--dedup-seconds', ps.dedup_seconds, ps.dedup_seconds >= 0),
                          ('--watermark-max-delay', ps.watermark_max_delay, ps.watermark_max_delay >= 0),
                          ('--watermark-idle-limit', ps.watermark_idle_limit, ps.watermark_idle_limit >= 0),
                          ('--watermark-idle-seconds', ps.watermark_idle_seconds,
                           ps.watermark_idle_seconds > 0),
                          ('--pubsub-max-messages', ps.pubsub_max_messages, ps.pubsub_max_messages >= 1),
                          ('--publish-retries', so.publish_retries, so.publish_retries >= 1),
                          ('--publish-backoff', so.publish_backoff, so.publish_backoff >= 0),
                          ('--publish-timeout', so.publish_timeout, so.publish_timeout > 0)):
    if not ok:
      raise OptionsError(f'{flag} {value} is out of range')
  try:
    specs = sink_specs(options)
    dead = dead_letter_spec(options)
  except ValueError as e:
    raise OptionsError(str(e)) from None
  if not specs:
    raise OptionsError('no findings sink: give --findings PATH or --sink URI')
  if any(s.target == dead.target for s in specs):
    raise OptionsError(f'the dead-letter sink {dead.target} is also a findings sink')
  if any(s.kind == 'bigquery' for s in specs + [dead]) and so.bigquery_method == 'FILE_LOADS':
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    if not (options.view_as(GoogleCloudOptions).temp_location or '').startswith('gs://'):
      raise OptionsError('--bigquery-method FILE_LOADS needs --temp_location gs://BUCKET/PATH')


# --- record conversions -----------------------------------------------------------------------

def _ts(text: str) -> datetime.datetime:
  return datetime.datetime.strptime(text, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)


def _avro_reason(r: Dict) -> Dict:
  return {'feature': r.get('feature'), 'rule': r.get('rule'), 'value': r.get('value'),
          'baseline': r.get('baseline'), 'detail': str(r.get('detail', '')),
          'severity': r.get('severity'), 'actions': [str(a) for a in r.get('actions') or []]}


def finding_to_avro(f: Dict) -> Dict:
  """A finding dict -> a record of transforms/schemas/finding.avsc (typed timestamps)."""
  row = dict(f)
  row['kind'] = f.get('kind', 'anomaly')
  row['window_start'], row['window_end'] = _ts(f['window_start']), _ts(f['window_end'])
  row['peak_window'] = [_ts(t) for t in f.get('peak_window', [])]
  row['score_components'] = {k: float((f.get('score_components') or {}).get(k, 0.0))
                             for k in ('isolation_forest', 'feature_rarity')}
  row['severity_basis'] = {str(k): str(v) for k, v in (f.get('severity_basis') or {}).items()}
  row['reasons'] = [_avro_reason(r) for r in f['reasons']]
  row['suppressed_reasons'] = [_avro_reason(r) for r in f.get('suppressed_reasons') or []]
  row['rules'] = list(f.get('rules') or [])
  row['actions'] = {str(k): int(v) for k, v in (f.get('actions') or {}).items()}
  row['resources'] = {str(k): int(v) for k, v in (f.get('resources') or {}).items()}
  row['occurrences'] = int(f.get('occurrences', 1))
  row['last_occurrence'] = _ts(f['last_occurrence']) if f.get('last_occurrence') else None
  row['occurrence_ids'] = list(f.get('occurrence_ids') or [])
  row['identities'] = list(f.get('identities') or [])  # a fleet-change notice's identities
  row['first_detected_at'] = _ts(f.get('first_detected_at') or f['window_end'])
  for key in ('updates', 'pages'):
    row[key] = int(f.get(key) or 0)
  for key in ('page', 'severity_raised'):
    row[key] = bool(f.get(key))
  row['evidence'] = [dict(e, new=list(e.get('new') or [])) for e in f.get('evidence') or []]
  row['window_actions'] = [dict(w, actions={str(k): int(v) for k, v in w['actions'].items()})
                           for w in f.get('window_actions') or []]
  return row


def _number_or_text(value: Any):
  if isinstance(value, bool):
    return float(value), None
  if isinstance(value, (int, float)):
    return float(value), None
  return None, None if value is None else str(value)


def _rfc3339(t: datetime.datetime) -> str:
  return t.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def finding_from_avro(row: Dict) -> Dict:
  """A record read from a findings Avro file -> the finding dict the JSON-lines sink writes."""
  f = dict(row)
  f['window_start'], f['window_end'] = _rfc3339(row['window_start']), _rfc3339(row['window_end'])
  f['peak_window'] = [_rfc3339(t) for t in row.get('peak_window', [])]
  for key in ('reasons', 'suppressed_reasons'):
    f[key] = [{k: v for k, v in r.items() if v is not None and not (k == 'actions' and not v)}
              for r in row.get(key) or []]
  if not f['suppressed_reasons']:
    del f['suppressed_reasons']
  if row.get('last_occurrence'):
    f['last_occurrence'] = _rfc3339(row['last_occurrence'])
  else:
    f.pop('last_occurrence', None)
  if not f.get('occurrence_ids'):
    f.pop('occurrence_ids', None)
  if not f.get('identities'):
    f.pop('identities', None)
  if row.get('first_detected_at'):
    f['first_detected_at'] = _rfc3339(row['first_detected_at'])
  for key in ('evidence', 'window_actions'):  # a fleet-change notice has neither
    if not f.get(key):
      f.pop(key, None)
  if row.get('kind') == 'rule' and not row.get('model_version'):
    f['score_components'] = {}  # an unregistered-identity finding has no model score
  return f


def _bigquery_reason(r: Dict) -> Dict:
  value, value_text = _number_or_text(r.get('value'))
  baseline, baseline_text = _number_or_text(r.get('baseline'))
  return {'feature': r.get('feature'), 'rule': r.get('rule'), 'detail': str(r.get('detail', '')),
          'value': value, 'value_text': value_text, 'baseline': baseline,
          'baseline_text': baseline_text, 'severity': r.get('severity'),
          'actions': [str(a) for a in r.get('actions') or []]}


def _counted(d: Optional[Dict]) -> List[Dict]:
  return [{'name': str(k), 'count': int(v)} for k, v in (d or {}).items()]


def finding_to_bigquery(f: Dict) -> Dict:
  """A finding dict -> a row of transforms/schemas/finding.bigquery.json."""
  return {
      'finding_id': f['finding_id'], 'kind': f.get('kind', 'anomaly'), 'identity': f['identity'],
      'identity_type': f['identity_type'],
      'window_start': f['window_start'], 'window_end': f['window_end'], 'score': float(f['score']),
      'score_components': {k: float((f.get('score_components') or {}).get(k, 0.0))
                           for k in ('isolation_forest', 'feature_rarity')},
      'severity': f['severity'],
      'severity_basis': [{'key': str(k), 'value': str(v)} for k, v in (f.get('severity_basis') or {}).items()],
      'model_version': f['model_version'], 'cohort': f['cohort'],
      'reasons': [_bigquery_reason(r) for r in f['reasons']],
      'suppressed_reasons': [_bigquery_reason(r) for r in f.get('suppressed_reasons') or []],
      'rules': list(f.get('rules') or []),
      'actions': _counted(f.get('actions')), 'resources': _counted(f.get('resources')),
      'event_count': int(f['event_count']), 'windows': int(f['windows']),
      'peak_window': list(f.get('peak_window', [])), 'owner': f.get('owner') or None,
      'team': f.get('team') or None, 'environment': f.get('environment') or None,
      'criticality': f.get('criticality') or None, 'registered': bool(f.get('registered')),
      'occurrences': int(f.get('occurrences', 1)), 'last_occurrence': f.get('last_occurrence') or None,
      'occurrence_ids': list(f.get('occurrence_ids') or []),
      'identities': list(f.get('identities') or []),
      'first_detected_at': f.get('first_detected_at') or f['window_end'],
      'updates': int(f.get('updates') or 0), 'pages': int(f.get('pages') or 0),
      'page': bool(f.get('page')), 'severity_raised': bool(f.get('severity_raised')),
      'evidence': [dict(e, new=list(e.get('new') or [])) for e in f.get('evidence') or []],
      'window_actions': [dict(w, actions=_counted(w.get('actions'))) for w in f.get('window_actions') or []],
  }


def dead_letter_record(line: str) -> Dict:
  """A dead-letter JSON line -> a record of the dead_letter schemas (every field a string)."""
  try:
    doc = json.loads(line)
  except ValueError:
    doc = {'stage': 'sink', 'reason': 'dead letter is not JSON', 'raw': line}
  return {'stage': str(doc.get('stage') or 'unknown'), 'reason': str(doc.get('reason') or ''),
          'source': str(doc.get('source', '')), 'index': str(doc.get('index', '')),
          'raw': doc['raw'] if isinstance(doc.get('raw'), str) else json.dumps(doc.get('raw'))}


_BQ_TIMESTAMP = re.compile(r'^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d{1,6})?)?(Z| UTC|[+-]\d\d:\d\d)?$')


def validate_bigquery_row(fields: List[Dict], row: Dict, path: str = '') -> List[str]:
  """Every way ``row`` breaks the BigQuery schema ``fields`` (types, modes, nesting, unknown fields)."""
  errors = []
  known = {f['name'] for f in fields}
  for name in row:
    if name not in known:
      errors.append(f'{path}{name}: not in the schema')
  for f in fields:
    name, mode, kind = f['name'], f.get('mode', 'NULLABLE'), f['type']
    value = row.get(name)
    where = f'{path}{name}'
    if mode == 'REPEATED':
      if not isinstance(value, list):
        errors.append(f'{where}: REPEATED needs a list, got {type(value).__name__}')
        continue
      values = value
    elif value is None:
      if mode == 'REQUIRED':
        errors.append(f'{where}: REQUIRED but missing')
      continue
    else:
      values = [value]
    for i, v in enumerate(values):
      at = f'{where}[{i}]' if mode == 'REPEATED' else where
      if v is None:
        errors.append(f'{at}: null inside a REPEATED field')
      elif kind in ('RECORD', 'STRUCT'):
        if not isinstance(v, dict):
          errors.append(f'{at}: RECORD needs an object, got {type(v).__name__}')
        else:
          errors += validate_bigquery_row(f['fields'], v, at + '.')
      elif kind == 'STRING' and not isinstance(v, str):
        errors.append(f'{at}: STRING got {type(v).__name__}')
      elif kind in ('FLOAT', 'FLOAT64') and (isinstance(v, bool) or not isinstance(v, (int, float))):
        errors.append(f'{at}: FLOAT got {type(v).__name__}')
      elif kind in ('INTEGER', 'INT64') and (isinstance(v, bool) or not isinstance(v, int)):
        errors.append(f'{at}: INTEGER got {type(v).__name__}')
      elif kind in ('BOOLEAN', 'BOOL') and not isinstance(v, bool):
        errors.append(f'{at}: BOOLEAN got {type(v).__name__}')
      elif kind == 'TIMESTAMP' and not (isinstance(v, str) and _BQ_TIMESTAMP.match(v)):
        errors.append(f'{at}: TIMESTAMP got {v!r}')
  return errors


# --- file sinks -------------------------------------------------------------------------------

class AvroFileSink(fileio.FileSink):
  """fileio sink writing one Avro container file per window/pane (streaming)."""

  def __init__(self, schema: Dict):
    self._schema = schema

  def open(self, fh):
    import fastavro
    self._writer = fastavro.write.Writer(fh, fastavro.parse_schema(self._schema), codec='deflate')

  def write(self, record):
    self._writer.write(record)

  def flush(self):
    self._writer.flush()


class WriteAvro(beam.PTransform):
  """Avro records -> one file at ``path`` (batch) or windowed parts under ``path.parts/`` (streaming)."""

  def __init__(self, path: str, schema: Dict, streaming: bool, part_window_seconds: int = 3600):
    super().__init__()
    self._path, self._schema = path, schema
    self._streaming, self._part_window = streaming, part_window_seconds

  def expand(self, records):
    if not self._streaming:
      return records | 'WriteFile' >> beam.io.WriteToAvro(
          self._path, schema=self._schema, shard_name_template='', num_shards=1)
    schema = self._schema
    return records | 'Parts' >> WriteParts(self._path, '.avro', lambda dest: AvroFileSink(schema),
                                           self._part_window)


def compact_avro_parts(path: str, schema: Dict, key: str = '') -> int:
  """Joins streaming Avro part files into ``path``; with ``key``, keeps the last record per key."""
  import fastavro
  records, by_key = [], {}
  for name in sorted(glob.glob(os.path.join(parts_dir(path), '*.avro'))):
    with open(name, 'rb') as f:
      for record in fastavro.reader(f):
        if key and (record[key] not in by_key
                    or version_rank(record) >= version_rank(by_key[record[key]])):
          by_key[record[key]] = record
        else:
          records.append(record)
  if key:
    records = list(by_key.values())
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    fastavro.writer(f, fastavro.parse_schema(schema), records, codec='deflate')
  return len(records)


def read_avro(path: str) -> List[Dict]:
  import fastavro
  with open(path, 'rb') as f:
    return list(fastavro.reader(f))


def _local_files(options: PipelineOptions):
  from postauth.pipeline.options import PubSubSourceOptions
  ps = options.view_as(PubSubSourceOptions)
  if ps.subscription or ps.topic:
    return []  # an unbounded job: never clear what an earlier run wrote, nothing to compact
  specs = sink_specs(options) + [dead_letter_spec(options)]
  return [(s, FINDING if i < len(specs) - 1 else DEAD_LETTER) for i, s in enumerate(specs)
          if s.kind in ('jsonl', 'avro') and '://' not in s.target]


def prepare_file_sinks(options: PipelineOptions) -> None:
  """Removes part files an earlier bounded streaming replay left at the same local paths."""
  for spec, _ in _local_files(options):
    clear_parts(spec.target)


def finish_file_sinks(options: PipelineOptions) -> Dict[str, int]:
  """Compacts the parts of a finished (bounded) streaming replay; returns records per path."""
  out = {}
  for spec, kind in _local_files(options):
    key = ('finding_info.uid' if spec.format == 'ocsf' else 'finding_id') if kind == FINDING else ''
    if spec.kind == 'jsonl' and key and spec.format != 'ocsf':  # the latest per id, every version beside
      out[spec.target] = compact_findings(spec.target)['findings']
    elif spec.kind == 'jsonl':
      out[spec.target] = compact_parts(spec.target, key=key)
    else:
      out[spec.target] = compact_avro_parts(spec.target, avro_schema(kind), key=key)
  return out


def count_records(spec: SinkSpec) -> Optional[int]:
  """Records in a local JSON-lines or Avro file sink (None for other sinks or missing files)."""
  if spec.kind not in ('jsonl', 'avro') or not os.path.exists(spec.target):
    return None
  if spec.kind == 'avro':
    return len(read_avro(spec.target))
  with open(spec.target) as f:
    return sum(1 for line in f if line.strip())


# --- BigQuery ---------------------------------------------------------------------------------

class _BigQueryFailuresToDeadLetters(beam.DoFn):
  def __init__(self, table: str):
    self._table = table
    self.failed = Metrics.counter('postauth', 'bigquery_rows_failed')

  def process(self, failure):
    # WriteToBigQuery's failed_rows_with_errors: (destination, row, errors)
    destination, row, errors = (list(failure) + [None, None, None])[:3]
    self.failed.inc()
    yield dead_letter(f'BigQuery insert into {self._table} rejected the row: {errors}'[:1000],
                      f'bq:{self._table}#{row.get("finding_id", "") if isinstance(row, dict) else ""}',
                      json.dumps(row, sort_keys=True, default=str), stage='sink')


def bigquery_write(table: str, record_kind: str, method: str, streaming: bool,
                   retry_always: bool = False):
  """Beam's WriteToBigQuery with the shipped schema: create the table if needed, append."""
  from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
  from apache_beam.io.gcp.bigquery_tools import RetryStrategy
  kwargs = dict(
      table=table, schema=bigquery_schema(record_kind), method=method,
      create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
      write_disposition=BigQueryDisposition.WRITE_APPEND)
  if method == 'STREAMING_INSERTS':
    kwargs['insert_retry_strategy'] = (RetryStrategy.RETRY_ALWAYS if retry_always
                                       else RetryStrategy.RETRY_ON_TRANSIENT_ERROR)
  if method == 'FILE_LOADS' and streaming:
    kwargs['triggering_frequency'] = 300
  return WriteToBigQuery(**kwargs)


# --- wiring -----------------------------------------------------------------------------------

def apply_sinks(records, specs: List[SinkSpec], record_kind: str, streaming: bool,
                options: PipelineOptions, label: str) -> List[beam.PCollection]:
  """Writes ``records`` (finding dicts or dead-letter JSON lines) to every sink in ``specs``.

  Returns the dead-letter PCollections of failed deliveries (Pub/Sub publishes that
  failed after retries, BigQuery rows rejected). For the dead-letter sink itself
  failures raise instead: there is no further place to route them.
  """
  from postauth.pipeline.options import SinkOptions
  from postauth.transforms.pubsub_sink import PublishToPubSub, dead_letter_message, finding_message
  so = options.view_as(SinkOptions)
  is_finding = record_kind == FINDING
  failures = []
  for i, spec in enumerate(specs):
    name = f'{label}{spec.kind.capitalize()}{i if i else ""}'
    if spec.format == 'ocsf' and is_finding:
      from postauth.transforms.ocsf_finding import ocsf_message, to_ocsf_json
      if spec.kind == 'pubsub':  # one message per version, as the postauth-format Pub/Sub sink
        failures.append(records | name >> PublishToPubSub(
            spec.target, ocsf_message, retries=so.publish_retries, backoff=so.publish_backoff,
            timeout=so.publish_timeout, raise_on_failure=False))
      else:
        latest = records if streaming else records | f'{name}Latest' >> LatestVersions()
        latest | f'{name}ToOcsf' >> beam.Map(to_ocsf_json) | name >> WriteJsonLines(spec.target, streaming)
    elif spec.kind == 'jsonl':
      written = records
      if is_finding and not streaming:  # every version to the log, the latest to the file
        (records | f'{name}VersionsToJson' >> beam.Map(lambda f: json.dumps(f, sort_keys=True))
         | f'{name}Versions' >> WriteJsonLines(versions_path(spec.target), streaming))
        written = records | f'{name}Latest' >> LatestVersions()
      lines = (written | f'{name}ToJson' >> beam.Map(lambda f: json.dumps(f, sort_keys=True))
               if is_finding else records)
      lines | name >> WriteJsonLines(spec.target, streaming)
    elif spec.kind == 'avro':
      convert = finding_to_avro if is_finding else dead_letter_record
      written = (records | f'{name}Latest' >> LatestVersions()
                 if is_finding and not streaming else records)
      (written | f'{name}ToAvro' >> beam.Map(convert)
       | name >> WriteAvro(spec.target, avro_schema(record_kind), streaming))
    elif spec.kind == 'pubsub':
      failed = records | name >> PublishToPubSub(
          spec.target, finding_message if is_finding else dead_letter_message,
          retries=so.publish_retries, backoff=so.publish_backoff, timeout=so.publish_timeout,
          raise_on_failure=not is_finding)
      if is_finding:
        failures.append(failed)
    elif spec.kind == 'bigquery':
      convert = finding_to_bigquery if is_finding else dead_letter_record
      result = (records | f'{name}ToRow' >> beam.Map(convert)
                | name >> bigquery_write(spec.target, record_kind, so.bigquery_method, streaming,
                                         retry_always=not is_finding))
      if is_finding and so.bigquery_method == 'STREAMING_INSERTS':
        failures.append(result.failed_rows_with_errors
                        | f'{name}Failures' >> beam.ParDo(_BigQueryFailuresToDeadLetters(spec.target)))
    else:  # parse_sink only yields KINDS
      raise ValueError(f'unknown sink kind {spec.kind}')
  return failures
