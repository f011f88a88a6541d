"""One identity's calls per window as an inline SVG: the days before, its baseline, the finding.

Inline SVG, not a plotting library: the report stays one self-contained file with no
fetches, and every label goes through ``html.escape`` like the rest of the page.
"""
from __future__ import annotations

import datetime
import html
import math
from typing import Dict, List, Optional, Sequence, Tuple

W, H = 1000, 200
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 12, 26
DAY = 86400


def _esc(value) -> str:
  return html.escape(str(value), quote=True)


def _day(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%m-%d')


def svg(series: Dict[float, int], finding_windows: Sequence[Tuple[float, float, int]],
        baseline: Optional[Dict[int, Tuple[float, float]]], period: int, label: str,
        t0: float, t1: float) -> str:
  """``series``: window end -> calls (every window of the identity seen in the events);
  ``finding_windows``: (start, end, calls) of the finding; ``baseline``: hour of day ->
  (typical, high) calls per window from the model's profile; x spans [t0, t1]."""
  t1 = max(t1, t0 + period)
  ends = [t0 + period * i for i in range(int((t1 - t0) // period) + 1)]
  top_value = max([1] + list(series.values()) + [c for _, _, c in finding_windows]
                  + ([hi for _, hi in baseline.values()] if baseline else []))
  ymax = float(top_value) * 1.1

  def x(t: float) -> float:
    return LEFT + (W - LEFT - RIGHT) * (t - t0) / (t1 - t0)

  def y(v: float) -> float:  # square-root scale: a burst and the baseline both stay visible
    return TOP + (H - TOP - BOTTOM) * (1 - math.sqrt(max(min(v, ymax), 0) / ymax))

  parts = [f'<svg class="plot" role="img" aria-label="{_esc(label)}" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg">',
           f'<title>{_esc(label)}</title>',
           f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" fill="#fafafa" stroke="#ddd"/>']
  for s, e, _ in finding_windows:  # where the finding is
    parts.append(f'<rect x="{x(s):.1f}" y="{TOP}" width="{max(x(e) - x(s), 1.5):.1f}" '
                 f'height="{H - TOP - BOTTOM}" fill="#d33" fill-opacity="0.08"/>')
  if baseline:
    hours = [(t, baseline.get(_hour(t - 1))) for t in ends]  # hour of the window end, as features do
    upper = ' '.join(f'{x(t):.1f},{y(b[1]):.1f}' for t, b in hours if b)
    lower = ' '.join(f'{x(t):.1f},{y(0):.1f}' for t, b in reversed(hours) if b)
    typical = ' '.join(f'{x(t):.1f},{y(b[0]):.1f}' for t, b in hours if b)
    parts.append(f'<polygon class="baseline" points="{upper} {lower}" fill="#2a8" fill-opacity="0.15"/>')
    parts.append(f'<polyline points="{typical}" fill="none" stroke="#2a8" stroke-dasharray="4 3" stroke-width="1.2"/>')
  if series:
    pts = ' '.join(f'{x(t):.1f},{y(series.get(t, 0)):.1f}' for t in ends)
    parts.append(f'<polyline class="calls" points="{pts}" fill="none" stroke="#567" stroke-width="1"/>')
  for s, e, c in finding_windows:
    parts.append(f'<circle cx="{x(e):.1f}" cy="{y(c):.1f}" r="3" fill="#d33"><title>'
                 f'{_esc(_day(e))} {c} calls</title></circle>')
  parts.append(f'<text x="{LEFT - 4}" y="{TOP + 9}" text-anchor="end" font-size="10">{int(math.ceil(ymax))}</text>')
  parts.append(f'<text x="{LEFT - 4}" y="{H - BOTTOM}" text-anchor="end" font-size="10">0</text>')
  for tick in sorted({max(1, round(ymax / 16)), max(1, round(ymax / 4))}):  # square-root ticks
    parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>'
                 f'<text x="{LEFT - 4}" y="{y(tick) + 3:.1f}" text-anchor="end" font-size="10">{tick}</text>')
  day = math.ceil(t0 / DAY) * DAY
  step = DAY * max(1, int((t1 - t0) / DAY / 8) + 1)
  while day < t1:
    parts.append(f'<line x1="{x(day):.1f}" x2="{x(day):.1f}" y1="{H - BOTTOM}" y2="{H - BOTTOM + 4}" stroke="#999"/>')
    parts.append(f'<text x="{x(day):.1f}" y="{H - 8}" text-anchor="middle" font-size="10">{_esc(_day(day))}</text>')
    day += step
  parts.append('</svg>')
  return ''.join(parts)


def _hour(t: float) -> int:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).hour


def window_calls(counts_by_pane: Dict[int, int], size: int, period: int) -> Dict[float, int]:
  """Pane counts -> calls per sliding window, keyed by window end (as IdentityWindows sums panes)."""
  out: Dict[float, int] = {}
  for pane, n in counts_by_pane.items():
    for k in range(size // period):
      start = pane - k * period
      out[float(start + size)] = out.get(float(start + size), 0) + n
  return out


def legend() -> str:
  return ('<p class="legend">Plots (square-root scale): <span style="color:#567">&#9473;</span> calls per window '
          '(from the events) &nbsp; <span style="color:#2a8">&#9636;</span> baseline: the '
          'profile\'s typical (dashed) to high (mean + 2 sd) calls at that hour &nbsp; '
          '<span style="color:#d33">&#9679;</span> the finding\'s windows</p>')


def baseline_from_profile(profile, sigmas: float = 2.0) -> Dict[int, Tuple[float, float]]:
  """hour -> (typical, high) calls per window from an IdentityProfile's volume baseline."""
  out = {}
  for hour in range(24):
    mu, sd = profile.volume_baseline(hour)
    out[hour] = (math.expm1(mu), math.expm1(mu + sigmas * sd))
  return out


def span(findings_windows: List[Tuple[float, float, int]], series: Dict[float, int],
         days_before: int) -> Tuple[float, float]:
  """x range: up to ``days_before`` days before the finding (where the events reach) to its end."""
  start = min(s for s, _, _ in findings_windows)
  end = max(e for _, e, _ in findings_windows)
  earliest = min(list(series) + [start])
  return max(earliest - 3600, start - days_before * DAY), end + 3600
