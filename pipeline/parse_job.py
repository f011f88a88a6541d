"""`postauth parse`: only the parse stage, as a batch Beam job.

Log files (any supported format, auto-detected or forced) -> canonical events as
Avro container files (``transforms/schemas/event.avsc``) and dead letters as JSON
lines, both in one directory, and a JSON summary from the job's own counters.
The Avro output is itself an input format, so parsing it again gives the same
events.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from postauth.pipeline.options import EventOptions, OptionsError, validate_limits
from postauth.transforms import formats
from postauth.transforms.avro_events import schema_json, to_avro
from postauth.transforms.records import ReadLimits
from postauth.transforms.parse import CATEGORY_NAMESPACE, FORMAT_NAMESPACE, NAMESPACE, SKIP_NAMESPACE, ParseFiles

EVENTS_PREFIX = 'events'
EVENTS_SUFFIX = '.avro'
DEAD_LETTER_PREFIX = 'dead-letter'
DEAD_LETTER_SUFFIX = '.jsonl'


class ParseOptions(PipelineOptions):
  """Where `postauth parse` writes."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--out', dest='out', default=None,
                        help='Output directory: events-*.avro (canonical events) and '
                             'dead-letter-*.jsonl (reason, source, raw payload).')


def output_globs(out: str) -> Dict[str, str]:
  return {'events': os.path.join(out, EVENTS_PREFIX + '-*' + EVENTS_SUFFIX),
          'dead_letters': os.path.join(out, DEAD_LETTER_PREFIX + '-*' + DEAD_LETTER_SUFFIX)}


def _matches(pattern: str) -> List[str]:
  return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def validate_parse(options: PipelineOptions) -> None:
  ev, out = options.view_as(EventOptions), options.view_as(ParseOptions).out
  missing = [flag for flag, value in (('--events', ev.events), ('--out', out)) if not value]
  if missing:
    raise OptionsError('postauth parse needs ' + ', '.join(missing))
  if ev.format and ev.format not in formats.BY_NAME:
    raise OptionsError(f'--format {ev.format!r} is not one of {", ".join(sorted(formats.BY_NAME))}')
  validate_limits(options)
  for path in ev.taxonomy_files or ():
    if not os.path.exists(path):
      raise OptionsError(f'--taxonomy-file {path} does not exist')


def prepare_out(options: PipelineOptions) -> None:
  """Removes this job's earlier output in --out so shards of two runs never mix."""
  ev, out = options.view_as(EventOptions), options.view_as(ParseOptions).out
  old = [p for g in output_globs(out).values() for p in _matches(g)]
  inputs = set(_matches(ev.events))
  if inputs & set(old):
    raise OptionsError(f'--events matches files this job writes in {out}: choose another --out')
  if old:
    FileSystems.delete(old)
  if '://' not in out:
    os.makedirs(out, exist_ok=True)


def build_parse(p: beam.Pipeline, options: PipelineOptions) -> Dict[str, beam.PCollection]:
  ev, out = options.view_as(EventOptions), options.view_as(ParseOptions).out
  parsed = p | 'ParseFiles' >> ParseFiles(ev.events, ev.format, ev.taxonomy_files, ReadLimits.from_options(options))
  (parsed.events
   | 'ToAvroDict' >> beam.Map(to_avro)
   | 'WriteEvents' >> beam.io.WriteToAvro(os.path.join(out, EVENTS_PREFIX), schema=schema_json(),
                                          file_name_suffix=EVENTS_SUFFIX))
  parsed.dead_letter | 'WriteDeadLetters' >> beam.io.WriteToText(
      os.path.join(out, DEAD_LETTER_PREFIX), file_name_suffix=DEAD_LETTER_SUFFIX)
  return {'events': parsed.events, 'dead_letter': parsed.dead_letter}


def summarize(result) -> dict:
  """The job's counters as the summary line: totals, parsed events by format and category,
  skipped records by reason; ``read = parsed + dead_lettered + skipped``."""
  totals: Dict[str, int] = {}
  by = {FORMAT_NAMESPACE: {}, CATEGORY_NAMESPACE: {}, SKIP_NAMESPACE: {}}
  for c in result.metrics().query(MetricsFilter())['counters']:
    namespace, name = c.key.metric.namespace, c.key.metric.name
    value = int(max(c.committed or 0, c.attempted or 0))
    target = totals if namespace == NAMESPACE else by.get(namespace)
    if target is not None:
      target[name] = target.get(name, 0) + value
  return {'read': totals.get('records_read', 0),
          'parsed': totals.get('events_parsed', 0),
          'dead_lettered': totals.get('dead_lettered', 0),
          'skipped': totals.get('skipped', 0),
          'by_format': dict(sorted(by[FORMAT_NAMESPACE].items())),
          'by_category': dict(sorted(by[CATEGORY_NAMESPACE].items())),
          'skipped_by_reason': dict(sorted(by[SKIP_NAMESPACE].items()))}


def run_parse(argv: List[str]) -> dict:
  """Runs the job; returns the summary plus where the output went."""
  from postauth.pipeline.jobs import pipeline_options
  options = pipeline_options(argv)
  validate_parse(options)
  from postauth.pipeline import preflight  # a glob matching nothing, an unreadable taxonomy: exit 2
  preflight.check_events(options.view_as(EventOptions).events)
  preflight.check_taxonomy_files(options.view_as(EventOptions).taxonomy_files)
  preflight.check_output_folder('--out', options.view_as(ParseOptions).out)
  prepare_out(options)
  p = beam.Pipeline(options=options)
  build_parse(p, options)
  result = p.run()
  result.wait_until_finish()
  return {'summary': summarize(result), **output_globs(options.view_as(ParseOptions).out)}


def _help() -> str:
  parser = argparse.ArgumentParser(prog='postauth parse', add_help=False,
                                   description='Any Apache Beam pipeline option is accepted as well.')
  EventOptions._add_argparse_args(parser.add_argument_group('input'))
  ParseOptions._add_argparse_args(parser.add_argument_group('output'))
  parser.add_argument('--runner', help='Beam runner (default DirectRunner).')
  return parser.format_help() + ('\nformats (--format): ' + ', '.join(f.name for f in formats.FORMATS)
                                 + '\nThe last stdout line is a JSON summary: read, parsed, '
                                   'dead_lettered, skipped, by_format, by_category, skipped_by_reason '
                                   '(read = parsed + dead_lettered + skipped; an OTLP span is a record).')


def main(argv: List[str]) -> int:
  if '-h' in argv or '--help' in argv:
    print(_help())
    return 0
  t0 = time.time()
  out = run_parse(argv)
  s = out['summary']
  if s['read'] != s['parsed'] + s['dead_lettered'] + s['skipped']:
    print(f'postauth parse: counters do not add up: {s}', file=sys.stderr)
  print(f'parsed {s["parsed"]} events -> {out["events"]}; {s["dead_lettered"]} dead letters -> '
        f'{out["dead_letters"]}; {s["skipped"]} skipped ({time.time() - t0:.1f}s)')
  print(json.dumps(s, sort_keys=False))
  return 0
