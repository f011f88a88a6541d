"""The `postauth` command: generate, train, run, demo."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import List, Optional

from postauth.pipeline import quiet  # noqa: F401  (first: imports Beam without its apitools warning)

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from postauth.pipeline import options as opts
from postauth.pipeline import preflight, stop, summary

USAGE = """postauth <command> [flags]

commands:
  generate  write a labelled CloudTrail sample (history/, live/, inventory.csv, labels.json)
  train     batch Beam job: history -> versioned model directory
  run       the detection pipeline (batch, or --streaming) -> findings
  demo      generate, train and run the streaming detection on the sample, then summarise
  evaluate  detection quality of findings against labels.json/benign.json: per-attack recall, rank,
            time to detect, precision@k, PR-AUC, false alerts per 1,000 identity-days
  parse     batch Beam job: log files -> canonical events (Avro) + dead letters, JSON summary
  retrain   train a candidate on recent history, compare it with LATEST on held-back days,
            promote only if not worse, keep the last K versions (prints the comparison as JSON)
  rollback  point LATEST back at the previously promoted version (or --to VERSION); --list
  report    findings as one self-contained HTML page: summary, reasons, evidence, calls per
            window against the baseline (--findings F [--events GLOB] [--model-dir M] --out F)
  pubsub-server  start a local in-memory Pub/Sub server (Google's pstest) for the streaming path
  compact   a streaming job's findings parts -> the latest version per finding (--findings PATH)
            and every version beside it (PATH's .versions.jsonl)

`postauth <command> --help` lists each command's flags; train and run accept any
Beam pipeline option too (--runner, --direct_num_workers, --project, ...)."""


def _help(command: str) -> str:
  parser = argparse.ArgumentParser(prog=f'postauth {command}', add_help=False,
                                   description='Any Apache Beam pipeline option is accepted as well.')
  for cls in opts.ALL_OPTIONS:
    if command == 'train' and cls is opts.DetectOptions:
      group = parser.add_argument_group('model and inventory')
      group.add_argument('--inventory', help='Identity inventory CSV.')
      group.add_argument('--model-dir', help='Where to write the model version.')
      continue
    if command == 'run' and cls is opts.TrainOptions:
      continue
    if cls is opts.RetrainOptions:
      continue
    if command == 'train' and cls in (opts.PubSubSourceOptions, opts.WatchOptions, opts.SinkOptions):
      continue
    cls._add_argparse_args(parser.add_argument_group(cls.__name__))
  parser.add_argument('--streaming', action='store_true',
                      help='Run as a streaming job (--events files are replayed with an advancing '
                           'watermark; --events-watch watches for new files).')
  parser.add_argument('--runner', help='Beam runner (default DirectRunner).')
  return parser.format_help()


def pipeline_options(argv: List[str]) -> PipelineOptions:
  options = PipelineOptions(argv)
  std = options.view_as(StandardOptions)
  if not std.runner:
    std.runner = 'DirectRunner'
  from postauth.pipeline.prism import use_local_prism
  use_local_prism(options)  # PrismRunner / DirectRunner: the binary `make prism` built, if any
  from postauth.pipeline.flink import use_local_flink
  use_local_flink(options)  # FlinkRunner: the job server jar `make flink` fetched, if any
  return options


def _run_pipeline(build, options: PipelineOptions):
  """Builds, runs and waits; SIGINT/SIGTERM cancel the job and raise ``stop.Interrupted``."""
  p = beam.Pipeline(options=options)
  build(p)
  result = None
  try:
    with stop.stop_on_signals() as watch:
      result = p.run()  # the FnApiRunner runs the whole job here, the others submit it
      watch.reclaim()
      result.wait_until_finish()
  except stop.Interrupted as e:
    e.result = result
    e.detail = stop.cancel(result)
    raise
  return result


def cmd_generate(argv: List[str]) -> int:
  from postauth.pipeline.generate import DEFAULT_END, generate
  ap = argparse.ArgumentParser(prog='postauth generate')
  ap.add_argument('--out', required=True)
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--seed', type=int, default=7)
  ap.add_argument('--end', default=DEFAULT_END, help='Exclusive end date (UTC) of the sample.')
  ap.add_argument('--rate-scale', type=float, default=0.4,
                  help='Multiplies every identity\'s routine event rate (1.0 is about 30k events/day for 200 identities).')
  a = ap.parse_args(argv)
  counts = generate(a.out, a.identities, a.days, a.seed, a.end, a.rate_scale)
  print(json.dumps(counts))
  return 0


def train(argv: List[str]) -> dict:
  from postauth.pipeline.train import build_training
  options = pipeline_options(argv)
  det = options.view_as(opts.DetectOptions)
  preflight.validate_train(options, det.model_dir, det.inventory)
  preflight.check_train(options, det.inventory)
  result = _run_pipeline(lambda p: build_training(p, options, det.inventory, det.model_dir), options)
  from postauth.models.artifact import resolve_version
  return {'version': resolve_version(det.model_dir) if options.view_as(opts.TrainOptions).promote else None,
          'counters': summary.counters(result)}


def run(argv: List[str]) -> dict:
  from postauth.pipeline.detect import build_detection, suppressed_path
  from postauth.transforms import outputs
  from postauth.transforms.sinks import clear_parts, compact_parts
  options = pipeline_options(argv)
  preflight.validate_run(options)
  det = options.view_as(opts.DetectOptions)
  # Fail before submitting if an input is unreadable or the model does not verify.
  preflight.check_run(options)
  streaming = options.view_as(StandardOptions).streaming
  dead_letters = outputs.dead_letter_spec(options)
  ps = options.view_as(opts.PubSubSourceOptions)
  # A bounded replay into local files: clear earlier parts first, compact them after.
  replay_to_local = (streaming and not (ps.subscription or ps.topic)
                     and '://' not in suppressed_path(options))
  if streaming:
    outputs.prepare_file_sinks(options)
    if replay_to_local:
      clear_parts(suppressed_path(options))
  interrupted = None
  try:
    result = _run_pipeline(lambda p: build_detection(p, options), options)
  except stop.Interrupted as e:  # compact and count what the sinks got, then report the stop
    interrupted, result = e, e.result
  if streaming:
    outputs.finish_file_sinks(options)
    if replay_to_local:
      compact_parts(suppressed_path(options), key='finding_id')
  counters = _counters(result)
  if streaming:
    # The streaming DirectRunner commits counters of its first bundle only (checked with a
    # bare TestStream + counter pipeline on Beam 2.77): report what the sinks received instead.
    files = [s for s in outputs.sink_specs(options) if outputs.count_records(s) is not None]
    counters = {'findings': outputs.count_records(files[0])} if files else {}
    if outputs.count_records(dead_letters) is not None:
      counters['dead_lettered'] = outputs.count_records(dead_letters)
    if os.path.exists(suppressed_path(options)):
      counters['findings_suppressed'] = _count_lines(suppressed_path(options))
  first_file = next((s for s in outputs.sink_specs(options) if s.kind in ('jsonl', 'avro')), None)
  counters.update(summary.findings_accounting(
      counters, _written_findings(first_file, outputs), streaming))
  if interrupted is not None:
    processed = summary.render_counters(counters) or 'nothing counted yet'
    interrupted.detail = (f'{interrupted.detail}; {processed}; partial output in '
                          f'{first_file.target if first_file else "the sinks"}')
    raise interrupted
  return {'findings': det.findings, 'dead_letters': dead_letters.target,
          'suppressed': suppressed_path(options), 'counters': counters}


def _counters(result) -> dict:
  if result is None:
    return {}
  try:
    return summary.counters(result)
  except Exception:  # a cancelled job's metrics may be gone with it
    return {}


def _written_findings(spec, outputs) -> Optional[List[dict]]:
  """The findings a local file sink holds (None for other sinks or no file)."""
  if spec is None or '://' in spec.target or not os.path.exists(spec.target):
    return None
  try:
    if spec.kind == 'avro':
      rows = [outputs.finding_from_avro(r) for r in outputs.read_avro(spec.target)]
    else:
      rows = summary.read_findings(spec.target)
  except (KeyError, ValueError):  # a sink format without postauth's finding fields
    return None
  return rows if all('finding_id' in r for r in rows) else None


def _count_lines(path: str) -> int:
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def cmd_train(argv: List[str]) -> int:
  t0 = time.time()
  out = train(argv)
  print(f'trained model {out["version"]} in {time.time() - t0:.1f}s; '
        + summary.render_counters(out['counters']))
  return 0


def cmd_run(argv: List[str]) -> int:
  t0 = time.time()
  out = run(argv)
  if out['findings'] and os.path.exists(out['findings']):
    print(summary.render(summary.read_findings(out['findings']), top=10))
  elif out['findings']:  # a Pub/Sub job that ended (--pubsub-stop-idle) leaves its part files
    print(f'findings: part files under {out["findings"]}.parts/')
  print(f'\n{summary.render_counters(out["counters"])}')
  print(f'findings: {out["findings"]}\ndead letters: {out["dead_letters"]}\n'
        f'run time {time.time() - t0:.1f}s')
  return 0


def sample_run(out: str, identities: int = 200, days: int = 7, seed: int = 7, batch: bool = False,
               beam_args: Optional[List[str]] = None, echo=print) -> dict:
  """generate -> train -> run on a labelled sample under ``out``: what `demo` and the evaluation share."""
  from postauth.pipeline.generate import generate
  beam_args = list(beam_args or [])
  out = os.path.abspath(out)
  sample, model_dir = os.path.join(out, 'sample'), os.path.join(out, 'model')
  findings = os.path.join(out, 'findings.jsonl')
  timings = {}
  t = time.time()
  counts = generate(sample, identities, days, seed)
  timings['generate'] = time.time() - t
  echo(f'[1/3] generated {counts["identities"]} identities, {counts["history_events"]} history '
       f'and {counts["live_events"]} live CloudTrail events, {counts["labels"]} injected attacks '
       f'-> {sample} ({timings["generate"]:.1f}s)')
  t = time.time()
  trained = train([f'--events={sample}/history/*', f'--inventory={sample}/inventory.csv',
                   f'--model-dir={model_dir}'] + beam_args)
  timings['train'] = time.time() - t
  echo(f'[2/3] trained model {trained["version"]} on {trained["counters"].get("training_windows", 0)} '
       f'identity-windows ({timings["train"]:.1f}s)')
  t = time.time()
  mode = [] if batch else ['--streaming']
  ran = run([f'--events={sample}/live/*', f'--inventory={sample}/inventory.csv',
             f'--model-dir={model_dir}', f'--findings={findings}'] + mode + beam_args)
  timings['detect'] = time.time() - t
  echo(f'[3/3] ran detection ({"batch" if batch else "streaming replay"}) '
       f'({timings["detect"]:.1f}s)\n')
  return {'sample': sample, 'model_dir': model_dir, 'findings': findings, 'counts': counts,
          'trained': trained, 'ran': ran, 'timings': timings}


def cmd_demo(argv: List[str]) -> int:
  ap = argparse.ArgumentParser(prog='postauth demo')
  ap.add_argument('--out', default='out')
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--seed', type=int, default=7)
  ap.add_argument('--batch', action='store_true', help='Run detection in batch mode instead of streaming.')
  ap.add_argument('--top', type=int, default=8)
  a, beam_args = ap.parse_known_args(argv)
  done = sample_run(a.out, a.identities, a.days, a.seed, a.batch, beam_args,
                    echo=lambda line: print(line, flush=True))
  findings, ran, timings = done['findings'], done['ran'], done['timings']
  found = summary.read_findings(findings)
  print(summary.render(found, top=a.top))
  with open(os.path.join(done['sample'], 'labels.json')) as f:
    labels = json.load(f)
  hit = {l['identity'] for l in labels} & {f['identity'] for f in found[:len(labels)]}
  print(f'\ninjected attacks among the top {len(labels)} findings: {len(hit)}/{len(labels)}')
  print(summary.render_counters(ran['counters']))
  from postauth.pipeline.report_html import write_report
  report = write_report(findings, os.path.join(os.path.abspath(a.out), 'report.html'),
                        [f'{done["sample"]}/history/*', f'{done["sample"]}/live/*'], done['model_dir'])
  print(f'findings: {findings}\ndead letters: {ran["dead_letters"]}\nmodel: {done["model_dir"]}')
  print(f'report: {report["report"]}')
  print('time: ' + ', '.join(f'{k} {v:.1f}s' for k, v in timings.items())
        + f', total {sum(timings.values()):.1f}s')
  return 0


def cmd_evaluate(argv: List[str]) -> int:
  import glob
  from postauth.pipeline import evaluate
  ap = argparse.ArgumentParser(prog='postauth evaluate',
                               description='Detection quality of a run\'s findings against labelled attacks '
                                           'and benign changes (no Beam job: reads the files).')
  ap.add_argument('--findings', required=True, help='Findings JSON lines written by `postauth run --findings`.')
  ap.add_argument('--labels', required=True, help='labels.json: [{identity, scenario, start, end}].')
  ap.add_argument('--benign', default=None, help='benign.json: legitimate changes that should stay low or silent.')
  ap.add_argument('--events', action='append', default=[],
                  help='Glob of the evaluated event files (repeatable): identity-days for the false-alert rate.')
  ap.add_argument('--identity-days', type=int, default=None,
                  help='Identity-days evaluated, when the events are not at hand.')
  ap.add_argument('--window-size', type=float, default=3600.0,
                  help='The run\'s --window-size in seconds (when a finding\'s first window closed).')
  ap.add_argument('--arrivals', default=None,
                  help='Streaming: finding versions as read from the sink, each with "_arrival" (epoch s).')
  ap.add_argument('--published', default=None,
                  help='Streaming: {"event_time", "published_at"} per input message, in publish order.')
  ap.add_argument('--watermark-max-delay', type=float, default=60.0,
                  help='The streaming run\'s --watermark-max-delay (which message closed a window).')
  ap.add_argument('--out', default=None, help='Write the report as JSON here.')
  ap.add_argument('--markdown', default=None, help='Write the tables as markdown here.')
  a = ap.parse_args(argv)
  paths = sorted({p for g in a.events for p in glob.glob(g)})
  if a.events and not paths:
    raise opts.OptionsError(f'--events {a.events} matches no file')
  if bool(a.arrivals) != bool(a.published):
    raise opts.OptionsError('--arrivals and --published go together (the wall-clock delay needs both)')
  report = evaluate.evaluate_files(a.findings, a.labels, a.benign, paths, a.identity_days, a.window_size)
  if a.arrivals:
    from postauth.pipeline.sink_delay import sink_delays_from_files
    delays = sink_delays_from_files(a.arrivals, a.published, evaluate.read_cases(a.labels), a.watermark_max_delay)
    report['sink_delay'] = delays
    report['wall_clock'] = delays['per_attack']
  md = evaluate.to_markdown(report)
  if a.out:
    with open(a.out, 'w') as f:
      json.dump(report, f, indent=1)
  if a.markdown:
    with open(a.markdown, 'w') as f:
      f.write(md)
  print(md)
  return 0


def cmd_parse(argv: List[str]) -> int:
  from postauth.pipeline.parse_job import main as parse_main
  return parse_main(argv)


def cmd_retrain(argv: List[str]) -> int:
  from postauth.pipeline.retrain import EXIT_REFUSED, retrain
  comparison = retrain(argv, _run_pipeline)
  print(json.dumps(comparison, indent=1, sort_keys=True))
  return EXIT_REFUSED if comparison['decision'] == 'refused' else 0


def cmd_rollback(argv: List[str]) -> int:
  from postauth.models import registry
  ap = argparse.ArgumentParser(prog='postauth rollback',
                               description='Point LATEST back at the version promoted before the '
                                           'current one (from HISTORY.jsonl), or at --to VERSION.')
  ap.add_argument('--model-dir', required=True, help='Model directory (local, gs://, s3://).')
  ap.add_argument('--to', default=None, help='Version to make live instead of the previous one.')
  ap.add_argument('--reason', default='', help='Recorded in HISTORY.jsonl.')
  ap.add_argument('--list', action='store_true',
                  help='Only print the versions and the promotion history; change nothing.')
  a = ap.parse_args(argv)
  if a.list:
    print(json.dumps({'live': registry.current(a.model_dir), 'versions': registry.list_versions(a.model_dir),
                      'history': registry.history(a.model_dir)}, indent=1))
    return 0
  entry = registry.rollback(a.model_dir, a.to, a.reason)
  print(json.dumps(entry, sort_keys=True))
  return 0


def cmd_report(argv: List[str]) -> int:
  from postauth.pipeline.report_html import main as report_main
  return report_main(argv)


def cmd_pubsub_server(argv: List[str]) -> int:
  from postauth.pipeline.local_pubsub import main as serve
  return serve(argv)


def cmd_compact(argv: List[str]) -> int:
  from postauth.transforms.compact import cmd_compact as compact
  return compact(argv)


COMMANDS = {'parse': cmd_parse, 'generate': cmd_generate, 'train': cmd_train, 'run': cmd_run, 'demo': cmd_demo,
            'evaluate': cmd_evaluate, 'report': cmd_report,
            'retrain': cmd_retrain, 'rollback': cmd_rollback, 'pubsub-server': cmd_pubsub_server,
            'compact': cmd_compact}


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ('-h', '--help') or argv[0] not in COMMANDS:
    print(USAGE)
    return 0 if not argv or argv[0] in ('-h', '--help') else 2
  command, rest = argv[0], argv[1:]
  if command in ('train', 'run') and ('-h' in rest or '--help' in rest):
    print(_help(command))
    return 0
  if command == 'retrain' and ('-h' in rest or '--help' in rest):
    from postauth.pipeline.retrain import help_text
    print(help_text())
    return 0
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  logging.getLogger('postauth').setLevel(logging.INFO)  # progress of long stages (train, retrain)
  from postauth.models.artifact import ArtifactError
  from postauth.models.model import ConfigError
  try:
    return COMMANDS[command](rest)
  except (opts.OptionsError, ArtifactError, ConfigError) as e:
    print(f'postauth {command}: error: {e}', file=sys.stderr)
    return 2
  except stop.Interrupted as e:
    print(f'postauth {command}: stopped by {e.name}'
          + (f': {e.detail}' if e.detail else ''), file=sys.stderr, flush=True)
    return stop.exit_code_after_stop(e)
  except KeyboardInterrupt:  # Ctrl-C outside a running job (imports, model load, compaction)
    print(f'postauth {command}: stopped by SIGINT', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
