"""Issue 14, part 5: an unregistered identity is reported once per 24 h of event time from its
first report, not once per UTC day (a day of data spans two UTC days of windows)."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue

from conftest import streaming_options
from postauth.domain.event import Event
from postauth.transforms.findings import rfc3339
from postauth.transforms.history import UNREGISTERED, TrackHistory
from postauth.transforms.inventory import context_for
from postauth.transforms.unregistered import REPORT_PERIOD, ReportClock, due
from postauth.transforms.windowing import IdentityWindows

DAY = 86400
T0 = 1_800_000_000 - 1_800_000_000 % DAY  # a UTC midnight
ARN = 'arn:aws:iam::111122223333:role/shadow-'


def ev(identity: str, t: float) -> Event:
  return Event(f'{identity}-{t}', float(t), identity, 'AssumedRole', identity, '', 'aws', 's3',
               'GetObject', 'data_read', 'b/k', 'us-east-1', '10.0.0.1', 'aws-cli/2', True, '',
               True, 'x#0')


def activity(identity: str, start: float, end: float, step: int = 1200):
  return [ev(identity, t) for t in range(int(start), int(end), step)]


# One identity per case, all absent from the (empty) inventory.
CASES = {
    # a day of data: 00:05 to 23:55; its last windows end after midnight
    ARN + 'day': (activity(ARN + 'day', T0 + 300, T0 + DAY - 300), 1),
    # the same day seen from 10:00 to 09:50 the next morning: 24 h, two UTC days
    ARN + 'across-midnight': (activity(ARN + 'across-midnight', T0 + 10 * 3600,
                                       T0 + DAY + 10 * 3600 - 300), 1),
    # three days without a break: one report per 24 h
    ARN + 'three-days': (activity(ARN + 'three-days', T0 + 300, T0 + 3 * DAY - 300), 3),
    # an hour, silence, an hour 30 h later: reported again
    ARN + 'returns': (activity(ARN + 'returns', T0 + 3600, T0 + 7200)
                      + activity(ARN + 'returns', T0 + 31 * 3600, T0 + 32 * 3600), 2),
    # an hour, silence, an hour 20 h later: still the first report's 24 h
    ARN + 'within': (activity(ARN + 'within', T0 + 3600, T0 + 7200)
                     + activity(ARN + 'within', T0 + 21 * 3600, T0 + 22 * 3600), 1),
}
EXPECTED = sorted((identity, n) for identity, (_, n) in CASES.items())
EVENTS = sorted((e for events, _ in CASES.values() for e in events), key=lambda e: e.event_time)


def _reports(found):
  """Findings per identity, counted once the stream has ended."""
  return (found
          | 'AtTheEnd' >> beam.WindowInto(window.GlobalWindows(), trigger=trigger.AfterWatermark(),
                                          accumulation_mode=trigger.AccumulationMode.DISCARDING)
          | 'Identity' >> beam.Map(lambda f: (f['identity'], 1))
          | 'PerIdentity' >> beam.CombinePerKey(sum))


def _judged(events):
  return (events
          | IdentityWindows(3600, 900)
          | 'Unregistered' >> beam.Map(lambda w: (w, context_for(w.identity, 'AssumedRole', {})))
          | TrackHistory(None))


def test_clock_reports_once_per_period_from_the_first_report():
  clock = due(None, T0 + 300, T0 + 900)
  assert clock == ReportClock(T0 + 300, 0)
  assert due(clock, T0 + DAY - 600, T0 + DAY + 299) is None  # the window after midnight
  later = due(clock, T0 + DAY, T0 + DAY + 300)  # its newest event is 24 h after the anchor
  assert later == ReportClock(T0 + 300, 1)
  assert due(later, T0 + 2, T0 + 3) is None  # a late window of a period already past
  assert due(later, T0 + 3 * DAY, T0 + 3 * DAY + 400) == ReportClock(T0 + 300, 3)
  assert REPORT_PERIOD == DAY


def test_batch_reports_once_per_identity_per_24h():
  with beam.Pipeline(runner='FnApiRunner') as p:
    found = _judged(p | beam.Create(EVENTS) | beam.Map(
        lambda e: TimestampedValue(e, e.event_time)))[UNREGISTERED]
    assert_that(_reports(found), equal_to(EXPECTED))
    # the first report of the day's identity is its first window, found on its first day
    first = (found | beam.Filter(lambda f: f['identity'] == ARN + 'day')
             | beam.Map(lambda f: (f['window_end'], f['rules'])))
    assert_that(first, equal_to([(rfc3339(T0 + 900), ['unregistered_identity'])]), label='first')


@pytest.mark.parametrize('step', [3600, 6 * 3600])
def test_streaming_reports_once_per_identity_per_24h(step):
  """TestStream: the watermark advances hourly, or in 6 h jumps (a catch-up: several windows
  of an identity fire together)."""
  stream = test_stream.TestStream()
  end = max(e.event_time for e in EVENTS) + 2 * 3600
  t = T0
  while t < end:
    batch = [TimestampedValue(e, e.event_time) for e in EVENTS if t <= e.event_time < t + step]
    if batch:
      stream = stream.add_elements(batch)
    t += step
    stream = stream.advance_watermark_to(t)
  p = beam.Pipeline(runner='BundleBasedDirectRunner', options=streaming_options())
  found = _judged(p | stream.advance_watermark_to_infinity())[UNREGISTERED]
  assert_that(_reports(found), equal_to(EXPECTED))
  p.run().wait_until_finish()
