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


beam.coders.registry.register_coder(Event, beam.coders.RowCoder)
