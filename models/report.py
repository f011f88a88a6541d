"""The training report written beside a model version: report.json, report.html, report.png.

It answers what an operator asks before promoting a model: how much data each
cohort had, which model scores it (its own, or a coarser fallback), how its
training windows score (quantiles, share at each severity), which features the
forests split on, and how long training took. The files are hashed in the
version's manifest like the model files, so an edited report is refused at load.
"""
from __future__ import annotations

import datetime
import html
import io
import json
from typing import Dict, List, Optional

import numpy as np

from postauth.models.features import FEATURE_NAMES
from postauth.models.forest_arrays import ForestArrays
from postauth.models.model import GLOBAL, SEVERITIES, TEAM_SEP, DetectionModel, severity_levels

REPORT_JSON = 'report.json'
REPORT_HTML = 'report.html'
REPORT_PNG = 'report.png'
QUANTILES = (('p50', 0.5), ('p90', 0.9), ('p99', 0.99), ('p99.9', 0.999), ('max', 1.0))


def _quantiles(values: np.ndarray) -> Dict[str, float]:
  if not len(values):
    return {name: None for name, _ in QUANTILES}
  return {name: round(float(np.quantile(values, q)), 4) for name, q in QUANTILES}


def _severity_share(scores: np.ndarray) -> Dict[str, float]:
  n = max(len(scores), 1)
  return {name: round(float((scores >= s).sum()) / n, 6) for name, s in SEVERITIES}


def split_share(forest: ForestArrays) -> np.ndarray:
  """Share of all split nodes of an isolation forest that test each feature.

  Isolation trees split on random features at random points, so impurity-based
  importances mean nothing; how often a feature is chosen *and still splits*
  (a constant feature cannot) shows what the forest can actually see.
  """
  counts = np.bincount(forest.split_features(), minlength=len(FEATURE_NAMES)).astype(float)
  return counts / max(counts.sum(), 1)


def _feature_spread(x: np.ndarray, shares: np.ndarray) -> Dict[str, Dict[str, float]]:
  out = {}
  for i, name in enumerate(FEATURE_NAMES):
    v = x[:, i] if len(x) else np.zeros(1)
    out[name] = {'mean': round(float(v.mean()), 4), 'std': round(float(v.std()), 4),
                 'p99': round(float(np.quantile(v, 0.99)), 4), 'max': round(float(v.max()), 4),
                 'nonzero_share': round(float((v > 0).mean()), 4),
                 'split_share': round(float(shares[i]), 4)}
  return out


def build(model: DetectionModel, leaves: Dict[str, np.ndarray], identities: Dict[str, int],
          timings: Dict[str, float], counts: Optional[Dict[str, int]] = None) -> Dict:
  """The report as a dict. ``leaves``: training features keyed by finest cohort ("type/team")."""
  data: Dict[str, Dict] = {}
  by_cohort: Dict[str, List[str]] = {}
  teams = bool(model.manifest.get('hyperparameters', {}).get('team_cohorts'))
  for key in sorted(leaves):
    by_cohort.setdefault(key.split(TEAM_SEP, 1)[0], []).append(key)
    if teams and TEAM_SEP in key:
      by_cohort[key] = [key]
  scores: Dict[str, np.ndarray] = {}
  for cohort, keys in sorted(by_cohort.items()):
    x = np.vstack([leaves[k] for k in keys])
    scored_by = model.cohort_for(cohort)
    combined, components = model.score_features(x, scored_by)
    scores[cohort] = combined
    data[cohort] = {
        'windows': int(len(x)),
        'identities': int(sum(identities.get(k, 0) for k in keys)),
        'scored_by': scored_by,
        'own_model': scored_by == cohort,
        'score_quantiles': _quantiles(combined),
        'forest_score_quantiles': _quantiles(components[:, 0]),
        'rarity_score_quantiles': _quantiles(components[:, 1]),
        'share_at_severity': _severity_share(combined),
    }
  all_x = np.vstack(list(leaves.values())) if leaves else np.zeros((0, len(FEATURE_NAMES)))
  models = {}
  for cohort in sorted(model.forests):
    members = [k for k in leaves if cohort == GLOBAL or k == cohort
               or k.split(TEAM_SEP, 1)[0] == cohort]
    x = np.vstack([leaves[k] for k in members]) if members else all_x[:0]
    cal = model.calibrations[cohort]
    models[cohort] = {
        'windows': int(model.manifest['cohort_windows'].get(cohort, len(x))),
        'fit_seconds': round(model.fit_seconds.get(cohort, 0.0), 3),
        'raw_forest_score_at_severity': {name: round(cal.raw_at(s), 5) for name, s in SEVERITIES},
        'features': _feature_spread(x, split_share(model.forests[cohort])),
    }
  combined_all = np.concatenate([scores[c] for c in scores if TEAM_SEP not in c]) if scores else np.zeros(0)
  return {
      'version': model.version,
      'created': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
      'training_window': model.manifest['training_window'],
      'hyperparameters': model.manifest['hyperparameters'],
      'totals': dict(counts or {}, identities=int(sum(identities.values())),
                     training_windows=int(len(all_x)), models=len(model.forests),
                     share_at_severity=_severity_share(combined_all)),
      'severity_levels': severity_levels(model.thresholds),
      # the levels' page budget and the page rate expected per cohort (held-back days)
      'page_calibration': model.manifest.get('page_calibration', {}),
      'cohorts': data,
      'models': models,
      'timings': dict(timings),
      '_scores': scores,  # for the plot; dropped from report.json
  }


def plot_png(report: Dict) -> bytes:
  """Score distributions per cohort: histogram, and share of windows at or above each score.

  The right panel is the calibration check: every cohort should follow the dashed
  10**-s line, which is what makes one threshold mean the same in all cohorts.
  Uses matplotlib's object API with the Agg canvas: no pyplot, no global backend.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  scores = report['_scores']
  cohorts = [c for c in sorted(scores) if TEAM_SEP not in c][:12]
  fig = Figure(figsize=(12, 4.8), dpi=90)
  FigureCanvasAgg(fig)
  left, right = fig.subplots(1, 2)
  bins = np.linspace(0, 8, 81)
  for c in cohorts:
    s = scores[c]
    label = f'{c} ({len(s)} windows, model {report["cohorts"][c]["scored_by"]})'
    left.hist(np.clip(s, 0, 8), bins=bins, histtype='step', label=label)
    grid = np.linspace(0, 8, 161)
    share = np.array([(s >= g).mean() for g in grid]) if len(s) else np.zeros_like(grid)
    right.semilogy(grid, np.where(share > 0, share, np.nan), label=c)
  grid = np.linspace(0, 8, 161)
  right.semilogy(grid, 10 ** -grid, 'k--', linewidth=1, label='calibrated: 10^-s')
  for name, s in SEVERITIES:
    for ax in (left, right):
      ax.axvline(s, color='grey', linewidth=0.6, linestyle=':')
    right.text(s, 0.5, name, rotation=90, fontsize=8, va='top')
  left.set_yscale('log')
  left.set_xlabel('calibrated score (-log10 tail probability)')
  left.set_ylabel('training windows')
  left.set_title('score distribution per cohort')
  left.legend(fontsize=7)
  right.set_xlabel('calibrated score s')
  right.set_ylabel('share of training windows scoring >= s')
  right.set_title('calibration: tail share vs score')
  right.legend(fontsize=7)
  fig.suptitle(f'postauth model {report["version"]}: training window '
               f'{report["training_window"][0]} .. {report["training_window"][1]}')
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', metadata={'Software': None})
  return buf.getvalue()


def _table(headers: List[str], rows: List[List]) -> str:
  head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in headers)
  body = ''.join('<tr>' + ''.join(f'<td>{html.escape("" if v is None else str(v))}</td>' for v in r)
                 + '</tr>' for r in rows)
  return f'<table><tr>{head}</tr>{body}</table>'


def render_html(report: Dict) -> str:
  q = [name for name, _ in QUANTILES]
  sev = [name for name, _ in SEVERITIES]
  cohort_rows = [[c, d['identities'], d['windows'], d['scored_by']] + [d['score_quantiles'][k] for k in q]
                 + [d['share_at_severity'][k] for k in sev] for c, d in report['cohorts'].items()]
  model_rows = []
  for c, m in report['models'].items():
    top = sorted(m['features'].items(), key=lambda kv: -kv[1]['split_share'])[:5]
    model_rows.append([c, m['windows'], m['fit_seconds']]
                      + [m['raw_forest_score_at_severity'][k] for k in sev]
                      + ['; '.join(f'{n} {f["split_share"]:.0%}' for n, f in top)])
  levels = [[n, v['score'], f'{v["tail_probability"]:.1e}', round(v['expected_per_1000_windows'], 4)]
            for n, v in report['severity_levels'].items()]
  totals = ', '.join(f'{k} {v}' for k, v in report['totals'].items() if not isinstance(v, dict))
  return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>postauth model {html.escape(report['version'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>postauth model {html.escape(report['version'])}</h1>
<p>Training window {html.escape(report['training_window'][0])} .. {html.escape(report['training_window'][1])};
{html.escape(totals)}. Timings (s): {html.escape(json.dumps(report['timings']))}.</p>
<img src="{REPORT_PNG}" alt="score distributions per cohort" style="max-width:100%">
<h2>Severity levels</h2>
<p>A calibrated score s means "rarer than 10<sup>-s</sup> of the cohort's training windows", so each
severity fires on the same share of normal windows in every cohort.</p>
{_table(['severity', 'score', 'tail probability', 'expected per 1,000 windows'], levels)}
<h2>Cohorts (training data)</h2>
{_table(['cohort', 'identities', 'windows', 'scored by'] + [f'score {k}' for k in q]
        + [f'share >= {k}' for k in sev], cohort_rows)}
<h2>Models</h2>
{_table(['model', 'windows', 'fit s'] + [f'raw forest score at {k}' for k in sev]
        + ['features split on most'], model_rows)}
<h2>Hyperparameters</h2><pre>{html.escape(json.dumps(report['hyperparameters'], indent=1, sort_keys=True))}</pre>
</body></html>
"""


def files(report: Dict, png: Optional[bytes] = None) -> Dict[str, bytes]:
  """report.json, report.html and report.png, ready for ``DetectionModel.save(extra_files=...)``."""
  report = dict(report, timings={k: round(v, 3) for k, v in report['timings'].items()})
  public = {k: v for k, v in report.items() if not k.startswith('_')}
  return {REPORT_JSON: json.dumps(public, indent=1, sort_keys=True).encode(),
          REPORT_HTML: render_html(report).encode(),
          REPORT_PNG: png if png is not None else plot_png(report)}
