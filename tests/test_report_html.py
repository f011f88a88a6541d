"""Issue 14: `postauth report` renders in a real headless Chromium, and log strings stay inert.

Chromium is Debian's ``chromium`` package (``make chromium-deps``); without it these tests
skip, and fail under CI=true.
"""
from __future__ import annotations

import copy
import html.parser
import json
import os
import shutil
import subprocess

import pytest

from postauth.pipeline import report_html, summary
from postauth.pipeline.cli import main
from test_evidence import evidence_run  # noqa: F401  (a shared session fixture)

SCRIPT_UA = '<script>alert(1)</script>'
IMG_RESOURCE = '<img src=x onerror="document.body.setAttribute(\'data-pwned\',\'1\')">'


def _chromium() -> str:
  for name in ('chromium', 'chromium-browser', 'google-chrome'):
    path = shutil.which(name)
    if path:
      return path
  if os.environ.get('CI') == 'true':
    pytest.fail('CI=true but no chromium: run `make chromium-deps` (Debian package chromium)')
  pytest.skip('chromium not installed (make chromium-deps installs Debian\'s package)')


def _browse(path: str, *flags: str) -> str:
  cmd = [_chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
         '--no-first-run', '--disable-extensions', '--virtual-time-budget=3000', *flags,
         f'file://{os.path.abspath(path)}']
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout


class _Dom(html.parser.HTMLParser):
  """Elements (tag, attrs) and text of a dumped DOM."""

  def __init__(self):
    super().__init__()
    self.elements, self.text, self.stack = [], [], []

  VOID = ('area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source',
          'track', 'wbr')  # HTML elements without an end tag (Chromium closes SVG ones)

  def handle_starttag(self, tag, attrs):
    self.elements.append((tag, dict(attrs), list(self.stack)))
    if tag not in self.VOID:
      self.stack.append(dict(attrs).get('data-finding-id'))

  def handle_endtag(self, tag):
    if tag not in self.VOID:
      self.stack.pop()

  def handle_data(self, data):
    self.text.append(data)


def _hostile(findings):
  """A copy of a real finding whose log strings are an attacker's: script and img payloads."""
  f = copy.deepcopy(next(f for f in findings if f.get('evidence')))
  f['finding_id'] = 'hostile0000000000000000'
  f['evidence'][0]['user_agent'] = SCRIPT_UA
  f['evidence'][0]['resource'] = IMG_RESOURCE
  f['resources'] = {IMG_RESOURCE: 3}
  f['actions'] = {SCRIPT_UA: 1}
  f['reasons'][0]['detail'] = f'1 resources never touched before, e.g. {IMG_RESOURCE} via {SCRIPT_UA}'
  f['team'] = '<b onmouseover=alert(2)>team</b>'
  return f


@pytest.fixture(scope='module')
def report(evidence_run, sample, model_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp('report')
  findings = evidence_run['findings'] + [_hostile(evidence_run['findings'])]
  path = out / 'findings.jsonl'
  path.write_text(''.join(json.dumps(f) + '\n' for f in findings))
  page = str(out / 'report.html')
  assert main(['report', f'--findings={path}', f'--events={sample["dir"]}/history/*',
               f'--events={sample["dir"]}/live/*', f'--model-dir={model_dir}', f'--out={page}']) == 0
  return {'page': page, 'findings': findings, 'dir': out}


def test_report_is_self_contained_and_escapes_log_strings(report):
  with open(report['page'], encoding='utf-8') as f:
    text = f.read()
  assert text.count('<script') == 1  # the page's own sorting script
  assert '<img' not in text and 'onmouseover=alert' not in text.replace('&lt;b onmouseover=alert', '')
  assert 'src="http' not in text and 'href="http' not in text and '@import' not in text
  assert "default-src 'none'" in text  # the CSP: no fetches, only the hashed script runs


def test_report_renders_in_headless_chromium(report):
  dom_text = _browse(report['page'], '--dump-dom')
  dom = _Dom()
  dom.feed(dom_text)
  body = [a for t, a, _ in dom.elements if t == 'body'][0]
  assert body.get('data-ready') == '1', 'the sorting script did not run'
  assert 'data-pwned' not in body
  assert [t for t, _, _ in dom.elements].count('script') == 1
  assert not [a for t, a, _ in dom.elements if t == 'img']
  sections = {a['data-finding-id'] for t, a, _ in dom.elements if t == 'section' and 'data-finding-id' in a}
  assert sections == {f['finding_id'] for f in report['findings']}
  plots = {}
  for t, a, stack in dom.elements:
    if t == 'svg' and 'plot' in a.get('class', ''):
      owner = next(s for s in reversed(stack) if s)
      plots[owner] = plots.get(owner, 0) + 1
  assert plots == {f['finding_id']: 1 for f in report['findings']}
  text = ''.join(dom.text)
  assert SCRIPT_UA in text and IMG_RESOURCE in text  # shown as text, inert
  # the baseline band is drawn where the model has a profile
  assert any(t == 'polygon' and 'baseline' in a.get('class', '') for t, a, _ in dom.elements)
  png = report['dir'] / 'report.png'
  _browse(report['page'], f'--screenshot={png}', '--window-size=1280,2400')
  from PIL import Image
  with Image.open(png) as im:
    assert im.size == (1280, 2400)
    assert len(im.convert('RGB').getcolors(1 << 20) or ()) > 20  # not a blank page


def test_terminal_summary_strips_control_characters():
  f = {'finding_id': 'x', 'identity': 'role/\x1b[2J\x1b]0;pwned\x07evil', 'identity_type': 'api_key',
       'team': 't\r', 'environment': 'dev', 'severity': 'high', 'score': 5.0, 'window_start': 'a',
       'window_end': 'b', 'event_count': 1, 'model_version': 'v', 'reasons': [
           {'detail': 'resource \u202eexe.txt\x08\x08 and \x9b31m'}]}
  out = summary.render([f])
  assert not any(c in out for c in '\x1b\x07\r\x08\u202e\x9b')
  assert 'evil' in out and 'exe.txt' in out


class _Timeline(html.parser.HTMLParser):
  """The agent timeline's SVG marks (tag, attrs) and its table's rows (class, tool call, cells)."""

  def __init__(self):
    super().__init__()
    self.marks, self.rows, self.cell, self.in_tl = [], [], None, 0

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == 'div' and a.get('class') == 'agent-timeline':
      self.in_tl = 1
    elif self.in_tl and tag == 'div':
      self.in_tl += 1
    if not self.in_tl:
      return
    self.marks.append((tag, a))
    if tag == 'tr' and a.get('class', '').startswith('tl-'):
      self.rows.append((a['class'], a.get('data-tool-call'), []))
    elif tag == 'td' and self.rows:
      self.cell = []

  def handle_endtag(self, tag):
    if self.in_tl and tag == 'div':
      self.in_tl -= 1
    elif tag == 'td' and self.cell is not None:
      self.rows[-1][2].append(''.join(self.cell))
      self.cell = None

  def handle_data(self, data):
    if self.cell is not None:
      self.cell.append(data)


def _ev(time, provider, action, resource, event_id, tool_call='', joined_by=''):
  return {'event_id': event_id, 'time': time, 'provider': provider, 'action': action, 'category': '',
          'resource': resource, 'source_ip': '', 'user_agent': '', 'error_code': '', 'region': '',
          'tool_call': tool_call, 'joined_by': joined_by, 'id_from_log': True,
          'read_from': f'logs/{event_id}.json#1', 'network': '', 'new': [], 'reason': 'r'}


def test_agent_finding_shows_tool_calls_joined_to_their_cloud_calls():
  hostile_call = 'bb"><svg onload=alert(3)>/02'  # a span's ids are the emitter's strings too
  evidence = [
      _ev('2026-11-05T10:00:00.000Z', 'otel', 'genai:execute_tool:export_table', 'table/customers',
          'span-1', 'aaaa/0001'),
      _ev('2026-11-05T10:00:00.000Z', 'otel', 'genai:execute_tool:export_table@cloud_call',
          'table/customers', 'span-1', 'aaaa/0001', 'time'),
      _ev('2026-11-05T10:00:02.000Z', 'aws', 's3:GetObject@export_table',
          'arn:aws:s3:::exports/customers.csv', 'ct-1', 'aaaa/0001', 'source_identity'),
      _ev('2026-11-05T10:05:00.000Z', 'otel', 'genai:execute_tool:send_mail', 'mail/out', 'span-2',
          hostile_call),
      _ev('2026-11-05T10:05:01.000Z', 'aws', 's3:PutObject@send_mail', IMG_RESOURCE, SCRIPT_UA,
          hostile_call, 'time ambiguous:2'),
      _ev('2026-11-05T10:10:00.000Z', 'aws', 'kms:Decrypt@rotate_key', 'key/1', 'ct-3', 'cccc/0003',
          'user_agent'),
      _ev('2026-11-05T10:20:00.000Z', 'aws', 'secretsmanager:ListSecrets@no_tool_call', '*', 'ct-9',
          '', 'time'),
  ]
  f = {'finding_id': 'agentf', 'identity': 'agent-exporter', 'identity_type': 'ai_agent',
       'severity': 'high', 'score': 3.0, 'window_start': '2026-11-05T10:00:00Z',
       'window_end': '2026-11-05T11:00:00Z', 'event_count': 7, 'reasons': [], 'evidence': evidence}
  page = report_html.render([f])
  assert page.count('<script') == 1 and '<img' not in page and '<svg onload' not in page
  tl = _Timeline()
  tl.feed(page)
  # the table: each tool call once (its span, not the join's @cloud_call mark of it), then the
  # cloud calls it made; a call whose span was not sampled stands in by its id; the outside call apart
  assert [(k, c, cells[0]) for k, c, cells in tl.rows] == [
      ('tl-tool', 'aaaa/0001', 'T1'), ('tl-cloud', 'aaaa/0001', 'T1.1'),
      ('tl-tool', hostile_call, 'T2'), ('tl-cloud', hostile_call, 'T2.1'),
      ('tl-tool', 'cccc/0003', 'T3'), ('tl-cloud', 'cccc/0003', 'T3.1'),
      ('tl-head', None, 'no tool call in flight: the credential used outside the agent'),
      ('tl-outside', '', 'X1')]
  cells = {r[2][0]: r[2] for r in tl.rows}
  assert cells['T1'][1:7] == ['2026-11-05T10:00:00.000Z', 'genai:execute_tool:export_table',
                              'table/customers', 'span-1', 'logs/span-1.json#1', 'aaaa/0001']
  assert cells['T1.1'][1:] == ['2026-11-05T10:00:02.000Z', 's3:GetObject@export_table',
                               'arn:aws:s3:::exports/customers.csv', 'ct-1', 'logs/ct-1.json#1',
                               'aaaa/0001', 'source_identity']
  assert cells['T2.1'][2:5] == ['s3:PutObject@send_mail', IMG_RESOURCE, SCRIPT_UA]  # as text
  assert cells['T3'][2] == 'tool call not in the evidence sample'
  assert cells['X1'][1:6] == ['2026-11-05T10:20:00.000Z', 'secretsmanager:ListSecrets@no_tool_call',
                              '*', 'ct-9', 'logs/ct-9.json#1']
  # the SVG: tool calls above, cloud calls below, a line from each cloud call up to its tool call
  def marks(kind):
    return [(a['data-tool-call'], a2) for (t, a), (t2, a2) in zip(tl.marks, tl.marks[2:])
            if t == 'g' and a.get('class') == f'tl-{kind}']
  tools, clouds, outside = marks('tool'), marks('cloud'), marks('outside')
  assert [c for c, _ in tools] == ['aaaa/0001', hostile_call, 'cccc/0003']
  assert [c for c, _ in clouds] == ['aaaa/0001', hostile_call, 'cccc/0003']
  assert [c for c, _ in outside] == ['']
  tool_x = {c: float(a['x']) + 6 for c, a in tools}
  cloud_x = {c: float(a['cx']) for c, a in clouds}
  assert all(float(a['cy']) > float(t['y']) + 6 for (_, a), (_, t) in zip(clouds, tools))  # below
  joins = [a for t, a in tl.marks if t == 'line' and a.get('class') == 'tl-join']
  assert {a['data-tool-call']: (float(a['x1']), float(a['x2'])) for a in joins} == {
      c: (tool_x[c], cloud_x[c]) for c in tool_x}
  assert [('stroke-dasharray' in a) for a in joins] == [False, True, False]  # time alone: dashed
  assert tool_x['aaaa/0001'] < cloud_x['aaaa/0001'] < tool_x[hostile_call]  # time runs left to right
  assert outside[0][1].get('d', '').startswith('M')  # drawn apart, as a hollow diamond
