"""An agent finding's timeline: its tool calls above, the cloud calls each one made below.

The agent join (transforms/agent_join.py) attributes the audit records of a principal an agent
runs as to the tool call in flight; a finding's evidence then holds spans (provider ``otel``,
action ``...execute_tool:T``, ``tool_call`` = their own ``trace_id/span_id``) and derived cloud
calls (``joined_by`` set, ``tool_call`` = the call that made them, or action ``...@no_tool_call``
when none was in flight). The timeline draws them on one time axis (inline SVG, a line from each
cloud call up to its tool call) and lists them grouped by tool call, with the calls made outside
any tool call apart. Every string is the log's, so every one goes through the page's ``esc``
(passed in, so the page has one escaping); nothing is fetched.
"""
from __future__ import annotations

import datetime
from typing import Callable, Dict, List, Optional, Tuple

from postauth.domain.tool_calls import CLOUD_CALL, NO_TOOL_CALL, SEPARATOR

Esc = Callable[[object], str]
W, LEFT, RIGHT = 1000, 170, 24
ROWS = {'tool': 34, 'cloud': 98, 'outside': 152}  # y of each row
STYLE = """
.timeline{margin:6px 0}.tl td{font-size:12px;max-width:300px;overflow-wrap:anywhere}
.tl td:nth-child(2){white-space:nowrap}
.tl tr.tl-tool td{background:#eef3fb;font-weight:600}.tl tr.tl-cloud td:first-child{padding-left:18px}
.tl tr.tl-outside td{background:#fdecea;color:#7a0019}.tl tr.tl-head td{font-weight:600;border:0;padding-top:8px}
"""


def _epoch(text: str) -> Optional[float]:
  try:
    fmt = '%Y-%m-%dT%H:%M:%S.%fZ' if '.' in text else '%Y-%m-%dT%H:%M:%SZ'
    return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.timezone.utc).timestamp()
  except ValueError:
    return None


def _is_span(e: Dict) -> bool:
  return e.get('provider') == 'otel' or 'execute_tool:' in str(e.get('action', ''))


def split(evidence: List[Dict]) -> Tuple[List[Dict], Dict[str, List[Dict]], List[Dict]]:
  """(tool calls, tool call id -> the cloud calls it made, cloud calls made with no tool call in
  flight), each in time order. A tool call is listed once: its own span, else the join's
  ``@cloud_call`` mark of it, else (its span not sampled) a stand-in named by its id only."""
  spans: Dict[str, Dict] = {}
  made: Dict[str, List[Dict]] = {}
  outside: List[Dict] = []
  for e in sorted(evidence, key=lambda e: (str(e.get('time', '')), str(e.get('event_id', '')))):
    action, call = str(e.get('action', '')), str(e.get('tool_call', ''))
    if _is_span(e):
      mark = action.endswith(SEPARATOR + CLOUD_CALL)
      if call not in spans or (spans[call].get('mark') and not mark):
        spans[call] = dict(e, mark=mark)
    elif action.endswith(SEPARATOR + NO_TOOL_CALL):
      outside.append(e)
    elif e.get('joined_by') and call:
      made.setdefault(call, []).append(e)
  for call, calls in made.items():
    if call not in spans:
      spans[call] = {'tool_call': call, 'time': calls[0].get('time', ''), 'stand_in': True}
  tools = sorted(spans.values(), key=lambda s: (str(s.get('time', '')), str(s['tool_call'])))
  return tools, made, outside


def _weak(e: Dict) -> bool:
  """Joined by time alone, or with several tool calls in flight: drawn dashed."""
  basis = str(e.get('joined_by', ''))
  return basis.startswith('time') or 'ambiguous' in basis


def _svg(tools: List[Dict], made: Dict[str, List[Dict]], outside: List[Dict], names: Dict[int, str],
         esc: Esc) -> str:
  items = tools + [c for t in tools for c in made.get(t['tool_call'], [])] + outside
  times = [t for t in (_epoch(str(i.get('time', ''))) for i in items) if t is not None]
  if not times:
    return ''
  t0, t1 = min(times), max(times)
  pad = max((t1 - t0) * 0.04, 1.0)
  t0, t1 = t0 - pad, t1 + pad
  height = (ROWS['outside'] if outside else ROWS['cloud']) + 40

  def x(item: Dict) -> Optional[float]:
    t = _epoch(str(item.get('time', '')))
    return None if t is None else LEFT + (W - LEFT - RIGHT) * (t - t0) / (t1 - t0)

  def title(item: Dict) -> str:
    if item.get('stand_in'):
      return esc(f'{names[id(item)]} tool call {item["tool_call"]} (not in the evidence sample)')
    return esc(f'{names[id(item)]} {item.get("time", "")} {item.get("action", "")} '
               f'{item.get("resource", "")} id {item.get("event_id", "")}')

  label = 'tool calls of the agent and the cloud calls each made, on one time axis'
  parts = [f'<svg class="timeline" role="img" aria-label="{label}" width="{W}" height="{height}" '
           f'viewBox="0 0 {W} {height}" xmlns="http://www.w3.org/2000/svg"><title>{label}</title>']
  for row, text in (('tool', 'tool calls (spans)'), ('cloud', 'cloud calls they made'),
                    ('outside', 'no tool call in flight')):
    if row != 'outside' or outside:
      y = ROWS[row]
      parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y}" y2="{y}" stroke="#ddd"/>'
                   f'<text x="{LEFT - 8}" y="{y + 4}" text-anchor="end" font-size="11">{text}</text>')
  at = {t['tool_call']: x(t) for t in tools}
  for t in tools:
    for c in made.get(t['tool_call'], []):
      xc, xt = x(c), at[t['tool_call']]
      if xc is not None and xt is not None:
        dash = ' stroke-dasharray="4 3"' if _weak(c) else ''
        parts.append(f'<line class="tl-join" data-tool-call="{esc(t["tool_call"])}" x1="{xt:.1f}" '
                     f'y1="{ROWS["tool"] + 7}" x2="{xc:.1f}" y2="{ROWS["cloud"] - 6}" stroke="#4a78c2"{dash}/>')
  for row, group in (('tool', tools), ('cloud', [c for t in tools for c in made.get(t['tool_call'], [])]),
                     ('outside', outside)):
    for item in group:
      xi, y = x(item), ROWS[row]
      if xi is None:
        continue
      ty = y - 10 if row == 'tool' else y + 20  # labels away from the joining lines
      fill = '#fff" stroke="#4a78c2' if item.get('stand_in') else '#4a78c2'  # stand-in: hollow
      shape = {'tool': f'<rect x="{xi - 6:.1f}" y="{y - 6}" width="12" height="12" fill="{fill}"/>',
               'cloud': f'<circle cx="{xi:.1f}" cy="{y}" r="5" fill="#2a8"/>',
               'outside': f'<path d="M{xi:.1f} {y - 7}l7 7l-7 7l-7 -7z" fill="#fff" stroke="#c0392b" '
                          f'stroke-width="2"/>'}[row]
      parts.append(f'<g class="tl-{row}" data-tool-call="{esc(item.get("tool_call", ""))}">'
                   f'<title>{title(item)}</title>{shape}<text x="{xi:.1f}" y="{ty}" '
                   f'text-anchor="middle" font-size="10">{esc(names[id(item)])}</text></g>')
  for t, anchor in ((t0 + pad, 'start'), (t1 - pad, 'end')):
    stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S')
    xs = LEFT + (W - LEFT - RIGHT) * (t - t0) / (t1 - t0)
    parts.append(f'<text x="{xs:.1f}" y="{height - 4}" text-anchor="{anchor}" font-size="10">{stamp}Z</text>')
  parts.append('</svg>')
  return ''.join(parts)


def _row(kind: str, name: str, item: Dict, esc: Esc) -> str:
  if item.get('stand_in'):
    cells = (esc(name), esc(item.get('time', '')), 'tool call not in the evidence sample', '', '', '',
             f'<code>{esc(item["tool_call"])}</code>', '')
  else:
    cells = (esc(name), esc(item.get('time', '')), esc(item.get('action', '')), esc(item.get('resource', '')),
             f'<code>{esc(item.get("event_id", ""))}</code>', f'<code>{esc(item.get("read_from", ""))}</code>',
             f'<code>{esc(item.get("tool_call", ""))}</code>', esc(item.get('joined_by', '')))
  return (f'<tr class="tl-{kind}" data-tool-call="{esc(item.get("tool_call", ""))}">'
          + ''.join(f'<td>{c}</td>' for c in cells) + '</tr>')


def timeline(evidence: List[Dict], esc: Esc) -> str:
  """The timeline of a finding's evidence; '' when it holds no tool call and no joined cloud call."""
  tools, made, outside = split(evidence or [])
  if not tools and not outside:
    return ''
  names: Dict[int, str] = {}
  for n, t in enumerate(tools, 1):
    names[id(t)] = f'T{n}'
    for m, c in enumerate(made.get(t['tool_call'], []), 1):
      names[id(c)] = f'T{n}.{m}'
  for n, o in enumerate(outside, 1):
    names[id(o)] = f'X{n}'
  rows = []
  for t in tools:
    rows.append(_row('tool', names[id(t)], t, esc))
    rows.extend(_row('cloud', names[id(c)], c, esc) for c in made.get(t['tool_call'], []))
  if outside:
    rows.append('<tr class="tl-head"><td colspan="8">no tool call in flight: the credential used '
                'outside the agent</td></tr>')
    rows.extend(_row('outside', names[id(o)], o, esc) for o in outside)
  head = ''.join(f'<th>{h}</th>' for h in ('#', 'time', 'action', 'resource', 'event id', 'read from',
                                           'tool call', 'joined by'))
  return (f'<div class="agent-timeline"><h3>Tool calls and the cloud calls they made</h3>'
          f'{_svg(tools, made, outside, names, esc)}'
          f'<table class="tl"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
