"""OpenTelemetry GenAI tool-call spans (OTLP traces) as post-auth events.

An agent's riskiest actions (mail through a SaaS API, a POST to a web endpoint, SQL through
a driver) often leave no cloud audit record; its runtime's OpenTelemetry spans do. Each
``execute_tool`` span (GenAI semantic conventions; MCP ``tools/call`` likewise) becomes one
event: identity = ``gen_ai.agent.id`` (else ``service.name/gen_ai.agent.name``), action =
``execute_tool:<tool>``, resource = the call's target reduced to what a baseline needs, user
agent = the emitting service (``service.name/service.version``, domain/emitter.py): a span only
claims its agent, the inventory says which services may (``emitted_by``).

Read with the OpenTelemetry project's own protobuf classes (``opentelemetry-proto``):
OTLP/JSON lines as the collector's file exporter writes them (hex ids, int64 as strings),
and OTLP protobuf messages (gzip or not) as its Pub/Sub exporter publishes them. One request
holds many spans: each is its own item (event, skipped, or dead letter with the span as
payload, tool arguments and results redacted: message bodies and secrets are never kept).
"""
from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from postauth.domain.emitter import service_user_agent
from postauth.domain.event import Event
from postauth.transforms.formats.base import Item, ParseError, Skip, check_time, text
from postauth.transforms.records import GZIP_MAGIC, OTLP_MAX_BYTES, GzipTooLarge, ReadLimits, gunzip

# A gzip OTLP message (the collector's Pub/Sub exporter) may expand to one OTLP/JSON batch line.
OTLP_LIMITS = ReadLimits(max_record_bytes=OTLP_MAX_BYTES, max_gzip_bytes=OTLP_MAX_BYTES)
TOOL_OPERATION = 'execute_tool'
MCP_TOOL_CALL = 'tools/call'
PROVIDER = 'otel'
# Operation names of the GenAI conventions; any other is counted as "other" (bounded counters).
KNOWN_OPERATIONS = ('chat', 'text_completion', 'generate_content', 'embeddings', 'create_agent',
                    'invoke_agent', 'execute_tool')
# Attribute values never copied anywhere: the call's arguments and result hold bodies and secrets.
REDACTED = ('gen_ai.tool.call.arguments', 'gen_ai.tool.call.result', 'gen_ai.input.messages',
            'gen_ai.output.messages', 'gen_ai.system_instructions')
# The call's target from standard attributes, first present wins.
TARGET_ATTRIBUTES = ('server.address', 'url.full', 'db.collection.name', 'file.path',
                     'k8s.namespace.name', 'messaging.destination.name', 'process.command_line')
READ_CATEGORIES = ('data_read', 'enumerate')
_ID_LENGTHS = {'traceId': 16, 'spanId': 8, 'parentSpanId': 8}


def _value(v: Any) -> Any:
  """An OTLP AnyValue as a Python value."""
  kind = v.WhichOneof('value')
  if kind is None:
    return None
  if kind == 'array_value':
    return [_value(x) for x in v.array_value.values]
  if kind == 'kvlist_value':
    return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
  return getattr(v, kind)


def attributes(kvs) -> Dict[str, Any]:
  return {kv.key: _value(kv.value) for kv in kvs}


def _hex_ids(obj: dict) -> dict:
  """OTLP/JSON writes ids as hex (protobuf's JSON mapping expects base64): converted, checked."""
  out = dict(obj)
  for key, size in _ID_LENGTHS.items():
    value = out.get(key)
    if value in (None, ''):
      out.pop(key, None)
      continue
    if not isinstance(value, str):
      raise ParseError(f'{key}: expected a hex string, got {type(value).__name__}')
    try:
      raw = binascii.unhexlify(value)
    except (binascii.Error, ValueError):
      raise ParseError(f'{key}: not hex: {value[:40]!r}')
    if len(raw) != size:
      raise ParseError(f'{key}: {len(raw)} bytes, expected {size}')
    out[key] = base64.b64encode(raw).decode('ascii')
  return out


def span_from_json(span: Any) -> Span:
  if not isinstance(span, dict):
    raise ParseError(f'span is a JSON {type(span).__name__}, not an object')
  data = _hex_ids(span)
  if isinstance(data.get('links'), list):
    data['links'] = [_hex_ids(l) if isinstance(l, dict) else l for l in data['links']]
  try:
    return json_format.ParseDict(data, Span(), ignore_unknown_fields=True)
  except (json_format.ParseError, TypeError, ValueError) as e:
    raise ParseError(f'span: {e}'[:300])


def redacted_json(span: Any) -> bytes:
  """A span's JSON for a dead letter or a late event's payload, without arguments or results."""
  if not isinstance(span, dict):
    return orjson.dumps(span, default=str)
  out = dict(span)
  attrs = out.get('attributes')
  if isinstance(attrs, list):
    out['attributes'] = [
        {'key': a['key'], 'value': {'stringValue': '[redacted]'}}
        if isinstance(a, dict) and a.get('key') in REDACTED else a for a in attrs]
  return orjson.dumps(out, default=str)


def _span_json(span: Span) -> dict:
  """A protobuf span in OTLP/JSON form (hex ids), for payloads of items read from protobuf."""
  d = json_format.MessageToDict(span)
  for key in _ID_LENGTHS:
    if key in d:
      d[key] = base64.b64decode(d[key]).hex()
  return d


# --- the call's target ------------------------------------------------------------------------

def _host_url(value: str, scheme: str = '') -> str:
  """scheme://host of a URL or a bare host; no user info, port, path or query (they hold tokens)."""
  value = value.strip()
  if '://' not in value:
    value = f'{scheme or "tcp"}://{value}'
  try:
    parts = urlsplit(value)
    host = (parts.hostname or '').lower()
  except ValueError:
    return ''
  return f'{parts.scheme.lower()}://{host}' if host else ''


def _email_domain(value: Any) -> str:
  if isinstance(value, list):
    value = next((v for v in value if isinstance(v, str)), '')
  if isinstance(value, dict):
    value = value.get('email') or value.get('address') or ''
  if not isinstance(value, str) or '@' not in value:
    return ''
  address = value.split(',')[0].strip().strip('<>').rpartition('<')[2].strip('<> ')
  domain = address.rpartition('@')[2].strip().lower()
  return '@' + domain if domain and ' ' not in domain else ''


def _name(value: Any) -> str:
  """A short identifier (table, service, channel); free text is refused, it may be a body."""
  if not isinstance(value, str):
    return ''
  value = value.strip()
  if not value or len(value) > 200 or any(c.isspace() for c in value):
    return ''
  return value


def reduce_target(kind: str, value: Any) -> str:
  if kind == 'email':
    return _email_domain(value)
  if kind == 'url':
    return _host_url(value, 'https') if isinstance(value, str) else ''
  if kind == 'path':
    return _name(value)[:512]
  return _name(value)[:200]


def _from_attributes(attrs: Dict[str, Any]) -> str:
  for key in TARGET_ATTRIBUTES:
    value = attrs.get(key)
    if value in (None, ''):
      continue
    value = str(value)
    if key == 'server.address':
      return _host_url(value, str(attrs.get('url.scheme') or ''))
    if key == 'url.full':
      return _host_url(value)
    if key == 'db.collection.name':
      namespace = str(attrs.get('db.namespace') or '')
      table = value.replace('.', '/')
      return f'{namespace}/{table}' if namespace else table
    if key == 'process.command_line':
      return value.strip().split(' ', 1)[0].rsplit('/', 1)[-1][:128]
    return value[:512]
  return ''


def _from_arguments(raw: Any, keys: List[Tuple[str, str]]) -> str:
  """The first configured key of the arguments' JSON object, reduced; '' if none or not JSON."""
  if isinstance(raw, str):
    try:
      raw = orjson.loads(raw)
    except orjson.JSONDecodeError:
      return ''
  if not isinstance(raw, dict):
    return ''
  for key, kind in keys:
    if key in raw:
      reduced = reduce_target(kind, raw[key])
      if reduced:
        return reduced
  return ''


# --- spans -> items ---------------------------------------------------------------------------

def _operation(attrs: Dict[str, Any]) -> str:
  op = attrs.get('gen_ai.operation.name')
  if op == TOOL_OPERATION or attrs.get('mcp.method.name') == MCP_TOOL_CALL:
    return TOOL_OPERATION
  return op if op in KNOWN_OPERATIONS else ('other' if op else 'none')


def _json_operation(span: dict) -> Optional[str]:
  """The operation of an OTLP/JSON span read off its attribute list, without decoding the span
  (most spans of an agent's trace are chat calls: they are skipped at this cost); None when the
  attributes are not a well-formed list (the full decode then says why)."""
  attrs = span.get('attributes')
  if attrs is None:
    return 'none'
  if not isinstance(attrs, list):
    return None
  found: Dict[str, Any] = {}
  for a in attrs:
    if not isinstance(a, dict):
      return None
    key = a.get('key')
    if key in ('gen_ai.operation.name', 'mcp.method.name'):
      value = a.get('value')
      if not isinstance(value, dict):
        return None
      found[key] = value.get('stringValue')
  return _operation(found)


MAX_SPAN_SECONDS = 3600.0  # a longer (or reversed) range is clipped: it would join everything


def _duration(span: Span) -> float:
  if span.end_time_unix_nano <= span.start_time_unix_nano:
    return 0.0
  return min((span.end_time_unix_nano - span.start_time_unix_nano) / 1e9, MAX_SPAN_SECONDS)


def span_event(span: Span, resource: Dict[str, Any], ref: str, taxonomy) -> Event:
  """One execute_tool span -> Event; ``Skip`` for other spans, ``ParseError`` for bad ones."""
  attrs = attributes(span.attributes)
  op = _operation(attrs)
  if op != TOOL_OPERATION:
    raise Skip(f'span not a tool execution (gen_ai.operation.name={op})')
  tool = text(attrs.get('gen_ai.tool.name'), 200)
  if not tool:
    raise ParseError('execute_tool span without gen_ai.tool.name')
  if len(span.span_id) != 8:
    raise ParseError('execute_tool span without a spanId')
  service_name = text(resource.get('service.name'), 200)
  agent_id = text(attrs.get('gen_ai.agent.id') or resource.get('gen_ai.agent.id'), 200)
  agent_name = text(attrs.get('gen_ai.agent.name') or resource.get('gen_ai.agent.name'), 200)
  identity = agent_id or (f'{service_name}/{agent_name}' if service_name else agent_name)
  if not identity:
    raise ParseError('execute_tool span without gen_ai.agent.id or gen_ai.agent.name')
  event_time = check_time(span.start_time_unix_nano / 1e9)
  error_type = text(attrs.get('error.type'), 100)
  failed = span.status.code == Status.STATUS_CODE_ERROR or bool(error_type)
  method = text(attrs.get('http.request.method'), 16).lower()
  service = 'mcp' if attrs.get('mcp.method.name') else 'genai'
  category = taxonomy.categorize(PROVIDER, method or service, tool)
  resource_name = (_from_attributes(attrs) or
                   _from_arguments(attrs.get('gen_ai.tool.call.arguments'), taxonomy.argument_keys))
  version = text(resource.get('service.version'), 64)
  return Event(
      event_id=span.span_id.hex(),
      event_time=event_time,
      identity=identity,
      identity_type='ai_agent',
      principal_raw=agent_name or agent_id,
      session_id=text(attrs.get('gen_ai.conversation.id'), 200),
      provider=PROVIDER,
      service=service,
      action=f'{TOOL_OPERATION}:{tool}',
      category=category,
      resource=resource_name,
      region=text(resource.get('cloud.region'), 64),
      source_ip=text(resource.get('host.ip') if isinstance(resource.get('host.ip'), str) else '', 64),
      user_agent=service_user_agent(service_name, version),
      success=not failed,
      error_code=(error_type or 'STATUS_CODE_ERROR') if failed else '',
      read_only=category in READ_CATEGORIES,
      raw_ref=ref,
      duration=_duration(span),
      tool_call=f'{span.trace_id.hex()}/{span.span_id.hex()}')


def _item(span: Span, resource: Dict[str, Any], ref: str, raw: bytes, taxonomy) -> Item:
  try:
    return Item(span_event(span, resource, ref, taxonomy), '', False, raw, ref)
  except Skip as e:
    return Item(None, f'otel: {e}', True, raw, ref)
  except (ParseError, ValueError, TypeError) as e:
    return Item(None, f'otel: {e}'[:300], False, raw, ref)


class OtelTraces:
  name = 'otel'

  def sniff(self, record: dict) -> bool:
    return 'resourceSpans' in record or 'resource_spans' in record

  def parse(self, record: dict, raw_ref: str, taxonomy) -> Event:
    """The first tool event of a one-span request (the interface every format has)."""
    first = None
    for item in self.parse_many(record, raw_ref, taxonomy):
      if item.event is not None:
        return item.event
      first = first or item
    if first is not None and first.skipped:
      raise Skip(first.reason)
    raise ParseError(first.reason if first else 'no spans')

  def parse_many(self, record: dict, raw_ref: str, taxonomy) -> Iterator[Item]:
    """One item per span of an OTLP/JSON ExportTraceServiceRequest."""
    blocks = record.get('resourceSpans', record.get('resource_spans'))
    if not isinstance(blocks, list):
      raise ParseError('resourceSpans is not a list')
    if not blocks:
      yield Item(None, 'otel: request without spans', True, orjson.dumps(record), raw_ref)
      return
    for i, block in enumerate(blocks):
      ref = f'{raw_ref}/{i}'
      try:
        if not isinstance(block, dict):
          raise ParseError(f'resourceSpans[{i}] is not an object')
        resource_msg = json_format.ParseDict(block.get('resource') or {}, Resource(),
                                             ignore_unknown_fields=True)
        scopes = block.get('scopeSpans', block.get('scope_spans')) or []
        if not isinstance(scopes, list) or not all(isinstance(s, dict) for s in scopes):
          raise ParseError(f'resourceSpans[{i}].scopeSpans is not a list of objects')
      except (ParseError, json_format.ParseError, TypeError, ValueError) as e:
        yield Item(None, f'otel: resource: {e}'[:300], False, redacted_json(block), ref)
        continue
      resource = attributes(resource_msg.attributes)
      for j, scope in enumerate(scopes):
        spans = scope.get('spans') or []
        if not isinstance(spans, list):
          yield Item(None, 'otel: spans is not a list', False, redacted_json(scope), f'{ref}.{j}')
          continue
        for k, span in enumerate(spans):
          span_ref, raw = f'{ref}.{j}.{k}', redacted_json(span)
          op = _json_operation(span) if isinstance(span, dict) else None
          if op is not None and op != TOOL_OPERATION:
            yield Item(None, f'otel: span not a tool execution (gen_ai.operation.name={op})', True, raw, span_ref)
            continue
          try:
            msg = span_from_json(span)
          except ParseError as e:
            yield Item(None, f'otel: {e}'[:300], False, raw, span_ref)
            continue
          yield _item(msg, resource, span_ref, raw, taxonomy)

  def parse_bytes(self, raw: bytes, raw_ref: str, taxonomy) -> Optional[Iterator[Item]]:
    """Items of an OTLP protobuf ExportTraceServiceRequest (gzip or not); None if it is not one."""
    data = raw
    if data[:2] == GZIP_MAGIC:
      try:
        data = gunzip(data, OTLP_LIMITS.gzip_bound(len(data)))
      except GzipTooLarge:  # a bomb, whatever it holds: one dead letter
        return iter([Item(None, OTLP_LIMITS.gzip_too_large(len(raw)), False, raw, raw_ref)])
      except (OSError, EOFError, zlib.error):
        return None
    # field 1 (resource_spans), length-delimited: the first byte of any non-empty request
    if data[:1] != b'\x0a':
      return None
    try:
      request = ExportTraceServiceRequest.FromString(data)
    except DecodeError:
      return None
    if not any(s.spans for rs in request.resource_spans for s in rs.scope_spans):
      return None
    return self._proto_items(request, raw_ref, taxonomy)

  def _proto_items(self, request, raw_ref: str, taxonomy) -> Iterator[Item]:
    for i, block in enumerate(request.resource_spans):
      resource = attributes(block.resource.attributes)
      for j, scope in enumerate(block.scope_spans):
        for k, span in enumerate(scope.spans):
          ref = f'{raw_ref}/{i}.{j}.{k}'
          raw = redacted_json(_span_json(span))
          if len(span.trace_id) not in (0, 16) or len(span.span_id) not in (0, 8):
            yield Item(None, f'otel: ids of {len(span.trace_id)} and {len(span.span_id)} bytes, '
                             'expected 16 and 8', False, raw, ref)
            continue
          yield _item(span, resource, ref, raw, taxonomy)
