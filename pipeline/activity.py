"""What the fleet's identities do, as CloudTrail records: routine sessions and short bursts.

``Simulator.normal`` draws an identity's routine hours (Poisson sessions, office hours for
diurnal identities, bursts for CI builds); ``Simulator.burst`` spreads chosen calls over a few
minutes (an attack step or a deliberate change). ``Writer`` makes each call a CloudTrail
record as AWS delivers it. All draws come from the simulator's own random stream, so a
seed gives the same records.
"""
from __future__ import annotations

import datetime
import uuid
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from postauth.pipeline.synthetic_fleet import ACCOUNT, Call, Identity
from postauth.pipeline.sample_layout import HOUR, iso


class Writer:
  """Builds CloudTrail records for an identity."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng

  def record(self, who: Identity, t: float, call: Call, resource: str, ip: str,
             ua: Optional[str] = None, error: str = '') -> dict:
    """One call of ``who`` at ``t`` from ``ip``: userIdentity as an assumed role or an IAM user."""
    event_id = str(uuid.UUID(bytes=self.rng.bytes(16), version=4))
    if who.principal == 'AssumedRole':
      role = who.arn.rsplit('/', 1)[1]
      session = f'{role}-{int(t // 3600)}'
      ui = {
          'type': 'AssumedRole',
          'principalId': f'AROA{zlib.crc32(role.encode()):012d}:{session}',
          'arn': f'arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}',
          'accountId': ACCOUNT,
          'accessKeyId': 'ASIA' + event_id.replace('-', '')[:16].upper(),
          'sessionContext': {
              'sessionIssuer': {'type': 'Role', 'principalId': f'AROA{role[:8].upper()}',
                                'arn': who.arn, 'accountId': ACCOUNT, 'userName': role},
              'attributes': {'creationDate': iso(t - (t % 3600)), 'mfaAuthenticated': 'false'}},
      }
    else:
      user = who.arn.rsplit('/', 1)[1]
      ui = {'type': 'IAMUser', 'principalId': f'AIDA{user[:10].upper()}', 'arn': who.arn,
            'accountId': ACCOUNT, 'accessKeyId': who.key_id, 'userName': user}
    params: Dict[str, str] = {}
    if resource:
      if call.service == 's3':
        bucket, _, key = resource.partition('/')
        params = {'bucketName': bucket, 'key': key} if key else {'bucketName': bucket}
      else:
        params = {call.param: resource}
    rec = {
        'eventVersion': '1.09',
        'userIdentity': ui,
        'eventTime': iso(t),
        'eventSource': f'{call.service}.amazonaws.com',
        'eventName': call.action,
        'awsRegion': who.region,
        'sourceIPAddress': ip,
        'userAgent': ua or who.user_agent,
        'requestParameters': params or None,
        'responseElements': None,
        'requestID': event_id[::-1],
        'eventID': event_id,
        'readOnly': call.read_only,
        'eventType': 'AwsApiCall',
        'managementEvent': call.service not in ('s3', 'dynamodb'),
        'recipientAccountId': ACCOUNT,
        'eventCategory': 'Data' if call.service in ('s3', 'dynamodb') else 'Management',
    }
    if error:
      rec['errorCode'] = error
      rec['errorMessage'] = f'User is not authorized to perform: {call.service}:{call.action}'
    return rec


def _hour_factor(who: Identity, t: float) -> float:
  """Diurnal identities work office hours on weekdays; the others keep the same pace all day."""
  if not who.diurnal:
    return 1.0
  dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
  weekend = dt.weekday() >= 5
  work = 8 <= dt.hour < 19
  return (0.35 if weekend else 1.0) * (1.0 if work else 0.12)


class Simulator:
  """Draws identities' activity from one random stream (``rate_scale`` scales every routine rate)."""

  def __init__(self, rng: np.random.Generator, rate_scale: float = 1.0):
    self.rng = rng
    self.rate_scale = rate_scale
    self.writer = Writer(rng)

  def _ip(self, who: Identity, networks: Optional[List[str]] = None) -> str:
    nets = networks or who.networks
    return f'{nets[int(self.rng.integers(len(nets)))]}.{int(self.rng.integers(2, 250))}'

  def normal(self, who: Identity, start: float, end: float, volume: float = 1.0,
             calls: Optional[List[Call]] = None, networks: Optional[List[str]] = None,
             ua: Optional[str] = None) -> List[dict]:
    """Routine activity: Poisson sessions per hour, each a short burst of calls."""
    rng = self.rng
    calls = calls or who.calls + who.extra_calls
    hours = np.arange(start, end, HOUR)
    lam = np.array([who.rate * _hour_factor(who, t) for t in hours]) * volume * self.rate_scale / who.burst
    sessions = rng.poisson(lam)
    starts = np.repeat(hours, sessions) + rng.uniform(0, HOUR, int(sessions.sum()))
    if who.burst == 1:
      times = starts
    else:
      sizes = rng.integers(who.burst // 2, who.burst + 1, len(starts))
      offsets = np.concatenate([np.cumsum(rng.uniform(1, 8, n)) for n in sizes]) if len(sizes) else np.zeros(0)
      times = np.repeat(starts, sizes) + offsets
    times = np.sort(times[times < end])
    weights = np.array([c.weight for c in calls], dtype=float)
    picks = rng.choice(len(calls), size=len(times), p=weights / weights.sum())
    res_u = rng.random(len(times))
    errors = rng.random(len(times)) < 0.003
    nets = networks or who.networks
    net_i = rng.integers(0, len(nets), len(times))
    hosts = rng.integers(2, 250, len(times))
    out = []
    for k, ts in enumerate(times.tolist()):
      call = calls[picks[k]]
      res = call.resources[int(res_u[k] * len(call.resources))]
      ip = f'{nets[net_i[k]]}.{hosts[k]}'
      out.append(self.writer.record(who, ts, call, res, ip, ua, 'AccessDenied' if errors[k] else ''))
    return out

  def burst(self, who: Identity, start: float, minutes: float, calls: List[Tuple[Call, str]],
            ip: Optional[str] = None, ua: Optional[str] = None, error: str = '',
            errors: Optional[Sequence[str]] = None) -> List[dict]:
    """Calls spread evenly over a few minutes (an attack step or a deliberate change).

    ``errors`` gives each call its own errorCode ("" for success) instead of ``error``.
    """
    out = []
    for k, (call, res) in enumerate(calls):
      ts = start + minutes * 60.0 * k / max(1, len(calls)) + float(self.rng.uniform(0, 2))
      out.append(self.writer.record(who, ts, call, res, ip or self._ip(who), ua,
                                    errors[k] if errors is not None else error))
    return out
