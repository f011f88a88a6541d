"""The canonical post-authentication event every parser produces.

One flat record per API call, whatever the source log: the rest of the pipeline
(windowing, features, scoring) only ever sees this type.
"""
from __future__ import annotations

import typing

import apache_beam as beam


class Event(typing.NamedTuple):
  event_id: str
  event_time: float  # seconds since the epoch, UTC
  identity: str  # canonical identity (role ARN for an assumed role, ...)
  identity_type: str  # as the log names it (AssumedRole, IAMUser, ...)
  principal_raw: str  # the principal exactly as logged (session ARN, ...)
  session_id: str  # access key id / session name, '' when absent
  provider: str  # aws, gcp, k8s, ...
  service: str  # e.g. secretsmanager
  action: str  # e.g. GetSecretValue
  category: str  # taxonomy category, see domain.taxonomy
  resource: str  # best-effort primary resource, '' when unknown
  region: str
  source_ip: str
  user_agent: str
  success: bool
  error_code: str
  read_only: bool
  raw_ref: str  # where the raw record came from: "file#index"
  # The agent join (transforms/agent_join.py). A span's duration and its "trace_id/span_id";
  # an audit record's own claim of whom it acts for (AWS sourceIdentity). On a record the
  # join derives for an agent: the tool call that made it ('' when none was in flight) and
  # how it was joined (JOIN_BASES in transforms/agent_join.py).
  duration: float = 0.0
  tool_call: str = ''
  acting_for: str = ''


beam.coders.registry.register_coder(Event, beam.coders.RowCoder)
