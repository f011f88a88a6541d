"""Parse throughput per format, against a bare-decoder baseline measured in the same run.

    .venv/bin/python bench/parse.py [--records 50000] [--beam-records 20000] [--repeat 3]

For every format (CloudTrail, GCP audit, K8s audit, OCSF, canonical JSON lines,
canonical Avro) it writes --records records made from the hand-written fixtures
(ids, times, identities and IPs varied per record), then measures on one core:

  baseline  the fastest bare decoder for that input: orjson.loads per line, or
            fastavro.reader for Avro (no validation, no mapping, no taxonomy);
  postauth  split_records + RecordParser, i.e. what the Beam parse step runs per file.

Figures are events per CPU-second of this process (best of --repeat), so they are
per core and little affected by other load on the machine; the ratio baseline/postauth
is what to compare across machines. Last, the whole `postauth parse` Beam job
(FnApiRunner, one worker: read, parse, counters, Avro and dead-letter writes) runs
over --beam-records per format, against the same baseline over the same files.
Results also go to bench/results/parse.json (gitignored).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import glob
import io
import json
import os
import shutil
import sys
import tempfile
import time

import fastavro
import orjson

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from postauth.transforms import avro_events  # noqa: E402
from postauth.domain.event import Event  # noqa: E402
from postauth.transforms.parse import RecordParser  # noqa: E402
from postauth.transforms.records import split_records  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures')
START = datetime.datetime(2026, 3, 2, tzinfo=datetime.timezone.utc).timestamp()


def seeds():
  """Fixture records that parse, by format (the generated records are variations of them)."""
  parser, out = RecordParser(), {}
  for path in sorted(glob.glob(os.path.join(FIXTURES, '*'))):
    with open(path, 'rb') as f:
      for r in split_records(f.read(), path):
        fmt, result = parser.parse_with_format(r)
        if isinstance(result, Event):
          out.setdefault(fmt, []).append((r.obj, result))
  out['canonical'] = [(e._asdict(), e) for recs in list(out.values()) for _, e in recs]
  return out


def rfc3339(t: float, digits: int) -> str:
  base = datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S')
  frac = f'{t % 1:.9f}'[2:2 + digits]
  return base + ('.' + frac if digits else '') + 'Z'


def vary(fmt: str, rec: dict, i: int) -> dict:
  """Record i: a fresh id, a later time, one of 500 identities, one of 250 IPs."""
  rec = copy.deepcopy(rec)
  t = START + i * 0.37
  who, ip = i % 500, f'10.{i % 250}.{(i // 250) % 250}.7'
  if fmt == 'cloudtrail':
    body = rec['detail'] if 'detail' in rec else rec
    body['eventID'], body['eventTime'], body['sourceIPAddress'] = f'ev-{i}', rfc3339(t, 0), ip
    ui = body['userIdentity']
    if 'arn' in ui:
      ui['arn'] = ui['arn'].rsplit('/', 1)[0] + f'/id-{who}' if ui.get('type') != 'AssumedRole' else ui['arn']
    issuer = (ui.get('sessionContext') or {}).get('sessionIssuer')
    if issuer and 'arn' in issuer:
      issuer['arn'] = issuer['arn'].rsplit('/', 1)[0] + f'/role-{who}'
  elif fmt == 'gcp_audit':
    rec['insertId'], rec['timestamp'] = f'gcp-{i}', rfc3339(t, 9)  # nanoseconds, as GCP writes
    rec['protoPayload']['authenticationInfo']['principalEmail'] = f'sa-{who}@p.iam.gserviceaccount.com'
    rec['protoPayload'].setdefault('requestMetadata', {})['callerIp'] = ip
  elif fmt == 'k8s_audit':
    rec['auditID'], rec['stageTimestamp'] = f'k8s-{i}', rfc3339(t, 6)
    rec['requestReceivedTimestamp'] = rfc3339(t - 0.01, 6)
    rec['user']['username'] = f'system:serviceaccount:ns-{who % 20}:sa-{who}'
    rec['sourceIPs'] = [ip]
  elif fmt == 'ocsf':
    rec.setdefault('metadata', {})['uid'] = f'ocsf-{i}'
    rec['time'] = int(t * 1000)
    rec['actor']['user']['uid'] = f'user-{who}'
    rec.setdefault('src_endpoint', {})['ip'] = ip
  else:  # canonical
    rec.update(event_id=f'c-{i}', event_time=t, identity=f'id-{who}', source_ip=ip, raw_ref=f'gen#{i}')
  return rec


def generate(out_dir: str, n: int):
  """{name: path}: one JSON-lines file per format and one Avro file of canonical events."""
  files = {}
  for fmt, recs in sorted(seeds().items()):
    path = os.path.join(out_dir, f'{fmt}.jsonl')
    with open(path, 'wb') as f:
      f.write(b'\n'.join(orjson.dumps(vary(fmt, recs[i % len(recs)][0], i)) for i in range(n)) + b'\n')
    files[fmt] = path
  with open(files['canonical'], 'rb') as f:
    events = [avro_events.from_avro(orjson.loads(line)) for line in f if line.strip()]
  path = os.path.join(out_dir, 'canonical.avro')
  with open(path, 'wb') as f:
    avro_events.write_events(f, events)
  files['canonical (Avro)'] = path
  return files


def cpu_best(fn, repeat: int):
  """(result, best CPU seconds of this process, wall seconds of that run)."""
  best = None
  for _ in range(repeat):
    c0, w0 = time.process_time(), time.perf_counter()
    result = fn()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if best is None or cpu < best[1]:
      best = (result, cpu, wall)
  return best


def baseline(data: bytes) -> int:
  if data[:4] == b'Obj\x01':
    return sum(1 for _ in fastavro.reader(io.BytesIO(data)))
  return sum(1 for line in data.split(b'\n') if line and orjson.loads(line) is not None)


def postauth(data: bytes, parser: RecordParser, source: str) -> int:
  return sum(isinstance(parser.parse(r), Event) for r in split_records(data, source))


def run_beam(files, n: int, tmp: str):
  """The `postauth parse` job over the first n records of every file (FnApiRunner, 1 worker)."""
  from postauth.pipeline.parse_job import run_parse
  src = os.path.join(tmp, 'beam-in')
  os.makedirs(src)
  for name, path in files.items():
    with open(path, 'rb') as f:
      data = f.read()
    dst = os.path.join(src, os.path.basename(path))
    if path.endswith('.avro'):
      events = list(avro_events.read_events(io.BytesIO(data)))[:n]
      with open(dst, 'wb') as f:
        avro_events.write_events(f, events)
    else:
      with open(dst, 'wb') as f:
        f.write(b'\n'.join(data.split(b'\n')[:n]) + b'\n')
  datas = []
  for p in sorted(glob.glob(os.path.join(src, '*'))):
    with open(p, 'rb') as f:
      datas.append(f.read())
  _, base_cpu, _ = cpu_best(lambda: sum(baseline(d) for d in datas), 3)
  c0, w0 = time.process_time(), time.perf_counter()
  out = run_parse([f'--events={src}/*', f'--out={os.path.join(tmp, "beam-out")}',
                   '--runner=FnApiRunner', '--direct_num_workers=1'])
  cpu, wall = time.process_time() - c0, time.perf_counter() - w0
  return out['summary'], base_cpu, cpu, wall


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--records', type=int, default=50000, help='Records per format (default 50000).')
  ap.add_argument('--beam-records', type=int, default=20000,
                  help='Records per format for the Beam job (default 20000; 0 skips it).')
  ap.add_argument('--repeat', type=int, default=3, help='Runs per measurement; the best counts.')
  ap.add_argument('--json', default=os.path.join(os.path.dirname(__file__), 'results', 'parse.json'))
  a = ap.parse_args()
  tmp = tempfile.mkdtemp(prefix='postauth-bench-parse-')
  try:
    files = generate(tmp, a.records)
    parser = RecordParser()
    rows = []
    print(f'{"format":18s} {"records":>8s} {"baseline ev/s":>14s} {"postauth ev/s":>14s} {"baseline/postauth":>18s}')
    for name, path in files.items():
      with open(path, 'rb') as f:
        data = f.read()
      n_base, base_cpu, _ = cpu_best(lambda: baseline(data), a.repeat)
      n_events, cpu, wall = cpu_best(lambda: postauth(data, parser, path), a.repeat)
      assert n_base == n_events == a.records, (name, n_base, n_events)  # every generated record parses
      row = {'format': name, 'records': a.records, 'baseline': 'fastavro.reader' if path.endswith('.avro')
             else 'orjson.loads per line', 'baseline_events_per_cpu_s': round(n_base / base_cpu),
             'postauth_events_per_cpu_s': round(n_events / cpu), 'postauth_wall_s': round(wall, 3),
             'ratio': round((n_base / base_cpu) / (n_events / cpu), 2)}
      rows.append(row)
      print(f'{name:18s} {a.records:8d} {row["baseline_events_per_cpu_s"]:14,d} '
            f'{row["postauth_events_per_cpu_s"]:14,d} {row["ratio"]:17.2f}x')
    beam = None
    if a.beam_records:
      summary, base_cpu, cpu, wall = run_beam(files, a.beam_records, tmp)
      n = summary['parsed']
      assert summary['read'] == n == a.beam_records * len(files), summary
      beam = {'records': n, 'baseline_events_per_cpu_s': round(n / base_cpu),
              'job_events_per_cpu_s': round(n / cpu), 'job_events_per_wall_s': round(n / wall),
              'job_wall_s': round(wall, 1), 'ratio': round((n / base_cpu) / (n / cpu), 1),
              'summary': summary}
      print(f'\n`postauth parse` Beam job, FnApiRunner, 1 worker, {n} records of {len(files)} inputs '
            f'(startup included):\n  baseline {beam["baseline_events_per_cpu_s"]:,d} ev/s, job '
            f'{beam["job_events_per_cpu_s"]:,d} ev/CPU-s ({beam["job_events_per_wall_s"]:,d} ev/s wall, '
            f'{wall:.1f}s), baseline/job {beam["ratio"]}x')
    result = {'when': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              'cpu_count': os.cpu_count(), 'python': sys.version.split()[0], 'formats': rows, 'beam_job': beam}
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, 'w') as f:
      json.dump(result, f, indent=2)
    print(f'\nwritten {a.json}')
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
