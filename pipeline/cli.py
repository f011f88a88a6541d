"""The `postauth` command: generate, train, run, demo."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import List, Optional

from postauth.pipeline import collector  # first: no collection while the imports build what lives on
from postauth.pipeline.allocator import keep_freed_memory
from postauth.pipeline.blas_threads import one_blas_thread

collector.defer_during_imports()
one_blas_thread()  # before numpy loads OpenBLAS
keep_freed_memory()  # before any thread has an arena of its own

from postauth.pipeline import quiet  # noqa: E402,F401  (imports Beam without its apitools warning)

from postauth.pipeline import options as opts  # noqa: E402
from postauth.pipeline import stop, summary  # noqa: E402
from postauth.pipeline.jobs import run, run_pipeline, train  # noqa: E402

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


def cmd_generate(argv: List[str]) -> int:
  from postauth.pipeline.generate import DEFAULT_END, generate
  ap = opts.CommandParser(prog='postauth generate')
  ap.add_argument('--out', required=True)
  ap.add_argument('--identities', type=int, default=200)
  ap.add_argument('--days', type=int, default=7)
  ap.add_argument('--seed', type=int, default=7)
  ap.add_argument('--end', default=DEFAULT_END, help='Exclusive end date (UTC) of the sample.')
  ap.add_argument('--rate-scale', type=float, default=0.4,
                  help='Multiplies every identity\'s routine event rate (1.0 is about 30k events/day for 200 identities).')
  a = ap.parse_args(argv)
  from postauth.pipeline.preflight import check_output_folder
  check_output_folder('--out', a.out)
  counts = generate(a.out, a.identities, a.days, a.seed, a.end, a.rate_scale)
  print(json.dumps(counts))
  return 0


def cmd_train(argv: List[str]) -> int:
  t0 = time.time()
  out = train(argv)
  print(f'trained model {out["version"]} in {time.time() - t0:.1f}s; '
        + summary.render_counters(out['counters']))
  return 0


def cmd_run(argv: List[str]) -> int:
  t0 = time.time()
  out = run(argv)
  if out.get('findings_read') is not None:
    print(summary.render(out['findings_read'], top=10))
  elif out['findings'] and os.path.exists(out['findings']):
    print(summary.render(summary.read_findings(out['findings']), top=10))
  elif out['findings']:  # a Pub/Sub job that ended (--pubsub-stop-idle) leaves its part files
    print(f'findings: part files under {out["findings"]}.parts/')
  print(f'\n{summary.render_counters(out["counters"])}')
  print(f'findings: {out["findings"]}\ndead letters: {out["dead_letters"]}\n'
        f'run time {time.time() - t0:.1f}s')
  return 0


def cmd_demo(argv: List[str]) -> int:
  from postauth.pipeline.demo import main as demo
  return demo(argv)


def cmd_evaluate(argv: List[str]) -> int:
  from postauth.pipeline.evaluate_command import main as evaluate
  return evaluate(argv)


def cmd_parse(argv: List[str]) -> int:
  from postauth.pipeline.parse_job import main as parse_main
  return parse_main(argv)


def cmd_retrain(argv: List[str]) -> int:
  from postauth.pipeline.retrain import EXIT_REFUSED, retrain
  comparison = retrain(argv, run_pipeline)
  print(json.dumps(comparison, indent=1, sort_keys=True))
  return EXIT_REFUSED if comparison['decision'] == 'refused' else 0


def cmd_rollback(argv: List[str]) -> int:
  from postauth.models import registry
  ap = opts.CommandParser(prog='postauth rollback',
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
  from postauth.models.train_config import ConfigError
  from postauth.pipeline import compiled
  stale = compiled.stale()
  if stale:
    logging.getLogger('postauth').warning(compiled.stale_message(stale))
  collector.settle_before_job()
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
