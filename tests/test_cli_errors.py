"""Issue 14, part 3: clean errors, nothing lost.

Bad inputs are refused before launch in one line naming the file and the problem (exit 2,
no traceback); the summary says what was written and what was folded; no apitools warning;
SIGINT/SIGTERM stop a streaming job cleanly (exit 130/143, what was processed, no traceback).
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import terminate
from postauth.pipeline.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = 'identity,identity_type,owner,team,environment\n'
ROW = 'arn:aws:iam::111122223333:role/app,workload_identity,o@example.com,app,prod\n'
RECORD = {'eventVersion': '1.08', 'eventTime': '2026-11-05T10:00:00Z', 'eventSource': 's3.amazonaws.com',
          'eventName': 'GetObject', 'awsRegion': 'us-east-1', 'sourceIPAddress': '10.0.0.1',
          'userAgent': 'aws-cli/2', 'eventID': 'e1', 'readOnly': True,
          'userIdentity': {'type': 'AssumedRole', 'arn': 'arn:aws:sts::111122223333:assumed-role/app/s',
                           'sessionContext': {'sessionIssuer': {
                               'arn': 'arn:aws:iam::111122223333:role/app'}}}}
# A child Python that cannot import apitools, as when apache-beam[gcp] is not installed.
NO_APITOOLS = '''
import sys
class _NoApitools:
  def find_spec(self, name, path=None, target=None):
    if name == 'apitools' or name.startswith('apitools.'):
      raise ImportError('no module named ' + name)
sys.meta_path.insert(0, _NoApitools())
from postauth.pipeline.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture
def inputs(tmp_path):
  """Good small inputs (events, inventory) that each case spoils one at a time."""
  (tmp_path / 'logs').mkdir()
  (tmp_path / 'logs' / 'a.jsonl').write_text(json.dumps(RECORD) + '\n')
  (tmp_path / 'inventory.csv').write_text(HEADER + ROW)
  return tmp_path


def _run_args(d, **override):
  args = {'--events': f'{d}/logs/*', '--inventory': f'{d}/inventory.csv',
          '--model-dir': f'{d}/model', '--findings': f'{d}/out/findings.jsonl'}
  args.update(override)
  return ['run'] + [f'{k}={v}' for k, v in args.items() if v is not None] + ['--runner=FnApiRunner']


def _refused(argv, capsys, *words):
  code = main(argv)
  err = capsys.readouterr().err
  errors = [l for l in err.splitlines() if 'error' in l.lower()]
  assert code == 2, err
  assert 'Traceback' not in err, err
  assert len(errors) == 1, err
  for w in words:
    assert w in errors[0], (w, errors[0])
  return errors[0]


def test_inventory_without_required_columns_is_refused_naming_them(inputs, capsys):
  (inputs / 'inv.csv').write_text('identity,owner\narn:x,o\n')
  line = _refused(_run_args(inputs, **{'--inventory': f'{inputs}/inv.csv'}), capsys,
                  'inv.csv', 'missing columns', 'identity_type', 'team', 'environment')
  assert line.startswith('postauth run: error: --inventory')


def test_jsonl_inventory_without_required_fields_is_refused(inputs, capsys):
  (inputs / 'inv.jsonl').write_text(json.dumps({'identity': 'arn:x', 'owner': 'o'}) + '\n')
  _refused(_run_args(inputs, **{'--inventory': f'{inputs}/inv.jsonl'}), capsys,
           'inv.jsonl', 'missing columns', 'identity_type', 'team', 'environment')


@pytest.mark.parametrize('name, problem', [('nope.csv', 'no such file'), ('logs', 'is a folder')])
def test_unreadable_inventory_is_refused(inputs, capsys, name, problem):
  _refused(_run_args(inputs, **{'--inventory': f'{inputs}/{name}'}), capsys, name, problem)


def test_train_refuses_a_bad_inventory_before_launch(inputs, capsys):
  (inputs / 'inv.csv').write_text('identity,team\narn:x,t\n')
  _refused(['train', f'--events={inputs}/logs/*', f'--inventory={inputs}/inv.csv',
            f'--model-dir={inputs}/model', '--runner=FnApiRunner'], capsys,
           'postauth train: error', 'inv.csv', 'identity_type')


def test_a_misspelt_or_stray_argument_is_refused_not_dropped(inputs, capsys):
  # Beam drops a flag no options class defines with a log line: the job would run on defaults
  line = _refused(_run_args(inputs, **{'--treshold': '5'}), capsys, 'unknown argument --treshold',
                  'did you mean --threshold?')
  assert line.startswith('postauth run: error:')
  _refused(_run_args(inputs) + ['extra'], capsys, 'unknown argument extra')
  _refused(['train', f'--events={inputs}/logs/*', f'--inventory={inputs}/inventory.csv',
            f'--model-dir={inputs}/model', '--no-promotion', '--runner=FnApiRunner'], capsys,
           'postauth train: error: unknown argument --no-promotion', 'did you mean --no-promote?')
  _refused(['demo', f'--out={inputs}/demo', '--runer=FnApiRunner'], capsys,
           'postauth demo: error: unknown argument --runer', 'did you mean --runner?')
  assert not (inputs / 'demo').exists()  # refused before the sample is generated


def test_a_value_its_flag_cannot_take_or_an_unknown_runner_is_one_line(inputs, capsys):
  # argparse printed the whole usage for the first, beam.Pipeline raised a traceback for the second
  _refused(_run_args(inputs, **{'--threshold': 'abc'}), capsys,
           "postauth run: error: argument --threshold: invalid float value: 'abc'")
  args = [a for a in _run_args(inputs) if not a.startswith('--runner')]
  _refused(args + ['--runner=NoSuchRunner'], capsys, '--runner NoSuchRunner: Unexpected pipeline runner')
  _refused(args + ['--runner=no_such_module.Runner'], capsys, "--runner no_such_module.Runner: No module named")


@pytest.mark.parametrize('argv, words', [
    (['generate', '--out=OUT', '--identities=abc'], "postauth generate: error: argument --identities: invalid int value"),
    (['evaluate', '--findings=f.jsonl'], 'postauth evaluate: error: the following arguments are required: --labels'),
    (['report', '--findings=f.jsonl', '--bogus'], 'postauth report: error: unrecognized arguments: --bogus'),
    (['compact'], 'postauth compact: error: the following arguments are required: --findings'),
    (['rollback', '--model-dir=m', '--to'], 'postauth rollback: error: argument --to: expected one argument'),
])
def test_the_other_commands_refuse_their_bad_flags_in_one_line_too(inputs, capsys, argv, words):
  _refused([a.replace('OUT', str(inputs / 'gen')) for a in argv], capsys, words)
  assert not (inputs / 'gen').exists()


def test_runner_flags_are_arguments_too(inputs, capsys):
  # Dataflow's, Flink's and Prism's Python options pass the check (the run stops later, at the
  # missing model); so does a job server's own option on a runner that hands it on (Flink's
  # checkpointing), but not on a runner where nothing would read it, nor a misspelt postauth flag
  _refused(_run_args(inputs) + ['--experiments=x', '--flink_master=localhost:8081', '--prism_location=/p',
                                '--temp_location=/tmp', '--max_num_workers=3'], capsys, 'LATEST is missing')
  flink = [a for a in _run_args(inputs) if not a.startswith('--runner')] + ['--runner=FlinkRunner']
  _refused(flink + ['--checkpointing_interval=1000', '--state_backend', 'rocksdb'], capsys, 'LATEST is missing')
  _refused(_run_args(inputs) + ['--checkpointing_interval=1000'], capsys,
           'unknown argument --checkpointing_interval')
  _refused(flink + ['--model-dri=m'], capsys, 'unknown argument --model-dri (did you mean --model-dir?)')
  _refused(flink + ['--treshold=5'], capsys, 'unknown argument --treshold (did you mean --threshold?)')


def test_an_output_that_cannot_be_written_is_refused_before_the_job(inputs, capsys):
  # the sink's write failed with a traceback at the job's end
  out = {'--findings': f'{inputs}/inventory.csv/findings.jsonl'}
  _refused(_run_args(inputs, **out), capsys, '--findings', 'inventory.csv is a file, not a folder')
  _refused(_run_args(inputs, **{'--findings': str(inputs / 'logs')}), capsys, 'is a folder, not a file to write')
  for flag in ('--dead-letters', '--suppressed', '--sink'):
    _refused(_run_args(inputs, **{flag: f'{inputs}/logs/a.jsonl/x.jsonl'}), capsys,
             f'{flag} {inputs}/logs/a.jsonl/x.jsonl: {inputs}/logs/a.jsonl is a file, not a folder')
  assert not (inputs / 'out').exists()
  if os.path.isdir('/proc/self'):  # permission bits say yes (as root), the folder cannot be made
    _refused(_run_args(inputs, **{'--findings': '/proc/nope/findings.jsonl'}), capsys,
             '--findings /proc/nope/findings.jsonl: cannot write in /proc')
  assert not [p for p in os.listdir(inputs) if p.startswith('.postauth-probe-')]


@pytest.mark.parametrize('command, flag', [
    ('generate', '--out'), ('parse', '--out'), ('report', '--out'), ('evaluate', '--out'),
    ('evaluate', '--markdown'), ('demo', '--out'), ('train', '--model-dir')])
def test_every_commands_output_under_a_file_is_refused_before_it_starts(inputs, capsys, command, flag):
  """Each wrote its files last, and failed then with a traceback (train after its whole job)."""
  (inputs / 'findings.jsonl').write_text('')
  (inputs / 'labels.json').write_text('[]')
  needs = {'parse': [f'--events={inputs}/logs/*'], 'report': [f'--findings={inputs}/findings.jsonl'],
           'evaluate': [f'--findings={inputs}/findings.jsonl', f'--labels={inputs}/labels.json'],
           'train': [f'--events={inputs}/logs/*', f'--inventory={inputs}/inventory.csv',
                     '--runner=FnApiRunner']}
  target = f'{inputs}/inventory.csv/made'
  _refused([command, f'{flag}={target}', *needs.get(command, [])], capsys,
           f'{flag} {target}: {inputs}/inventory.csv is a file, not a folder')
  assert (inputs / 'inventory.csv').read_text() == HEADER + ROW


def test_missing_or_wrong_model_dir_is_refused(inputs, capsys):
  _refused(_run_args(inputs), capsys, 'model', 'LATEST is missing')
  _refused(_run_args(inputs, **{'--model-dir': f'{inputs}/inventory.csv'}), capsys,
           'inventory.csv', 'is a file, not a model folder')


@pytest.mark.parametrize('content, words', [
    ('not,a,taxonomy\n', ('missing columns', 'service', 'category')),
    ('service,action,category\ns3,GetObject,no_such_category\n', ('no_such_category',)),
    (None, ('no such file',)),
])
def test_bad_taxonomy_file_is_refused(inputs, capsys, content, words):
  path = inputs / 'tax.csv'
  if content is not None:
    path.write_text(content)
  _refused(_run_args(inputs) + [f'--taxonomy-file={path}'], capsys, 'tax.csv', *words)


@pytest.mark.parametrize('content, problem', [
    (None, 'no such file'), ('[{"identity": "x"}]', 'needs at least "expires" and "reason"'),
    ('{"identity": ', 'not valid JSON')])
def test_bad_allowlist_is_refused(inputs, capsys, content, problem):
  path = inputs / 'allow.json'
  if content is not None:
    path.write_text(content)
  _refused(_run_args(inputs, **{'--allowlist': str(path)}), capsys, 'allow.json', problem)


@pytest.mark.parametrize('content, problem', [
    (None, 'no such file'), ('{"n_estimators": ', 'Expecting value'), ('{"trees": 3}', 'unknown keys')])
def test_bad_train_config_is_refused(inputs, capsys, content, problem):
  path = inputs / 'cfg.json'
  if content is not None:
    path.write_text(content)
  _refused(['train', f'--events={inputs}/logs/*', f'--inventory={inputs}/inventory.csv',
            f'--model-dir={inputs}/model', f'--train-config={path}', '--runner=FnApiRunner'],
           capsys, 'cfg.json', problem)


def test_events_matching_no_file_exit_2_naming_the_pattern(inputs, capsys):
  _refused(_run_args(inputs, **{'--events': f'{inputs}/nothing/*.gz'}), capsys,
           'postauth run: error: --events', 'nothing/*.gz', 'matches no file')
  _refused(['train', f'--events={inputs}/nothing/*', f'--inventory={inputs}/inventory.csv',
            f'--model-dir={inputs}/model', '--runner=FnApiRunner'], capsys, 'matches no file')
  _refused(_run_args(inputs, **{'--events': f'{inputs}/logs'}), capsys, 'is a folder', 'logs/*')
  _refused(['parse', f'--events={inputs}/nothing/*', f'--out={inputs}/out', '--runner=FnApiRunner'],
           capsys, 'postauth parse: error: --events', 'matches no file')
  assert not (inputs / 'out').exists()  # nothing written: no empty findings file


def test_refusal_as_a_new_user_sees_it(inputs):
  """The installed command, without the GCP extra: one line on stderr, nothing else."""
  proc = subprocess.run([sys.executable, '-c', NO_APITOOLS] + _run_args(
      inputs, **{'--inventory': f'{inputs}/nope.csv'}), cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if not l.startswith('INFO ')]
  assert lines == [f'postauth run: error: --inventory {inputs}/nope.csv: no such file'], proc.stderr


def test_run_prints_no_apitools_warning_and_says_what_was_written_and_folded(sample, model_dir, tmp_path):
  findings = tmp_path / 'findings.jsonl'
  proc = subprocess.run([sys.executable, '-c', NO_APITOOLS, 'run', f'--events={sample["dir"]}/live/*',
                         f'--inventory={sample["inventory"]}', f'--model-dir={model_dir}',
                         f'--findings={findings}', '--runner=FnApiRunner'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'apitools' not in proc.stderr and 'Traceback' not in proc.stderr
  rows = [json.loads(l) for l in findings.read_text().splitlines() if l.strip()]
  line = next(l for l in proc.stdout.splitlines() if 'findings_written=' in l)
  c = dict(kv.split('=') for kv in line.split(', '))
  assert 'findings' not in c  # the count before deduplication is no longer shown as "findings"
  assert int(c['findings_written']) == len(rows)
  assert int(c['findings_folded']) == sum(r.get('occurrences', 1) - 1 for r in rows)
  assert int(c['findings_raised']) == (int(c['findings_written']) + int(c['findings_folded'])
                                       + int(c['findings_suppressed']))


# -- stopping a streaming job ------------------------------------------------------------------
def _delivery(sample, folder, n=200):
  with open(sorted(p for p in (os.path.join(sample['dir'], 'live', f) for f in
                               os.listdir(os.path.join(sample['dir'], 'live'))))[0]) as f:
    records = [json.loads(line) for _, line in zip(range(n), f)]
  with gzip.open(folder / 'part-0.json.gz', 'wt') as f:
    json.dump({'Records': records}, f)


def _stop_watch_job(sample, model_dir, tmp_path, signum, runner):
  """A watching job that has read one file, sent ``signum``: (exit code, stderr, findings path)."""
  folder = tmp_path / 'cloudtrail'
  folder.mkdir()
  _delivery(sample, folder)
  findings = tmp_path / 'out' / 'findings.jsonl'
  cmd = [sys.executable, '-m', 'postauth.pipeline.cli', 'run', '--streaming',
         f'--events-watch={folder}/*.json.gz', f'--inventory={sample["inventory"]}',
         f'--model-dir={model_dir}', f'--findings={findings}', '--watch-interval=1', f'--runner={runner}']
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines, reading = [], threading.Event()

  def read_stderr():
    for line in proc.stderr:
      lines.append(line)
      if 'read 1 new file(s)' in line:
        reading.set()

  reader = threading.Thread(target=read_stderr, daemon=True)
  reader.start()
  try:
    assert reading.wait(150), ''.join(lines)[-3000:]
    time.sleep(2)
    proc.send_signal(signum)
    try:
      code = proc.wait(60)
    except subprocess.TimeoutExpired:
      code = None
  finally:
    terminate(proc)
  reader.join(5)
  return code, ''.join(lines), findings


@pytest.mark.parametrize('signum, expected', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_streaming_run_stops_cleanly_on_a_signal(sample, model_dir, tmp_path, signum, expected):
  code, stderr, findings = _stop_watch_job(sample, model_dir, tmp_path, signum, 'FnApiRunner')
  assert code == expected, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  name = signal.Signals(signum).name
  stopped = [l for l in stderr.splitlines() if l.startswith(f'postauth run: stopped by {name}')]
  assert len(stopped) == 1, stderr[-3000:]
  assert 'findings_written=' in stopped[0] and str(findings) in stopped[0]
  assert findings.exists()  # what the sinks held is flushed into the findings file


@pytest.mark.parametrize('signum, expected', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_streaming_run_on_prism_is_cancelled_on_a_signal(sample, model_dir, tmp_path, signum, expected):
  """On SIGINT, Beam's job server wrapper has its own handler (it stops Prism at once, and the
  SDK harness threads die with tracebacks); postauth's stays on top and cancels the job."""
  from postauth.pipeline.prism import local_binary
  if not local_binary():
    pytest.skip('no Prism binary (make prism)')
  code, stderr, _ = _stop_watch_job(sample, model_dir, tmp_path, signum, 'PrismRunner')
  assert code == expected, stderr[-3000:]
  assert 'Traceback' not in stderr and 'Exception in thread' not in stderr, stderr[-3000:]
  name = signal.Signals(signum).name
  assert f'postauth run: stopped by {name}: job cancelled' in stderr, stderr[-3000:]


def test_after_a_stop_only_the_main_thread_reaches_stderr():
  """Beam's SDK harness prints a failed bundle's traceback to stderr itself, from its thread (a
  cancelled job's bundle whose processor was shut down under it): after the stop that is the
  expected end of the job, so it goes to the DEBUG log; postauth's own lines still show."""
  script = ('import sys, threading\n'
            'from postauth.pipeline import stop\n'
            'stop.quiet_shutdown()\n'
            't = threading.Thread(target=lambda: print("Traceback (most recent call last): KeyError", file=sys.stderr))\n'
            't.start(); t.join()\n'
            'print("postauth run: stopped by SIGINT", file=sys.stderr)\n')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert 'stopped by SIGINT' in out.stderr and 'Traceback' not in out.stderr, out.stderr
