"""When an unregistered identity (a shadow NHI) is reported again: once per 24 h of event time.

Why not once per UTC day: a day of activity spans two UTC days of windows (the
window that covers the day's last events ends after midnight), so a per-day rule
reported most shadow identities twice for one day of activity. Instead the first
report anchors a clock: event time is cut into 24 h periods from the first event of
the reporting window, and a window is reported only when its newest event falls in
a period not reported yet. A day of data is one finding; activity that goes on for
three days is three.

The clock is part of each identity's keyed state (``transforms/history.py``: the
streaming ``TrackHistoryFn`` keeps it in Beam state, the batch walk in its sorted
pass), never a process-global dict. In streaming, a late window whose events fall in
a period already passed is not reported again (the clock never moves backwards).
"""
from __future__ import annotations

import math
import typing
from typing import Optional

REPORT_PERIOD = 86400.0  # seconds of event time covered by one unregistered-identity report


class ReportClock(typing.NamedTuple):
  """The anchor (first event of the first report) and the last period reported."""
  anchor: float
  period: int

  def period_of(self, event_time: float, length: float = REPORT_PERIOD) -> int:
    return int(math.floor((event_time - self.anchor) / length))


def due(clock: Optional[ReportClock], first_time: float, last_time: float,
        length: float = REPORT_PERIOD) -> Optional[ReportClock]:
  """The clock after reporting a window of events in [first_time, last_time], or None if not due."""
  if clock is None:
    return ReportClock(first_time, 0)
  period = clock.period_of(last_time, length)
  if period > clock.period:
    return ReportClock(clock.anchor, period)
  return None
