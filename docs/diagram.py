"""Draw docs/pipeline.png: postauth's detection pipeline in one picture (the README's front door).

Regenerate after a stage changes: ``python docs/diagram.py`` (matplotlib, Agg backend; writes
beside this file). The stages are the named steps of ``pipeline/detect.py``; the two rows read
left to right, then right to left, so the picture stays readable at README width.
"""
from __future__ import annotations

import os
from typing import Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

W, H = 2.5, 1.25  # stage box size, data units
STAGE, SIDE, DEAD = '#dbe9f6', '#fdf1d6', '#f8d9d6'
EDGE = '#33475b'

# name -> (centre, what it does, where it lives)
STAGES = {
  'source': ((1.5, 5.2), 'files, folder watch,\nPub/Sub', 'transforms/sources.py'),
  'parse': ((4.6, 5.2), 'record -> canonical\nEvent (6 log formats)', 'transforms/parse.py, formats/'),
  'windows': ((7.7, 5.2), 'per identity: 1 h windows\nevery 15 min, event time', 'transforms/windowing.py'),
  'enrich': ((10.8, 5.2), 'owner, team, type,\ncriticality from inventory', 'transforms/inventory.py'),
  'history': ((10.8, 2.3), "vs the identity's own\nprofile (keyed state)", 'transforms/history.py'),
  'score': ((7.7, 2.3), 'cohort forest + rarity,\nrules; calibrated', 'transforms/score.py'),
  'findings': ((4.6, 2.3), 'merge runs, update,\nsuppress, deduplicate', 'transforms/findings.py'),
  'sinks': ((1.5, 2.3), 'JSONL, Avro, Pub/Sub,\nBigQuery, OCSF', 'transforms/outputs.py'),
}
FLOW = ['source', 'parse', 'windows', 'enrich', 'history', 'score', 'findings', 'sinks']


def box(ax, centre: Tuple[float, float], title: str, body: str = '', foot: str = '',
        colour: str = STAGE, size: Tuple[float, float] = (W, H), title_size: float = 13) -> None:
  """One rounded box: a bold title, what it does, and (small) the module; a title alone is centred."""
  w, h = size
  x, y = centre
  ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle='round,pad=0.02,rounding_size=0.12',
                              facecolor=colour, edgecolor=EDGE, linewidth=1.4))
  if not body:
    ax.text(x, y, title, ha='center', va='center', fontsize=title_size, fontweight='bold', color=EDGE)
    return
  if not foot:
    ax.text(x, y + h / 4, title, ha='center', va='center', fontsize=title_size, fontweight='bold', color=EDGE)
    ax.text(x, y - h / 4, body, ha='center', va='center', fontsize=8.5)
    return
  ax.text(x, y + h / 2 - 0.2, title, ha='center', va='center', fontsize=title_size, fontweight='bold',
          color=EDGE)
  ax.text(x, y - 0.02, body, ha='center', va='center', fontsize=10, linespacing=1.15)
  ax.text(x, y - h / 2 + 0.16, foot, ha='center', va='center', fontsize=8, color='#555555',
          family='monospace')


def arrow(ax, start, end, colour=EDGE, style='-', width=1.8, rad=0.0, label='', label_at=None) -> None:
  ax.add_patch(FancyArrowPatch(start, end, arrowstyle='-|>', mutation_scale=16, color=colour,
                               linewidth=width, linestyle=style, connectionstyle=f'arc3,rad={rad}',
                               shrinkA=0, shrinkB=0))
  if label:
    lx, ly = label_at or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    ax.text(lx, ly, label, ha='center', va='center', fontsize=8.5, color=colour,
            bbox=dict(facecolor='white', edgecolor='none', pad=1.0))


def edge_point(name: str, side: str) -> Tuple[float, float]:
  (x, y), _, _ = STAGES[name]
  return {'left': (x - W / 2, y), 'right': (x + W / 2, y), 'top': (x, y + H / 2),
          'bottom': (x, y - H / 2)}[side]


def draw(path: str) -> None:
  fig, ax = plt.subplots(figsize=(12, 7.2))
  ax.set_xlim(0, 12.3)
  ax.set_ylim(-0.1, 7.3)
  ax.axis('off')
  ax.text(0.15, 7.05, 'postauth: one identity-window at a time, the same transforms in batch and streaming',
          fontsize=12, color=EDGE, va='center')

  for name, (centre, body, foot) in STAGES.items():
    box(ax, centre, name, body, foot)

  # main flow: row 1 left to right, down at the right, row 2 right to left
  for a, b in zip(FLOW, FLOW[1:]):
    (ax_, ay), (bx, by) = STAGES[a][0], STAGES[b][0]
    if ay == by and bx > ax_:
      arrow(ax, edge_point(a, 'right'), edge_point(b, 'left'))
    elif ay == by:
      arrow(ax, edge_point(a, 'left'), edge_point(b, 'right'))
    else:
      arrow(ax, edge_point(a, 'bottom'), edge_point(b, 'top'))

  # side inputs: the inventory into enrich, the model into history and score
  box(ax, (10.8, 6.75), 'inventory', colour=SIDE, size=(2.0, 0.5), title_size=11)
  arrow(ax, (10.8, 6.5), edge_point('enrich', 'top'), colour='#9a6b00', style='--', width=1.5)
  ax.text(12.05, 6.17, 'side input,\nre-read\nmid-stream', fontsize=8, color='#9a6b00', ha='center',
          va='center')
  box(ax, (9.25, 0.5), 'model (LATEST)', colour=SIDE, size=(2.6, 0.5), title_size=11)
  arrow(ax, (9.9, 0.75), edge_point('history', 'bottom'), colour='#9a6b00', style='--', width=1.5)
  arrow(ax, (8.6, 0.75), edge_point('score', 'bottom'), colour='#9a6b00', style='--', width=1.5)
  ax.text(10.75, 0.45, 'profiles, forests, fleet table;\nswapped when LATEST moves', fontsize=8,
          color='#9a6b00', ha='left', va='center')

  # dead letters: bad records (parse), late events (before the windows), undelivered findings
  dead = (3.05, 3.78)
  box(ax, dead, 'dead letters', 'reason + raw record', colour=DEAD, size=(2.3, 0.75), title_size=11)
  red = '#b03a2e'
  arrow(ax, edge_point('parse', 'bottom'), (3.9, dead[1] + 0.375), colour=red, width=1.5,
        label='bad records', label_at=(4.75, 4.3))
  arrow(ax, (6.9, 5.2 - H / 2), (4.2, dead[1] + 0.1), colour=red, width=1.5, rad=-0.15,
        label='late events', label_at=(6.25, 4.05))
  arrow(ax, (1.9, 2.3 + H / 2), (2.3, dead[1] - 0.375), colour=red, width=1.5,
        label='undelivered', label_at=(1.3, 3.35))

  ax.text(0.15, 0.12, 'solid: main flow     dashed: side inputs     red: dead-letter output',
          fontsize=8.5, color='#555555')
  fig.savefig(path, dpi=130, bbox_inches='tight', facecolor='white')
  plt.close(fig)


if __name__ == '__main__':
  draw(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pipeline.png'))
