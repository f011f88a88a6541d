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
