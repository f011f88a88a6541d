"""Log formats postauth reads, behind one interface.

A format is an object with ``name``, ``sniff(record) -> bool`` and
``parse(record, raw_ref, taxonomy) -> Event`` (raising ``ParseError``). Adding a
format means adding a module here and listing it in ``FORMATS``.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from postauth.transforms.formats.base import Item, ParseError, RecordFormat, Skip
from postauth.transforms.formats.canonical import Canonical
from postauth.transforms.formats.cloudtrail import CloudTrail
from postauth.transforms.formats.gcp_audit import GcpAudit
from postauth.transforms.formats.k8s_audit import K8sAudit
from postauth.transforms.formats.ocsf import Ocsf
from postauth.transforms.formats.otel import OtelTraces

# canonical: postauth's own events (JSON lines, or records of its Avro files).
# otel: OTLP trace requests (OpenTelemetry GenAI tool-call spans), JSON or protobuf.
FORMATS: List[RecordFormat] = [CloudTrail(), GcpAudit(), K8sAudit(), Ocsf(), OtelTraces(), Canonical()]
BY_NAME: Dict[str, RecordFormat] = {f.name: f for f in FORMATS}


def detect(record: dict) -> Optional[RecordFormat]:
  for fmt in FORMATS:
    if fmt.sniff(record):
      return fmt
  return None


__all__ = ["BY_NAME", "FORMATS", "Item", "ParseError", "RecordFormat", "Skip", "detect"]
