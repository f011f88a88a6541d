"""One bad record cannot wedge or exhaust the job: oversized records and gzip bombs are bounded.

A record over ``--max-record-bytes`` is dead-lettered with a prefix of its payload, its size and
its SHA-256 (never the whole record: a dead-letter sink has message and row limits of its own);
gzip input is decompressed with a bound on bytes and on the expansion ratio.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib

import orjson

from postauth.domain.event import Event
from postauth.transforms.parse import RecordParser, dead_letter
from postauth.transforms.records import RawRecord, split_records
from test_parse_job import _ct, parse_cli, read_avro, read_dead

MIB = 1 << 20


def _zero_bomb(size: int) -> bytes:
  """``size`` zero bytes gzipped without holding them: about 1000:1, as a decompression bomb."""
  z = zlib.compressobj(9, zlib.DEFLATED, 31)
  chunk, parts = b'\0' * MIB, []
  for _ in range(size // MIB):
    parts.append(z.compress(chunk))
  parts.append(z.flush())
  return b''.join(parts)


def _dead_lines(out_dir):
  lines = []
  for name in sorted(os.listdir(out_dir)):
    if name.startswith('dead-letter'):
      with open(os.path.join(out_dir, name), 'rb') as f:
        lines += [line for line in f.read().split(b'\n') if line.strip()]
  return lines


def test_oversized_record_is_dead_lettered_with_a_prefix_its_size_and_sha256(tmp_path, capsys):
  src, out = tmp_path / 'in', str(tmp_path / 'out')
  src.mkdir()
  big = orjson.dumps(_ct(eventID='big', requestParameters={'blob': 'x' * (3 * MIB)}))
  (src / 'cloudtrail.jsonl').write_bytes(orjson.dumps(_ct()) + b'\n' + big + b'\n')
  code, s = parse_cli(capsys, f'--events={src}/*', f'--out={out}')
  assert code == 0 and (s['read'], s['parsed'], s['dead_lettered']) == (2, 1, 1)
  [line] = _dead_lines(out)
  assert len(line) < MIB  # the dead letter of a 3 MiB record
  [d] = read_dead(out)
  digest = hashlib.sha256(big).hexdigest()
  assert (d['raw_bytes'], d['raw_sha256'], d['raw_truncated']) == (len(big), digest, True)
  assert big.decode().startswith(d['raw']) and 0 < len(d['raw']) < MIB
  # the reason alone (all an Avro or BigQuery dead-letter row keeps) names the size and digest
  assert d['reason'].startswith(f'record of {len(big)} bytes exceeds 1048576') and digest in d['reason']


def test_max_record_bytes_is_a_flag(tmp_path, capsys):
  src = tmp_path / 'in'
  src.mkdir()
  record = orjson.dumps(_ct(requestParameters={'blob': 'y' * 5000}))
  (src / 'one.jsonl').write_bytes(record + b'\n')
  code, s = parse_cli(capsys, f'--events={src}/*', f'--out={tmp_path / "default"}')
  assert code == 0 and (s['parsed'], s['dead_lettered']) == (1, 0)
  code, s = parse_cli(capsys, f'--events={src}/*', f'--out={tmp_path / "small"}', '--max-record-bytes=4096')
  assert code == 0 and (s['parsed'], s['dead_lettered']) == (0, 1)
  [d] = read_dead(str(tmp_path / 'small'))
  assert d['reason'].startswith(f'record of {len(record)} bytes exceeds 4096')
  assert cli_error(capsys, f'--events={src}/*', f'--out={tmp_path / "x"}', '--max-record-bytes=0') \
      == 'postauth parse: error: --max-record-bytes 0 is out of range (at least 1)'


def cli_error(capsys, *args) -> str:
  from postauth.pipeline import cli
  assert cli.main(['parse', *args, '--runner=FnApiRunner']) == 2
  return capsys.readouterr().err.strip()


def test_a_record_that_arrives_alone_is_held_to_the_same_limit():
  """Pub/Sub messages and replayed records reach the parser as bytes, not through a file split."""
  from postauth.transforms.records import ReadLimits
  record = orjson.dumps(_ct(requestParameters={'blob': 'z' * 5000}))
  [(_, item)] = RecordParser(limits=ReadLimits(max_record_bytes=4096)).parse_items(
      RawRecord(record, None, '', 'pubsub:projects/p/subscriptions/s#1'))
  assert item.event is None and item.reason == f'record of {len(record)} bytes exceeds 4096'
  assert isinstance(RecordParser().parse(RawRecord(record, None, '', 'pubsub:s#2')), Event)


def test_gzip_bomb_is_refused_by_its_expansion_ratio_without_inflating_it():
  from postauth.transforms.records import ReadLimits
  bomb = _zero_bomb(64 * MIB)  # 64 MiB of zeros in about 64 KiB
  assert len(bomb) < MIB
  [record] = list(split_records(bomb, 'bomb.json.gz'))  # the default ratio, 200
  assert record.obj is None and record.ref == 'bomb.json.gz#0'
  assert record.error.startswith(f'gzip expands beyond {200 * len(bomb)} bytes'), record.error
  assert '--max-gzip-ratio 200 of its' in record.error
  assert record.raw == bomb  # the compressed file itself; dead_letter bounds what is written
  [small] = list(split_records(bomb, 'bomb.json.gz', ReadLimits(max_gzip_ratio=10)))
  assert small.error.startswith('gzip expands beyond 1048576 bytes')  # a file may always reach one record


def test_gzip_is_refused_beyond_max_gzip_bytes():
  from postauth.transforms.records import ReadLimits
  data = gzip.compress(b'\n'.join(orjson.dumps(_ct(eventID=str(i))) for i in range(20000)))
  limits = ReadLimits(max_gzip_bytes=MIB, max_gzip_ratio=1000)
  [record] = list(split_records(data, 'big.json.gz', limits))
  assert record.error.startswith('gzip expands beyond 1048576 bytes') and '--max-gzip-bytes 1048576' in record.error
  assert len(list(split_records(data, 'big.json.gz'))) == 20000  # within the default bounds


def test_bounded_gunzip_reads_what_gzip_reads():
  from postauth.transforms.records import ReadLimits
  one, two = b'{"a": 1}\n', b'{"b": 2}\n'
  members = gzip.compress(one) + gzip.compress(two) + b'\0\0'  # concatenated members, zero padding
  assert [r.obj for r in split_records(members, 'm.gz')] == [{'a': 1}, {'b': 2}]
  for damaged in (members[:15], gzip.compress(one)[:-3], gzip.compress(one) + b'garbage'):
    [record] = list(split_records(damaged, 'd.gz', ReadLimits()))
    assert record.error.startswith('corrupt gzip'), record.error


def test_otlp_protobuf_gzip_message_is_bounded_too():
  """The collector's Pub/Sub exporter may gzip its protobuf messages: the same bound applies."""
  bomb = _zero_bomb(96 * MIB)
  outcomes = list(RecordParser().parse_items(RawRecord(bomb, None, '', 'pubsub:s#3')))
  assert len(outcomes) == 1 and outcomes[0][1].event is None
  assert outcomes[0][1].reason.startswith('gzip expands beyond'), outcomes[0][1].reason


def test_every_dead_letter_payload_is_bounded():
  """Sinks dead-letter too (a finding Pub/Sub refused): the payload is cut the same way."""
  payload = json.dumps({'finding_id': 'f1', 'blob': 'q' * (2 * MIB)}).encode()
  line = dead_letter('publish refused', 'pubsub:projects/p/topics/t#f1', payload, stage='sink')
  assert len(line) < MIB
  d = json.loads(line)
  assert d['raw_bytes'] == len(payload) and d['raw_sha256'] == hashlib.sha256(payload).hexdigest()
  small = dead_letter('bad', 'f#1', b'[1, 2, 3]')
  assert json.loads(small)['raw'] == '[1, 2, 3]' and 'raw_sha256' not in json.loads(small)


def test_a_file_is_one_document_or_json_lines_whichever_its_whole_parses_as():
  from postauth.transforms.records import ReadLimits

  def shapes(data: bytes):
    return [(r.error, r.obj) for r in split_records(data, 'f', ReadLimits())]

  doc = {'Records': [{'a': 1}, {'b': 2}]}
  assert shapes(json.dumps(doc, indent=2).encode()) == [('', {'a': 1}), ('', {'b': 2})]
  assert shapes(json.dumps(doc).encode() + b'\n \n') == [('', {'a': 1}), ('', {'b': 2})]
  assert shapes(b'{"a": 1}\n{"b": 2}\n') == [('', {'a': 1}), ('', {'b': 2})]
  # the first line a value, the rest not: lines, the damaged one dead-lettered
  assert [e for e, _ in shapes(b'{"a": 1}\n{"b": \n')][0] == ''
  assert [e for e, _ in shapes(b'{"a": 1}\n{"b": \n')][1].startswith('invalid JSON')
  # a list on one line, then a second value: lines, neither an object
  assert [e for e, _ in shapes(b'[1]\n[2]')] == ['record is a JSON list, not an object'] * 2
  assert shapes(b'[{"a": 1},\n {"b": 2}]') == [('', {'a': 1}), ('', {'b': 2})]
