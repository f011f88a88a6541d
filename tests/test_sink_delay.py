"""Wall-clock delay to the sink per attack (issue 16), from a streaming run's two logs."""
import json

from postauth.pipeline.cli import main
from postauth.pipeline.sink_delay import sink_delays

T = 1_700_000_000.0


def iso(t):
  import datetime
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


LABELS = [{'identity': 'role/ci', 'scenario': 'ci-to-prod', 'start': iso(T + 300), 'end': iso(T + 3000)}]
# one message per event-minute, published 1 s of wall time apart, from wall time 100
PUBLISHED = [(T + 60 * i, 100.0 + i) for i in range(120)]


def finding(window_end, updates, arrival, identity='role/ci'):
  return {'finding_id': 'f-' + identity, 'identity': identity, 'window_start': iso(window_end - 3600),
          'window_end': iso(window_end), 'updates': updates, '_arrival': arrival}


def test_delay_is_from_the_message_past_the_window_end_plus_max_delay_to_the_first_version():
  # first window ends at T + 3600; with max delay 60 s the closing message is the one at T + 3660
  # (index 61, published at wall 161); the first version arrives at 164.5: 3.5 s
  arrivals = [finding(T + 3600, 0, 164.5), finding(T + 4500, 1, 178.0), finding(T + 3600, 0, 170.0, 'role/x')]
  out = sink_delays(arrivals, PUBLISHED, LABELS, max_delay=60)
  assert out['per_attack'] == {'ci-to-prod': 3.5}
  assert out['first_versions']['n'] == 2 and out['first_versions']['max_s'] == 9.0
  assert out['versions']['n'] == 3  # the update: closing message T + 4560 (wall 176) -> 2 s
  assert out['versions']['min_s'] == 2.0


def test_a_window_no_later_message_closed_is_not_counted():
  out = sink_delays([finding(T + 60 * 200, 0, 500.0)], PUBLISHED, LABELS, max_delay=60)
  assert out['per_attack'] == {} and out['first_versions'] == {'n': 0}


def test_postauth_evaluate_shows_the_wall_clock_column(tmp_path, capsys):
  labels, findings = tmp_path / 'labels.json', tmp_path / 'findings.jsonl'
  arrivals, published = tmp_path / 'arrivals.jsonl', tmp_path / 'published.jsonl'
  labels.write_text(json.dumps(LABELS))
  f = dict(finding(T + 3600, 0, 164.5), first_detected_at=iso(T + 3600), score=4.0, severity='high',
           reasons=[], rules=[], pages=1)
  findings.write_text(json.dumps(f) + '\n')
  arrivals.write_text(json.dumps(f) + '\n')
  published.write_text(''.join(json.dumps({'event_time': iso(e), 'published_at': w}) + '\n' for e, w in PUBLISHED))
  assert main(['evaluate', f'--findings={findings}', f'--labels={labels}', '--identity-days=10',
               f'--arrivals={arrivals}', f'--published={published}', '--watermark-max-delay=60']) == 0
  out = capsys.readouterr().out
  assert 'wall-clock delay to the sink' in out
  row = next(l for l in out.splitlines() if l.startswith('| ci-to-prod'))
  assert row.endswith(' 3.5 s |')
