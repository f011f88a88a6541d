"""--events-watch: a streaming job watching a folder while CloudTrail delivery files land in it.

The job runs as a subprocess (``postauth run --streaming --events-watch``) bounded from outside
(a deadline, then SIGTERM/kill). A thread writes the sample's live CloudTrail records as gzip
delivery files (``{"Records": [...]}``) once the job has read the first one, rewrites a file under
the same name, and puts hostile records into them: one no parser knows, one dated 2099 (before,
it moved the watermark to 2099 and every later record was late) and one of 3 MB.
``--watch-stop-idle`` ends the source after the writes, so the job closes every window and
finishes: its findings must equal the batch run's over the other records. A restarted watch job
keeps what the first run wrote.
"""
from __future__ import annotations

import base64
import glob
import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import orjson
import pytest

from postauth.pipeline import options as opts
from postauth.pipeline.jobs import pipeline_options
# Fixtures shared with the portable-runner tests (the batch FnApiRunner findings of the sample).
from test_pubsub import _iso_shift
from test_runners import _detect, fnapi_batch  # noqa: F401
from conftest import terminate
from conftest import missing_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = 4
BAD = {'neither': 'cloudtrail nor any known format'}
MARKER = {'rewritten': 'this record exists only in the second write of part-0'}


def _live_records(sample):
  records = []
  for path in sorted(glob.glob(os.path.join(sample['dir'], 'live', '*'))):
    with open(path) as f:
      records += [json.loads(line) for line in f if line.strip()]
  return sorted(records, key=lambda r: r['eventTime'])


def _write_delivery(path, records):
  """A CloudTrail S3 delivery file, written beside and renamed into place like an upload."""
  tmp = os.path.join(os.path.dirname(path), '.' + os.path.basename(path) + '.tmp')
  with gzip.open(tmp, 'wt') as f:
    json.dump({'Records': records}, f)
  os.replace(tmp, path)


def _hostile(records):
  """A copy of a record dated 2099, and one of 3 MB (incompressible, so no gzip bound stops its file)."""
  far = dict(records[0], eventID='dated-2099', eventTime='2099-01-01T00:00:00Z')
  blob = base64.b64encode(random.Random(23).randbytes(3 * (1 << 20) * 3 // 4)).decode()
  big = dict(records[1], eventID='three-mb', requestParameters={'blob': blob})
  return far, big


def _watch_job(sample, model_dir, tmp_path, runner_args, records, deadline_seconds=150):
  """Runs the watching job while a thread delivers files; returns (findings, dead letters, stderr)."""
  folder = tmp_path / 'cloudtrail'
  folder.mkdir()
  size = -(-len(records) // FILES)
  parts = [records[i * size:(i + 1) * size] for i in range(FILES)]
  far, big = _hostile(records)
  parts[1] = parts[1][:5] + [far] + parts[1][5:]  # read before half the records: none may be late
  parts[2] = parts[2][:10] + [BAD] + parts[2][10:] + [big]  # hostile records inside a delivery file
  findings, dead = tmp_path / 'findings.jsonl', tmp_path / 'dead-letter.jsonl'
  cmd = [sys.executable, '-m', 'postauth.pipeline.cli', 'run', '--streaming',
         f'--events-watch={folder}/*.json.gz', f'--inventory={sample["inventory"]}',
         f'--model-dir={model_dir}', f'--findings={findings}', f'--dead-letters={dead}',
         '--watch-interval=1', '--watch-idle-seconds=3', '--watch-stop-idle=6', *runner_args]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  lines, first_read = [], threading.Event()

  def read_stderr():
    for line in proc.stderr:
      lines.append(line)
      if 'read 1 new file(s)' in line and 'part-0' in line:
        first_read.set()

  def deliver():
    _write_delivery(str(folder / 'part-0.json.gz'), parts[0])
    if not first_read.wait(90):
      return
    for i in range(1, FILES):  # delivered while the job runs, one every 0.6 s
      time.sleep(0.6)
      _write_delivery(str(folder / f'part-{i}.json.gz'), parts[i])
    time.sleep(0.6)  # part-0 written again under the same name: must not be read again
    _write_delivery(str(folder / 'part-0.json.gz'), parts[0] + [MARKER])

  reader = threading.Thread(target=read_stderr, daemon=True)
  writer = threading.Thread(target=deliver, daemon=True)
  t0 = time.time()
  reader.start()
  writer.start()
  try:
    code = proc.wait(deadline_seconds)
  except subprocess.TimeoutExpired:
    terminate(proc)
    code = None
  elapsed = time.time() - t0
  writer.join(5)
  reader.join(5)
  stderr = ''.join(lines)
  assert first_read.is_set(), f'the job never read the first file; stderr:\n{stderr[-3000:]}'
  assert code == 0, f'job ended with {code} after {elapsed:.0f}s; stderr:\n{stderr[-3000:]}'
  with open(findings) as f:
    rows = sorted((json.loads(l) for l in f if l.strip()), key=lambda r: r['finding_id'])
  with open(dead) as f:
    dead_lines = [json.loads(l) for l in f if l.strip()]
  print(f'\n{runner_args}: {len(records)} records in {FILES} files, job {elapsed:.1f}s')
  return rows, dead_lines, stderr, folder


def _assert_watch_result(rows, dead_lines, stderr, folder, expected, records):
  key = lambda f: (f['finding_id'], f['score'], f['severity'], f['windows'], f['event_count'])
  assert len(expected) >= 1
  # Every file read once, every record scored as the batch job scores the same records: nothing
  # late, nothing counted twice (the rewritten part-0 would double its events).
  assert [key(r) for r in rows] == [key(r) for r in expected]
  # The bad records are dead letters naming their file, each with its reason; the rewrite's
  # extra record never appears.
  by_reason = {d['reason'].split(' (')[0]: d for d in dead_lines}
  assert len(dead_lines) == 3, [d['reason'] for d in dead_lines]
  unknown = by_reason['unknown format']
  assert unknown['source'] == str(folder / 'part-2.json.gz') and json.loads(unknown['raw']) == BAD
  far = by_reason['time_ahead_of_clock']
  assert far['source'] == str(folder / 'part-1.json.gz') and json.loads(far['raw'])['eventID'] == 'dated-2099'
  assert far['detail'].startswith('event time 2099-01-01T00:00:00Z is ')
  # The 3 MB record: a dead letter under 1 MiB, with the size and SHA-256 of the record as read.
  raw = orjson.dumps(_hostile(records)[1])
  big = by_reason[f'record of {len(raw)} bytes exceeds 1048576']
  assert big['source'] == str(folder / 'part-2.json.gz') and big['raw_truncated']
  assert (big['raw_bytes'], big['raw_sha256']) == (len(raw), hashlib.sha256(raw).hexdigest()) and len(raw) > 3 << 20
  assert raw.decode().startswith(big['raw']) and big['raw_sha256'] in big['reason']
  assert len(json.dumps(big, ensure_ascii=False).encode()) < 1 << 20
  reads = [line for line in stderr.splitlines() if 'new file(s)' in line]
  assert sum(line.count('part-') for line in reads) == FILES, reads
  assert 'stopping' in stderr


def test_watch_folder_on_prism_gives_the_batch_findings(fnapi_batch, sample, model_dir, tmp_path):
  _prism_or_skip()
  # The records of every identity around one attack (a few hundred), to keep Prism's time down;
  # compared with the batch job on the same records.
  label = next(l for l in sample['labels'] if l['scenario'] == 'apikey_secret_sweep_and_rotation')
  lo, hi = _iso_shift(label['start'], -4500), _iso_shift(label['end'], 4500)
  records = [r for r in _live_records(sample) if lo <= r['eventTime'] < hi]
  assert 300 < len(records) < 1500
  batch = tmp_path / 'batch'
  batch.mkdir()
  with open(batch / 'records.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  expected, _ = _detect(sample, model_dir, batch / 'findings.jsonl', '--runner=FnApiRunner',
                        f'--events={batch}/records.jsonl')
  rows, dead_lines, stderr, folder = _watch_job(sample, model_dir, tmp_path, ['--runner=PrismRunner'],
                                                records)
  _assert_watch_result(rows, dead_lines, stderr, folder, expected, records)


def _prism_or_skip():
  from postauth.pipeline import prism  # the skip / CI=true failure rule of tests/test_prism.py
  if prism.local_binary() is None:
    message = f'no Prism binary at {prism.binary_path()}: run `make prism`'
    missing_tool(message)


def _run_watch_until_idle(sample, model_dir, folder, out, deadline_seconds=150):
  """One run of a watch job over what ``folder`` holds now, ended by --watch-stop-idle."""
  cmd = [sys.executable, '-m', 'postauth.pipeline.cli', 'run', '--streaming', '--runner=PrismRunner',
         f'--events-watch={folder}/*.json.gz', f'--inventory={sample["inventory"]}',
         f'--model-dir={model_dir}', f'--findings={out}/findings.jsonl', f'--dead-letters={out}/dead-letter.jsonl',
         '--watch-interval=1', '--watch-idle-seconds=2', '--watch-stop-idle=4', '--threshold=0',
         '--dedup-period=0']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=deadline_seconds)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / 'findings.jsonl') as f:
    findings = {json.loads(l)['finding_id'] for l in f if l.strip()}
  with open(out / 'dead-letter.jsonl') as f:
    dead = sorted(json.loads(l)['source'] for l in f if l.strip())
  return findings, dead


def test_a_restarted_watch_job_keeps_the_first_runs_findings_and_dead_letters(sample, model_dir, tmp_path):
  """The first run reads one delivery file (with a bad record) and ends; the file is archived,
  another arrives, and the job is started again on the same glob and outputs. Before, the restart
  deleted the first run's parts: its findings and its dead letter were gone. (--threshold 0:
  every window is a finding, so a few records of two hours suffice.)"""
  _prism_or_skip()
  records = _live_records(sample)
  first, second = records[:40], records[-40:]
  folder, archive, out = tmp_path / 'cloudtrail', tmp_path / 'archive', tmp_path / 'out'
  for d in (folder, archive, out):
    d.mkdir()
  _write_delivery(str(folder / 'first.json.gz'), first + [BAD])
  findings1, dead1 = _run_watch_until_idle(sample, model_dir, folder, out)
  assert findings1 and dead1 == [str(folder / 'first.json.gz')]
  shutil.move(str(folder / 'first.json.gz'), str(archive / 'first.json.gz'))  # read: archived
  _write_delivery(str(folder / 'second.json.gz'), second + [BAD])
  findings2, dead2 = _run_watch_until_idle(sample, model_dir, folder, out)
  assert findings1 <= findings2 and findings2 - findings1, (len(findings1), len(findings2))
  assert dead2 == [str(folder / 'first.json.gz'), str(folder / 'second.json.gz')]


# -- options ---------------------------------------------------------------------------------------
def _base(tmp_path):
  return [f'--inventory={tmp_path}/inv.csv', f'--model-dir={tmp_path}', f'--findings={tmp_path}/f.jsonl']


@pytest.mark.parametrize('extra, message', [
    ([], 'add --streaming'),
    (['--streaming', '--events=x/*'], 'drop --events'),
    (['--streaming', '--subscription=projects/p/subscriptions/s'], 'drop --subscription'),
    (['--streaming', '--watch-interval=0'], '--watch-interval must be > 0'),
    (['--streaming', '--watch-stop-idle=-1'], '>= 0'),
])
def test_watch_option_refuses_bad_combinations(tmp_path, extra, message):
  options = pipeline_options(['--events-watch=logs/*.json.gz', *_base(tmp_path), *extra])
  with pytest.raises(opts.OptionsError, match=message):
    opts.validate_watch(options)


def test_watch_bad_combination_exits_2_with_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'postauth.pipeline.cli', 'run', '--events-watch=logs/*',
                         '--runner=FnApiRunner', *_base(tmp_path)], cwd=REPO, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if 'error' in l.lower()]
  assert len(errors) == 1 and '--events-watch' in errors[0] and '--streaming' in errors[0], proc.stderr


def test_watch_options_parse():
  options = pipeline_options(['--streaming', '--events-watch=gs://b/AWSLogs/*/CloudTrail/*/*.json.gz',
                              '--watch-interval=60', '--watch-max-delay=300'])
  assert options.view_as(opts.EventOptions).events_watch.startswith('gs://b/')
  w = options.view_as(opts.WatchOptions)
  assert (w.watch_interval, w.watch_max_delay, w.watch_idle_seconds, w.watch_stop_idle) == (60, 300, 900, 0)
