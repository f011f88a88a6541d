"""`postauth report`: findings as one self-contained, sortable HTML page.

Everything shown that comes from a log (identities, actions, resources, user agents, error
codes, reasons quoting them) was chosen by whoever held the credential: every string goes
through ``html.escape``, and a Content-Security-Policy lets only the page's own sorting
script run (by hash) and fetch nothing, so a missed escape would still stay inert.

Calls per window for the days before a finding come from re-reading ``--events``
(parsed with the pipeline's parsers, counted per identity and 15 min pane, panes summed
into sliding windows as ``transforms.windowing`` does); the baseline band comes from the
identity's profile in ``--model-dir`` (its hour-of-day volume baseline, as the model sees it).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
import re
from typing import Dict, Iterable, List, Optional, Set, Tuple

from postauth.pipeline import report_plot, report_timeline
from postauth.pipeline.summary import read_findings
from postauth.transforms.options import CommandParser

SEVERITIES = ('critical', 'high', 'medium', 'low')
_CONTROL = re.compile('[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]')

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.getAttribute('data-dir') === 'asc' ? -1 : 1;
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-sort'), y = b.cells[col].getAttribute('data-sort');
        var nx = parseFloat(x), ny = parseFloat(y);
        if (!isNaN(nx) && !isNaN(ny)) { return dir * (nx - ny); }
        return dir * x.localeCompare(y);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.body.setAttribute('data-ready', '1');
"""

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}table.sortable th{cursor:pointer}table.sortable th[data-dir]:after{content:' \\2195'}
.sev{font-weight:600;border-radius:3px;padding:0 5px;color:#fff}
.critical{background:#7a0019}.high{background:#c0392b}.medium{background:#e67e22}.low{background:#7f8c8d}
.summary{display:flex;gap:28px;flex-wrap:wrap}.finding{border-top:2px solid #eee;padding-top:6px}
.ev td{font-size:12px;max-width:320px;overflow-wrap:anywhere}code{font-size:12px;overflow-wrap:anywhere}
.legend{font-size:12px;color:#555}.new{color:#c0392b;font-size:11px}
"""


def esc(value) -> str:
  """Text for HTML: control and bidi-override characters dropped, then escaped (quotes too)."""
  return html.escape(_CONTROL.sub('', str(value)), quote=True)


def _epoch(text: str) -> float:
  fmt = '%Y-%m-%dT%H:%M:%S.%fZ' if '.' in text else '%Y-%m-%dT%H:%M:%SZ'
  return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.timezone.utc).timestamp()


def pane_counts(paths: Iterable[str], identities: Set[str], period: int) -> Dict[str, Dict[int, int]]:
  """identity -> pane start -> events, for the given identities, from the event files."""
  from postauth.domain.event import Event
  from postauth.transforms.parse import RecordParser, read_all
  from postauth.transforms.records import split_records
  parser = RecordParser()
  out: Dict[str, Dict[int, int]] = {}
  for path in paths:
    for record in split_records(read_all(path), path):
      e = parser.parse(record)
      if isinstance(e, Event) and e.identity in identities:
        panes = out.setdefault(e.identity, {})
        pane = int(e.event_time // period) * period
        panes[pane] = panes.get(pane, 0) + 1
  return out


def profile_baselines(model_dir: str, identities: Set[str]) -> Dict[str, Dict[int, Tuple[float, float]]]:
  """identity -> hour -> (typical, high) calls per window, from the model's verified profiles."""
  from postauth.models import artifact
  from postauth.models.profile import IdentityProfile
  _, files = artifact.load_verified(model_dir)
  raw = artifact.loads_json_gz(files['profiles.json.gz'])
  return {k: report_plot.baseline_from_profile(IdentityProfile.from_dict(v))
          for k, v in raw.items() if k in identities}


def _counts(title: str, counts: Dict[str, int]) -> str:
  order = (lambda kv: (SEVERITIES.index(kv[0]) if kv[0] in SEVERITIES else 9, kv[0])) \
      if title == 'severity' else (lambda kv: (-kv[1], kv[0]))
  rows = ''.join(f'<tr><td data-sort="{esc(k)}">{esc(k or "-")}</td><td data-sort="{n}">{n}</td></tr>'
                 for k, n in sorted(counts.items(), key=order))
  return (f'<div><h2>By {esc(title)}</h2><table class="sortable"><thead><tr><th>{esc(title)}</th>'
          f'<th>findings</th></tr></thead><tbody>{rows}</tbody></table></div>')


def _summary(findings: List[Dict]) -> str:
  by: Dict[str, Dict[str, int]] = {'severity': {}, 'team': {}, 'identity type': {}}
  for f in findings:
    for key, value in (('severity', f.get('severity', '')), ('team', f.get('team', '')),
                       ('identity type', f.get('identity_type', ''))):
      by[key][value] = by[key].get(value, 0) + 1
  return '<div class="summary">' + ''.join(_counts(k, v) for k, v in by.items()) + '</div>'


def _table(findings: List[Dict]) -> str:
  rows = []
  for f in findings:
    sev = f.get('severity', 'low')
    rank = len(SEVERITIES) - SEVERITIES.index(sev) if sev in SEVERITIES else 0
    rows.append(
        f'<tr><td data-sort="{rank}"><span class="sev {esc(sev)}">{esc(sev)}</span></td>'
        f'<td data-sort="{float(f.get("score", 0)):.3f}">{float(f.get("score", 0)):.2f}</td>'
        f'<td data-sort="{esc(f["identity"])}"><a href="#f-{esc(f["finding_id"])}">{esc(f["identity"])}</a></td>'
        f'<td data-sort="{esc(f.get("identity_type", ""))}">{esc(f.get("identity_type", ""))}</td>'
        f'<td data-sort="{esc(f.get("team", ""))}">{esc(f.get("team", ""))}</td>'
        f'<td data-sort="{esc(f.get("owner", ""))}">{esc(f.get("owner", ""))}</td>'
        f'<td data-sort="{esc(f["window_start"])}">{esc(f["window_start"])}</td>'
        f'<td data-sort="{int(f.get("event_count", 0))}">{int(f.get("event_count", 0))}</td></tr>')
  head = ''.join(f'<th>{h}</th>' for h in ('severity', 'score', 'identity', 'type', 'team', 'owner',
                                           'from', 'events'))
  return (f'<table class="sortable" id="findings"><thead><tr>{head}</tr></thead>'
          f'<tbody>{"".join(rows)}</tbody></table>')


def _evidence(f: Dict) -> str:
  events = f.get('evidence') or []
  if not events:
    return '<p>No event sample (a fleet-level notice).</p>'
  head = ''.join(f'<th>{h}</th>' for h in ('time', 'action', 'resource', 'source', 'user agent',
                                           'error', 'event id', 'read from', 'behind'))
  rows = []
  for e in events:
    new = ' '.join(f'<span class="new">new {esc(n.rstrip("s"))}</span>' for n in e.get('new') or [])
    rows.append('<tr>' + ''.join(f'<td>{c}</td>' for c in (
        esc(e.get('time', '')), esc(e.get('action', '')) + (' ' + new if new else ''),
        esc(e.get('resource', '')), esc(e.get('source_ip', '')), esc(e.get('user_agent', '')),
        esc(e.get('error_code', '')), f'<code>{esc(e.get("event_id", ""))}</code>',
        f'<code>{esc(e.get("read_from", ""))}</code>', esc(e.get('reason', '')))) + '</tr>')
  return (f'<table class="ev sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _finding(f: Dict, plot: str) -> str:
  reasons = ''.join(f'<li>{esc(r.get("detail", ""))}</li>' for r in f.get('reasons') or [])
  actions = ', '.join(f'{esc(a)} &times;{int(n)}' for a, n in (f.get('actions') or {}).items())
  return (
      f'<section class="finding" id="f-{esc(f["finding_id"])}" data-finding-id="{esc(f["finding_id"])}">'
      f'<h2><span class="sev {esc(f.get("severity", "low"))}">{esc(f.get("severity", ""))}</span> '
      f'{esc(f["identity"])} <small>score {float(f.get("score", 0)):.2f}</small></h2>'
      f'<p>{esc(f.get("identity_type", ""))}, team <b>{esc(f.get("team", "") or "?")}</b>, owner '
      f'<b>{esc(f.get("owner", "") or "?")}</b>, {esc(f.get("environment", "") or "?")}; '
      f'{esc(f["window_start"])} &rarr; {esc(f["window_end"])}, {int(f.get("event_count", 0))} events in '
      f'{int(f.get("windows", 0))} windows; finding <code>{esc(f["finding_id"])}</code></p>'
      f'<ul>{reasons}</ul><p>Top actions: {actions}</p>{plot}'
      f'{report_timeline.timeline(f.get("evidence") or [], esc)}{_evidence(f)}</section>')


def _plot(f: Dict, panes: Dict[int, int], baseline, size: int, period: int, days_before: int) -> str:
  windows = [(_epoch(w['window_start']), _epoch(w['window_end']), int(w.get('calls', 0)))
             for w in f.get('window_actions') or []]
  if not windows:
    windows = [(_epoch(f['window_start']), _epoch(f['window_end']), int(f.get('event_count', 0)))]
  series = report_plot.window_calls(panes, size, period) if panes else {}
  t0, t1 = report_plot.span(windows, series, days_before)
  series = {t: n for t, n in series.items() if t0 <= t <= t1}
  label = f'calls per window of {f["identity"]} against its baseline and the finding'
  return report_plot.svg(series, windows, baseline, period, label, t0, t1)


def render(findings: List[Dict], panes: Optional[Dict[str, Dict[int, int]]] = None,
           baselines: Optional[Dict] = None, size: int = 3600, period: int = 900,
           days_before: int = 7, sources: str = '') -> str:
  panes, baselines = panes or {}, baselines or {}
  digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
  csp = (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
         f"script-src 'sha256-{digest}'")
  body = ''.join(_finding(f, _plot(f, panes.get(f['identity'], {}), baselines.get(f['identity']),
                                   size, period, days_before)) for f in findings)
  return (
      '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
      f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
      f'<title>postauth findings</title><style>{STYLE}{report_timeline.STYLE}</style></head><body>'
      f'<h1>postauth findings: {len(findings)}</h1><p class="legend">{esc(sources)}</p>'
      f'{_summary(findings)}<h2>Findings</h2>{_table(findings)}{report_plot.legend()}{body}'
      f'<script>{SCRIPT}</script></body></html>')


def write_report(findings_path: str, out: str, events: Optional[List[str]] = None,
                 model_dir: Optional[str] = None, size: int = 3600, period: int = 900,
                 days_before: int = 7) -> Dict:
  from apache_beam.io.filesystems import FileSystems
  findings = read_findings(findings_path)
  identities = {f['identity'] for f in findings}
  paths = sorted({m.path for g in events or [] for r in FileSystems.match([g]) for m in r.metadata_list})
  panes = pane_counts(paths, identities, period) if paths else {}
  baselines = profile_baselines(model_dir, identities) if model_dir else {}
  sources = (f'findings {findings_path}; calls per window from {len(paths)} event files'
             + (f'; baseline from the profiles in {model_dir}' if model_dir else '; no --model-dir: no baseline'))
  page = render(findings, panes, baselines, size, period, days_before, sources)
  with open(out, 'w', encoding='utf-8') as f:
    f.write(page)
  return {'report': out, 'findings': len(findings), 'event_files': len(paths),
          'identities_with_baseline': len(baselines)}


def main(argv: List[str]) -> int:
  ap = CommandParser(prog='postauth report',
                     description='Findings as one self-contained HTML page (no fetches).')
  ap.add_argument('--findings', required=True, help='Findings JSON lines (postauth run --findings).')
  ap.add_argument('--events', action='append', default=[],
                  help='Glob of event files (repeatable): calls per window over the days before.')
  ap.add_argument('--model-dir', default=None, help='Model directory: each identity\'s baseline.')
  ap.add_argument('--out', default='report.html')
  ap.add_argument('--window-size', type=int, default=3600)
  ap.add_argument('--window-period', type=int, default=900)
  ap.add_argument('--days-before', type=int, default=7)
  a = ap.parse_args(argv)
  from postauth.pipeline.preflight import check_output_file
  check_output_file('--out', a.out)
  done = write_report(a.findings, a.out, a.events, a.model_dir, a.window_size, a.window_period,
                      a.days_before)
  print(json.dumps(done))
  return 0
