"""Readable run summaries: counters from Beam metrics and the top findings in words."""
from __future__ import annotations

import json
import re
from typing import Dict, List, Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

# The `findings` counter counts findings before the allow-list and the folding of repeats:
# the summary shows instead what was raised, folded, suppressed and written
# (raised = folded + suppressed + written; see findings_accounting).
# last_resort_records shows only when a dead-letter sink refused records (transforms/last_resort.py).
COUNTERS = ('records_read', 'events_parsed', 'dead_lettered', 'last_resort_records', 'events_late',
            'identity_windows', 'windows_scored', 'windows_anomalous', 'training_windows',
            'windows_unregistered_identity', 'findings_raised', 'findings_folded',
            'findings_suppressed', 'findings_written')


def counters(result) -> Dict[str, int]:
  """postauth's Beam counters from a finished pipeline result (committed values)."""
  out: Dict[str, int] = {}
  for c in result.metrics().query(MetricsFilter().with_namespace('postauth'))['counters']:
    # The streaming DirectRunner reports some counters only as attempted.
    value = max(c.committed or 0, c.attempted or 0)
    out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
  return out


def read_findings(path: str) -> List[dict]:
  with FileSystems.open(path, compression_type='uncompressed') as f:  # gs:// / s3:// findings too
    findings = [json.loads(line) for line in f.read().decode('utf-8').splitlines() if line.strip()]
  return sorted(findings, key=lambda f: (-f['score'], f['identity'], f['window_start']))


# C0/C1 controls (escape sequences, carriage returns) and bidi overrides: a log's strings
# (identities, resources, user agents quoted in reasons) must not drive the terminal.
_CONTROL = re.compile('[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]')


def clean(text: str) -> str:
  """``text`` for a terminal: every control character but the newline shown as '?'."""
  return _CONTROL.sub('?', text)


def render(findings: List[dict], top: int = 10) -> str:
  lines = []
  by_severity: Dict[str, int] = {}
  for f in findings:
    by_severity[f['severity']] = by_severity.get(f['severity'], 0) + 1
  lines.append(f'{len(findings)} findings ' + json.dumps(by_severity, sort_keys=True))
  for rank, f in enumerate(findings[:top], 1):
    who = f['identity'].rsplit('/', 1)[-1]
    lines.append(f'\n#{rank} {f["severity"].upper():8s} score {f["score"]:.2f}  {who}  '
                 f'({f["identity_type"]}, team {f["team"] or "?"}, {f["environment"] or "?"})')
    lines.append(f'   {f["window_start"]} -> {f["window_end"]}  {f["event_count"]} events  '
                 f'model {f["model_version"]}  id {f["finding_id"]}')
    for r in f['reasons'][:4]:
      lines.append(f'   - {r["detail"]}')
  return clean('\n'.join(lines))


def findings_accounting(c: Dict[str, int], written: Optional[List[dict]],
                        streaming: bool = False) -> Dict[str, int]:
  """What became of the findings the job raised: folded into earlier ones, allow-listed, written.

  From the written findings when a local file sink holds them (a folded repeat raises
  its finding's ``occurrences``, and a sink keeps one row per ``finding_id``); else, in
  batch, from the job's counters. Empty when neither is reliable (a streaming job
  writing only to Pub/Sub or BigQuery: the streaming DirectRunner under-reports counters).
  """
  suppressed = int(c.get('findings_suppressed', 0))
  if written is not None:
    by_id = {f['finding_id']: f for f in written}
    n_written = len(by_id)
    folded = sum(max(0, int(f.get('occurrences', 1)) - 1) for f in by_id.values())
  elif not streaming and 'findings' in c:
    raised = (c['findings'] + c.get('findings_unregistered_identity', 0)
              + c.get('findings_fleet_change', 0))
    folded = int(c.get('findings_deduplicated', 0))
    n_written = raised - folded - suppressed
  else:
    return {}
  return {'findings_raised': n_written + folded + suppressed, 'findings_folded': folded,
          'findings_suppressed': suppressed, 'findings_written': n_written}


def render_counters(c: Dict[str, int]) -> str:
  return ', '.join(f'{k}={c[k]}' for k in COUNTERS if k in c)
