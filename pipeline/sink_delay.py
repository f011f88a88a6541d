"""Wall-clock delay to the sink, per attack, from a streaming run's logs.

Event time says when a finding *could* be known (``first_detected_at``); a
responder waits in wall-clock time. A finding's first version is emitted when the
watermark passes the end of its first anomalous window, and the watermark follows
the newest event less ``--watermark-max-delay``: so the message that closes the
window is the first one published with an event time at or after
``first_detected_at + max_delay``. The delay is from publishing that message to
the first version arriving on the findings sink.

Inputs are two JSON-lines logs a streaming harness keeps (``bench/pubsub.py``):
``published`` rows ``{"event_time": RFC3339, "published_at": epoch s}`` and
``arrivals`` rows, each a finding version as read from the sink plus
``"_arrival": epoch s``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from postauth.pipeline.evaluate import case_name, matches, median, parse_time, read_json_lines


def closing_publish(published: Sequence[Tuple[float, float]], close: float) -> Optional[float]:
  """Publish wall time of the first message (in publish order) whose event time is >= ``close``."""
  for event_time, wall in published:
    if event_time >= close:
      return wall
  return None


def sink_delays(arrivals: Sequence[dict], published: Sequence[Tuple[float, float]],
                labels: Sequence[dict], max_delay: float) -> Dict:
  """Per attack: seconds from the message that closed its first anomalous window to its
  finding's first version on the sink; and over every first version and every version."""
  per_attack: Dict[str, float] = {}
  first: List[float] = []
  every: List[float] = []
  for f in sorted(arrivals, key=lambda f: f['_arrival']):
    close = parse_time(f['window_end']) + max_delay
    trigger = closing_publish(published, close)
    if trigger is None:  # no later message: closed by the idle advance or the drain
      continue
    delay = round(f['_arrival'] - trigger, 2)
    every.append(delay)
    if int(f.get('updates') or 0):
      continue
    first.append(delay)
    for i, case in enumerate(labels):
      name = case_name(case, i)
      if name not in per_attack and matches(f, case):
        per_attack[name] = delay
  return {'per_attack': per_attack, 'first_versions': _spread(first), 'versions': _spread(every),
          'max_delay_s': max_delay}


def _spread(values: List[float]) -> Dict:
  if not values:
    return {'n': 0}
  return {'n': len(values), 'min_s': min(values), 'median_s': round(median(values), 2), 'max_s': max(values)}


def read_published(path: str) -> List[Tuple[float, float]]:
  return [(parse_time(r['event_time']), float(r['published_at'])) for r in read_json_lines(path)]


def sink_delays_from_files(arrivals: str, published: str, labels: Sequence[dict], max_delay: float) -> Dict:
  return sink_delays(read_json_lines(arrivals), read_published(published), labels, max_delay)
