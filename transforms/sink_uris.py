"""Where findings and dead letters go, from flags: sink URIs -> ``SinkSpec``, checked before launch.

``PATH.jsonl`` (or ``PATH.ocsf.jsonl``), ``PATH.avro``, ``pubsub://projects/P/topics/T``
(``?format=ocsf``) and ``bq://PROJECT:DATASET.TABLE``; ``validate_io`` refuses a bad
source or sink flag in one line before anything is built. No Beam IO is imported here:
``transforms/outputs.py`` writes the sinks.
"""
from __future__ import annotations

import os
import re
import typing
from typing import List, Optional

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.transforms.options import (DetectOptions, EventOptions, OptionsError, PubSubSourceOptions,
                                         SinkOptions)

FINDING, DEAD_LETTER = 'finding', 'dead_letter'
LAST_RESORT = 'last-resort.jsonl'
KINDS = ('jsonl', 'avro', 'pubsub', 'bigquery')

_PROJECT = r'[a-z][-a-z0-9]{4,28}[a-z0-9]'
TOPIC_RE = re.compile(rf'^projects/{_PROJECT}/topics/[A-Za-z][-A-Za-z0-9._~%+]{{2,254}}$')
SUBSCRIPTION_RE = re.compile(rf'^projects/{_PROJECT}/subscriptions/[A-Za-z][-A-Za-z0-9._~%+]{{2,254}}$')
TABLE_RE = re.compile(rf'^(?P<project>(?:[a-z][-a-z0-9.]*[a-z0-9]:)?{_PROJECT})[:.]'
                      r'(?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[-\w$]{1,1024})$')
FILE_SCHEMES = ('gs', 's3', 'file', 'hdfs', 'az', 'azfs')


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


def beside(path: str, name: str) -> str:
  """A file called ``name`` in the folder of ``path`` (local, made absolute, or remote)."""
  if '://' in path:
    return path.rsplit('/', 1)[0] + '/' + name
  return os.path.join(os.path.dirname(os.path.abspath(path)), name)


def dead_letter_spec(options: PipelineOptions) -> SinkSpec:
  """--dead-letters URI, else dead-letter.jsonl beside the first file sink."""
  uri = options.view_as(EventOptions).dead_letters
  if uri:
    return parse_sink(uri, 'jsonl')
  files = [s for s in sink_specs(options) if s.kind in ('jsonl', 'avro')]
  if not files:
    raise ValueError('--dead-letters is needed when no file sink (--findings or --sink PATH) is given')
  path = beside(files[0].target, 'dead-letter.jsonl')
  return SinkSpec('jsonl', path, '' if '://' in path else path)


def last_resort_path(options: PipelineOptions) -> str:
  """--last-resort, else last-resort.jsonl beside the dead-letter file or the first findings file,
  else under --temp_location (a remote runner's workers share it), else in the working directory."""
  path = options.view_as(SinkOptions).last_resort
  if path:
    return path
  try:
    files = [dead_letter_spec(options)]
  except ValueError:
    files = []
  files = [s for s in files + sink_specs(options) if s.kind in ('jsonl', 'avro')]
  if files:
    return beside(files[0].target, LAST_RESORT)
  from apache_beam.options.pipeline_options import GoogleCloudOptions
  temp = options.view_as(GoogleCloudOptions).temp_location
  if temp:
    return temp.rstrip('/') + '/postauth/' + LAST_RESORT
  return os.path.abspath(LAST_RESORT)


def validate_io(options: PipelineOptions) -> None:
  """Sources and sinks fail here, before submission, with a message saying what to fix."""
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
                          ('--pubsub-pull-interval', ps.pubsub_pull_interval, 0 < ps.pubsub_pull_interval <= 60),
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
  last = last_resort_path(options)
  if any(s.target == last for s in specs + [dead]):
    raise OptionsError(f'--last-resort {last} is also a findings or dead-letter sink')
  if any(s.kind == 'bigquery' for s in specs + [dead]) and so.bigquery_method == 'FILE_LOADS':
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    if not (options.view_as(GoogleCloudOptions).temp_location or '').startswith('gs://'):
      raise OptionsError('--bigquery-method FILE_LOADS needs --temp_location gs://BUCKET/PATH')


def suppressed_path(options: PipelineOptions) -> str:
  """--suppressed, else suppressed.jsonl beside the dead-letter file."""
  det = options.view_as(DetectOptions)
  if det.suppressed:
    return det.suppressed
  return beside(dead_letter_spec(options).target, 'suppressed.jsonl')
