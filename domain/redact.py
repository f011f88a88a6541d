"""Secrets out of every payload postauth writes: dead letters (parse, late, sink) and their copies.

Why: a dead letter keeps the record as read, so that an operator can see why it failed and
replay it; but audit logs carry secrets in their bodies. A Kubernetes event at RequestResponse
level holds the Secret it wrote or read (``data``, ``stringData``, and the
``last-applied-configuration`` annotation that repeats them) and the token a TokenRequest
returned; CloudTrail logs the session token STS hands out (``responseElements.credentials``);
GCP logs the private key of a new service-account key (``privateKeyData``). A dead-letter
sink is read by more people than the secret store is, so these never reach it.

Invariants:
- a redacted value becomes the string ``[redacted]``; keys and the rest of the record stay,
  so the record still shows what it was and why it failed;
- a payload with nothing to redact is returned byte for byte (a replay reads it as it was);
- never raises: a payload that is not JSON (cut, damaged, a prefix of an oversized record)
  gets a textual pass that blanks the value after every secret-bearing key, up to the end
  of the text when the value is cut;
- evidence needs none of this: it keeps fields of the canonical event (ids, action, resource
  name, network, user agent), never a request or response body.
"""
from __future__ import annotations

import re
from typing import Any, Tuple, Union

import orjson

REDACTED = '[redacted]'

# Keys whose value is a credential wherever they appear (compared lower-case, without _ and -):
# a string or number under one is redacted; an object or list under one is searched instead
# (a pod's ``volumes[].secret`` names a Secret, it holds none of it).
SECRET_KEYS = frozenset((
    'secretaccesskey', 'sessiontoken', 'secretstring', 'secretbinary', 'password', 'newpassword',
    'oldpassword', 'passworddata', 'privatekey', 'privatekeydata', 'clientsecret', 'secret', 'token',
    'accesstoken', 'refreshtoken', 'idtoken', 'bearertoken', 'authorizationtoken', 'webidentitytoken',
    'samlassertion', 'apikey', 'keystring', 'signedjwt', 'secretkey'))
# A Kubernetes Secret's payload, and the annotation kubectl copies the whole object into.
SECRET_OBJECT_KEYS = ('data', 'stringData')
LAST_APPLIED = 'kubectl.kubernetes.io/last-applied-configuration'
SECRET_KINDS = ('Secret', 'SecretList')
# Bodies of a request on a Secret (Kubernetes audit, GKE in Cloud Audit Logs): a patch has no
# kind and may hold the new data anywhere, so such a body is redacted whole unless it is a
# Secret object, whose fields above are.
BODY_KEYS = ('requestObject', 'responseObject', 'request', 'response')


def _norm(key: str) -> str:
  return key.lower().replace('_', '').replace('-', '')


def _is_secret_object(obj: dict) -> bool:
  kind, at_type = obj.get('kind'), obj.get('@type')
  return kind in SECRET_KINDS or (isinstance(at_type, str) and at_type.endswith(('.Secret', '.SecretList')))


def _on_secrets(record: dict) -> bool:
  """Whether a Kubernetes audit event (or a GKE audit entry's payload) is about Secrets."""
  ref = record.get('objectRef')
  if isinstance(ref, dict) and ref.get('resource') == 'secrets':
    return True
  name = record.get('resourceName')
  return isinstance(name, str) and '/secrets' in name and record.get('serviceName') == 'k8s.io'


def redact(value: Any) -> Tuple[Any, bool]:
  """(``value`` with secret-bearing fields replaced, whether anything was); never mutates ``value``."""
  if isinstance(value, list):
    out, changed = [], False
    for item in value:
      item, c = redact(item)
      out.append(item)
      changed |= c
    return out, changed
  if isinstance(value, str):
    return _redact_json_text(value)
  if not isinstance(value, dict):
    return value, False
  secret_object, on_secrets = _is_secret_object(value), _on_secrets(value)
  out, changed = {}, False
  for key, item in value.items():
    if (isinstance(key, str) and _norm(key) in SECRET_KEYS and not isinstance(item, (dict, list))
        and item not in (None, '', REDACTED)):
      out[key], changed = REDACTED, True
    elif secret_object and key in SECRET_OBJECT_KEYS and item is not None:
      out[key] = {k: REDACTED for k in item} if isinstance(item, dict) else REDACTED
      changed = True
    elif key == LAST_APPLIED and item:
      out[key], changed = REDACTED, True
    elif on_secrets and key in BODY_KEYS and item is not None and not (
        isinstance(item, dict) and (_is_secret_object(item) or item.get('kind') == 'Status')):
      out[key], changed = REDACTED, True
    else:
      out[key], c = redact(item)
      changed |= c
  return out, changed


def _redact_json_text(text: str) -> Tuple[str, bool]:
  """A string that is itself JSON (CloudTrail exports' ``responseelements``) redacted inside."""
  head = text[:1]
  if head not in ('{', '[') or len(text) < 8:
    return text, False
  try:
    inner = orjson.loads(text)
  except orjson.JSONDecodeError:
    return text, False
  inner, changed = redact(inner)
  return (orjson.dumps(inner).decode() if changed else text), changed


def redact_payload(raw: Union[bytes, str]) -> str:
  """A raw record as the text a dead letter keeps, its secrets redacted (see the module's invariants)."""
  text = raw.decode('utf-8', errors='backslashreplace') if isinstance(raw, bytes) else raw
  try:
    obj = orjson.loads(raw)
  except orjson.JSONDecodeError:
    return redact_text(text)
  if not isinstance(obj, (dict, list)):
    return text
  try:
    obj, changed = redact(obj)
  except RecursionError:  # nested deeper than Python recurses (orjson reads 1024 levels)
    return redact_text(text)
  return orjson.dumps(obj).decode() if changed else text


# --- text that is not JSON: blank the value after every secret-bearing key -------------------

_KEY = re.compile(r'(\\?)"([A-Za-z0-9_.\-/@]{1,80})\1"\s*:\s*')
_SCALAR = re.compile(r'[^,}\]\s]*')
TEXT_KEYS = SECRET_KEYS | {'data', 'stringdata', 'requestobject', 'responseobject',
                           _norm(LAST_APPLIED)}


def _quote_at(text: str, i: int, escaped: bool) -> bool:
  """Whether the quote at ``i`` closes a string of the given nesting (one level of escaping at most)."""
  n = 0
  while i - n - 1 >= 0 and text[i - n - 1] == '\\':
    n += 1
  return n % 4 == 1 if escaped else n % 2 == 0


def _value_end(text: str, i: int, escaped: bool) -> int:
  """End of the JSON value starting at ``i`` (a string, object, array or scalar), or len(text) if cut."""
  quote_len = 2 if escaped else 1
  if text.startswith('\\"' if escaped else '"', i):
    j = i + quote_len
    while True:
      j = text.find('"', j)
      if j < 0:
        return len(text)
      if _quote_at(text, j, escaped):
        return j + 1
      j += 1
  if i < len(text) and text[i] in '{[':
    depth, j, in_string = 0, i, False
    while j < len(text):
      c = text[j]
      if c == '"' and _quote_at(text, j, escaped):
        in_string = not in_string
      elif not in_string and c in '{[':
        depth += 1
      elif not in_string and c in '}]':
        depth -= 1
        if depth == 0:
          return j + 1
      j += 1
    return len(text)
  return _SCALAR.match(text, i).end()


def redact_text(text: str) -> str:
  """``text`` with the value after every secret-bearing key blanked, JSON or not, cut or whole."""
  out, pos = [], 0
  for m in _KEY.finditer(text):
    if m.start() < pos or _norm(m.group(2)) not in TEXT_KEYS:
      continue
    escaped = bool(m.group(1))
    end = _value_end(text, m.end(), escaped)
    if end == m.end():
      continue
    q = '\\"' if escaped else '"'
    out.append(text[pos:m.end()] + f'{q}{REDACTED}{q}')
    pos = end
  out.append(text[pos:])
  return ''.join(out)
