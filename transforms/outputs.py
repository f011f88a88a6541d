"""Writing findings and dead letters to every sink the flags name, several at once.

The URIs are parsed in ``transforms/sink_uris.py`` and the records converted in
``transforms/sink_records.py``; here they are written: ``PATH.jsonl`` JSON lines,
``PATH.avro`` Avro, Pub/Sub one message per record, BigQuery through Beam's
``WriteToBigQuery`` (imported only when a ``bq://`` sink is used). Files are written
whole in batch and as windowed parts in streaming (``fileio.WriteToFiles``);
``prepare_file_sinks``/``finish_file_sinks`` set aside an earlier replay's parts and
compact the parts when a local streaming job ends. No run deletes another's output: a
restarted folder watch or Pub/Sub job adds its parts to the earlier run's. Deliveries that
fail (Pub/Sub after retries, BigQuery rows the service rejects) come back from
``apply_sinks`` as dead letters, so the caller routes them to the dead-letter sink: a
finding is delivered or dead-lettered, never lost. What the dead-letter sink itself refuses
goes to the last-resort file (``transforms/last_resort.py``), never into a bundle retried
forever.
"""
from __future__ import annotations

import functools
import glob
import json
import os
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.transforms.finding_json import VersionLines, finding_line
from postauth.transforms.last_resort import LastResort
from postauth.transforms.options import EventOptions, PubSubSourceOptions, SinkOptions
from postauth.transforms.compact import (LatestVersions, VersionLine, compact_findings, latest_of,
                                         versions_path)
from postauth.transforms.parse import dead_letter
from postauth.transforms.versions import version_rank
from postauth.transforms.sinks import (FileGathering, WriteJsonLines, WriteParts, WriteWholeFiles, compact_parts, parts_dir,
                                      set_aside_parts)

from postauth.transforms.sink_records import (avro_schema, bigquery_schema, dead_letter_record,
                                             finding_to_avro, finding_to_bigquery)
from postauth.transforms.sink_uris import (DEAD_LETTER, FINDING, SinkSpec, dead_letter_spec, last_resort_path,
                                          sink_specs, suppressed_path)


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
  ps = options.view_as(PubSubSourceOptions)
  if ps.subscription or ps.topic:
    return []  # never ends by itself: its parts are the output, nothing to compact
  specs = sink_specs(options) + [dead_letter_spec(options)]
  return [(s, FINDING if i < len(specs) - 1 else DEAD_LETTER) for i, s in enumerate(specs)
          if s.kind in ('jsonl', 'avro') and '://' not in s.target]


def prepare_file_sinks(options: PipelineOptions) -> List[str]:
  """Before a streaming job: what an earlier run left at the same local paths stays.

  A bounded replay (``--streaming --events``) recomputes its files, so the earlier run's parts
  are set aside beside them (``sinks.set_aside_parts``), not joined: its dead letters would
  count twice. A folder watch's restart keeps them where they are, and its compaction joins
  them with its own (findings: the latest version per id); a Pub/Sub job's parts are its
  output. Part names carry the run, so no run overwrites another's file. Nothing is deleted.
  Returns the folders parts were moved to.
  """
  if not options.view_as(EventOptions).events:
    return []
  paths = [spec.target for spec, _ in _local_files(options)] + [suppressed_path(options)]
  return [aside for aside in (set_aside_parts(p) for p in paths if '://' not in p) if aside]


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

def _bigquery_failure(failure):
  """WriteToBigQuery's failed_rows_with_errors: (destination, row, errors)."""
  return (list(failure) + [None, None, None])[:3]


class _BigQueryFailuresToLastResort(beam.DoFn):
  """Dead-letter rows BigQuery rejected (or Beam found too large to send) -> the last-resort file."""

  def __init__(self, table: str, path: str):
    self._last_resort = LastResort(path, f'bq://{table}')
    self._table = table

  def start_bundle(self):
    self._refused = []

  def process(self, failure):
    _, row, errors = _bigquery_failure(failure)
    self._refused.append((row if isinstance(row, dict) else str(row),
                          f'BigQuery insert into {self._table} rejected the row: {errors}'))

  def finish_bundle(self):
    self._last_resort.write(self._refused)
    self._refused = []


class _BigQueryFailuresToDeadLetters(beam.DoFn):
  def __init__(self, table: str):
    self._table = table
    self.failed = Metrics.counter('postauth', 'bigquery_rows_failed')

  def process(self, failure):
    _, row, errors = _bigquery_failure(failure)
    self.failed.inc()
    yield dead_letter(f'BigQuery insert into {self._table} rejected the row: {errors}'[:1000],
                      f'bq:{self._table}#{row.get("finding_id", "") if isinstance(row, dict) else ""}',
                      json.dumps(row, sort_keys=True, default=str), stage='sink')


def bigquery_write(table: str, record_kind: str, method: str, streaming: bool, client=None):
  """Beam's WriteToBigQuery with the shipped schema: create the table if needed, append.

  Streaming inserts retry transient errors only: a row the service rejects comes back on
  ``failed_rows_with_errors`` instead of being retried forever. ``client``: BigQuery itself
  for Beam's code to call instead of Google's (tests).
  """
  from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
  from apache_beam.io.gcp.bigquery_tools import RetryStrategy
  kwargs = dict(
      table=table, schema=bigquery_schema(record_kind), method=method,
      create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
      write_disposition=BigQueryDisposition.WRITE_APPEND, test_client=client)
  if method == 'STREAMING_INSERTS':
    kwargs['insert_retry_strategy'] = RetryStrategy.RETRY_ON_TRANSIENT_ERROR
  if method == 'FILE_LOADS' and streaming:
    kwargs['triggering_frequency'] = 300
  return WriteToBigQuery(**kwargs)


# --- wiring -----------------------------------------------------------------------------------

def apply_sinks(records, specs: List[SinkSpec], record_kind: str, streaming: bool,
                options: PipelineOptions, label: str, bigquery_client=None,
                files: Optional[FileGathering] = None) -> List[beam.PCollection]:
  """Writes ``records`` (finding dicts or dead-letter JSON lines) to every sink in ``specs``.

  ``files``: batch JSON-lines files join this job-wide gathering instead of a grouping each.

  Returns the dead-letter PCollections of failed deliveries (Pub/Sub publishes that
  failed after retries, BigQuery rows rejected). For the dead-letter sink itself
  they go to the last-resort file (``--last-resort``) and its counter instead.
  """
  from postauth.transforms.pubsub_sink import PublishToPubSub, dead_letter_message, finding_message
  so = options.view_as(SinkOptions)
  is_finding = record_kind == FINDING
  last_resort = None if is_finding else last_resort_path(options)
  failures = []
  for i, spec in enumerate(specs):
    name = f'{label}{spec.kind.capitalize()}{i if i else ""}'
    if spec.format == 'ocsf' and is_finding:
      from postauth.transforms.ocsf_finding import ocsf_message, to_ocsf_json
      if spec.kind == 'pubsub':  # one message per version, as the postauth-format Pub/Sub sink
        failures.append(records | name >> PublishToPubSub(
            spec.target, ocsf_message, retries=so.publish_retries, backoff=so.publish_backoff,
            timeout=so.publish_timeout))
      else:
        latest = records if streaming else records | f'{name}Latest' >> LatestVersions()
        latest | f'{name}ToOcsf' >> beam.Map(to_ocsf_json) | name >> WriteJsonLines(spec.target, streaming)
    elif spec.kind == 'jsonl':
      to_line = finding_line if is_finding else None
      if streaming:
        lines = records | f'{name}ToJson' >> beam.Map(to_line) if to_line else records
        lines | name >> WriteJsonLines(spec.target, streaming)
      else:
        # Findings: every version to the log, the latest per finding to the file, both from one
        # gathering, whose keying step makes the lines.
        render = functools.partial(_latest_and_versions, spec.target) if is_finding else None
        to_entry = VersionLines() if is_finding else None
        if files is None:
          records | name >> WriteWholeFiles(spec.target, render, to_entry)
        else:
          files.add(records, spec.target, render, to_entry)
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
          last_resort=last_resort)
      if is_finding:
        failures.append(failed)
    elif spec.kind == 'bigquery':
      convert = finding_to_bigquery if is_finding else dead_letter_record
      result = (records | f'{name}ToRow' >> beam.Map(convert)
                | name >> bigquery_write(spec.target, record_kind, so.bigquery_method, streaming,
                                         client=bigquery_client))
      if so.bigquery_method != 'STREAMING_INSERTS':
        continue
      if is_finding:
        failures.append(result.failed_rows_with_errors
                        | f'{name}Failures' >> beam.ParDo(_BigQueryFailuresToDeadLetters(spec.target)))
      else:
        _ = (result.failed_rows_with_errors
             | f'{name}Refused' >> beam.ParDo(_BigQueryFailuresToLastResort(spec.target, last_resort)))
    else:  # parse_sink only yields KINDS
      raise ValueError(f'unknown sink kind {spec.kind}')
  return failures


def _latest_and_versions(path: str, versions: List[VersionLine]) -> Dict[str, List[str]]:
  latest, ordered = latest_of(versions)
  return {path: latest, versions_path(path): ordered}


# --- the transforms the pipeline applies -----------------------------------------------------

class WriteFindings(beam.PTransform):
  """Findings to every sink the flags name (``--findings``, each ``--sink``), or to ``specs``.

  Returns the deliveries that failed (a list of dead-letter PCollections, maybe empty)
  for the caller to route to the dead-letter sink.
  """

  def __init__(self, options: PipelineOptions, specs: Optional[List[SinkSpec]] = None,
               files: Optional[FileGathering] = None):
    super().__init__()
    self._options, self._specs, self._files = options, specs, files

  def expand(self, findings) -> List[beam.PCollection]:
    specs = sink_specs(self._options) if self._specs is None else self._specs
    return apply_sinks(findings, specs, FINDING, _streaming(self._options), self._options, '',
                       files=self._files)


class WriteSuppressed(WriteFindings):
  """Suppressed findings to ``--suppressed`` (default: suppressed.jsonl beside the dead letters)."""

  def __init__(self, options: PipelineOptions, files: Optional[FileGathering] = None):
    path = suppressed_path(options)
    super().__init__(options, [SinkSpec('jsonl', path, path)], files)


class WriteDeadLetters(beam.PTransform):
  """Dead-letter lines to ``--dead-letters``; what that sink refuses, to ``--last-resort``.

  ``bigquery_client``: BigQuery itself for a ``bq://`` sink, instead of Google's (tests).
  """

  def __init__(self, options: PipelineOptions, bigquery_client=None, files: Optional[FileGathering] = None):
    super().__init__()
    self._options, self._bigquery_client, self._files = options, bigquery_client, files

  def expand(self, dead_letters) -> None:
    apply_sinks(dead_letters, [dead_letter_spec(self._options)], DEAD_LETTER, _streaming(self._options),
                self._options, '', bigquery_client=self._bigquery_client, files=self._files)


def _streaming(options: PipelineOptions) -> bool:
  return bool(options.view_as(StandardOptions).streaming)
