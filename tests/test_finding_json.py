"""VersionLines writes a finding version's line exactly as json.dumps(sort_keys=True) does,
rendering the parts versions share once."""
from __future__ import annotations

import json
import math

from postauth.transforms import finding_json
from postauth.transforms.finding_json import VersionLines, finding_line


def _record(n: int) -> dict:
  return {'event_id': f'e{n}', 'time': f'2026-11-05T00:{n:02d}:00.000Z', 'new': ['actions'] * (n % 2),
          'user_agent': 'Boto3/1.34 \u00e9\u2713', 'resource': 'arn:aws:s3:::b/\u00fc', 'score': n / 7}


def _versions():
  records = [_record(n) for n in range(6)]
  calls = [{'window_start': f'w{n}', 'calls': n, 'actions': {'s3:GetObject': n, 'kms:Decrypt': 1}} for n in range(4)]
  base = {'finding_id': 'f1', 'identity': 'role/ci', 'actions': {'z': 1, 'a': 2}, 'score': 0.1234, 'nan': math.nan,
          'inf': -math.inf, 'zeta': [3, (1, 2)], 'aardvark': None, 'ev': True, 'evidence_count': 2,
          'window_actions_x': 'after', 'reasons': [{'rule': 'out_of_scope', 'detail': 'x \u2192 y'}]}
  out = []
  for n in range(1, 5):  # versions grow and share the objects of the earlier ones
    out.append(dict(base, updates=n, evidence=records[:n + 2], window_actions=calls[:n]))
  out.append(dict(base, evidence=[], window_actions=[]))
  out.append({'identity': 'x', 'kind': 'fleet_change'})  # neither shared list
  out.append({'identity': 'x', 'evidence': 'not a list'})
  out.append({1: 'int key', 'b': 2})  # json.dumps sorts what it can: not the shape of a version
  return out


def test_lines_are_json_dumps_byte_for_byte():
  lines = VersionLines()
  for v in _versions():
    try:
      want = json.dumps(v, sort_keys=True)
    except TypeError as e:  # mixed key types do not sort: the same error either way
      try:
        lines.line(v)
      except TypeError as got:
        assert str(got) == str(e)
        continue
      raise AssertionError('VersionLines wrote what json.dumps refuses')
    assert lines.line(v) == want == finding_line(v)
    if 'finding_id' in v:
      assert lines(v).line == want


def test_shared_parts_are_rendered_once(monkeypatch):
  calls = []
  encode = finding_json._ENCODE
  monkeypatch.setattr(finding_json, '_ENCODE', lambda x: calls.append(x) or encode(x))
  lines = VersionLines()
  versions = _versions()[:4]
  for v in versions:
    lines.line(v)
  parts = [x for x in calls if isinstance(x, dict) and ('event_id' in x or 'calls' in x)]
  assert len(parts) == 6 + 4  # every record and window line once, however many versions name it


def test_remembered_texts_are_bounded_and_not_pickled(monkeypatch):
  monkeypatch.setattr(finding_json, 'MAX_REMEMBERED', 3)
  lines = VersionLines()
  for v in _versions():
    if all(isinstance(k, str) for k in v):
      lines.line(v)
  assert len(lines._texts) <= 3
  import pickle
  assert pickle.loads(pickle.dumps(lines))._texts == {}
