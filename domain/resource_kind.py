"""What kind of resource a name is, and where it lives: how an identity's new resources are told
apart from new kinds of work (a new table of a known family is routine; a family or a scope the
identity never touched is not). Pure functions of the name, memoised.
"""
from __future__ import annotations

import functools
import re

_TOKEN = re.compile(r'[-_.:]')
_DIGITS = re.compile(r'[0-9]+')


@functools.lru_cache(maxsize=1 << 16)
def resource_family(resource: str) -> str:
  """The kind of a resource, from its naming pattern: new tables, partitions or objects of a known
  family are routine change; a family the identity never touched is not.

  - ``bucket/prefix/...key``: the bucket and first prefix (``bucket`` alone for ``bucket/key``),
    digits folded and ``k=v`` partitions as ``k=*``;
  - ARNs, URLs and other names: the first token of the name (``payments-orders-prod``,
    ``arn:...:table/payments-refunds``, ``https://sqs.../payments-jobs`` -> ``payments``): the
    namespace a team names its resources in, whatever the service; S3 object ARNs and
    path-like names (secrets ``prod/payments/db``) as paths;
  - e-mail addresses: the domain.
  """
  if not resource:
    return ''
  if resource.startswith('arn:'):
    parts = resource.split(':', 5)
    rest = parts[5] if len(parts) > 5 else ''
    if len(parts) > 2 and parts[2] != 's3':  # drop the resource type: table/..., secret:..., key/...
      head, sep, name = rest.partition('/') if '/' in rest.split(':', 1)[0] else rest.partition(':')
      rest = name if sep else head
    return _path_family(rest) if '/' in rest.strip('/') else _first_token(rest)
  if '://' in resource:
    _, _, rest = resource.partition('://')
    host, _, path = rest.partition('/')
    return _first_token(path.rstrip('/').rsplit('/', 1)[-1]) or host
  if '@' in resource and '/' not in resource:
    return '@' + resource.rpartition('@')[2].lower()
  if '/' in resource.strip('/'):
    return _path_family(resource)
  return _first_token(resource)


@functools.lru_cache(maxsize=1 << 16)
def resource_scope(resource: str) -> str:
  """Where a resource lives, coarser than its kind: the Kubernetes namespace, the bucket, the
  Google project, the naming prefix of a name or ARN. An identity starting a new kind of work
  inside its own scope (a deployer patching its namespace's autoscalers) is its own change;
  the same calls in a scope it never worked in (another team's namespace, prod) are not."""
  family = resource_family(resource)
  parts = family.split('/')
  if parts[0] in _GCP_SCOPES and len(parts) >= 2:
    return '/'.join(parts[:2])
  return parts[0]


_GCP_SCOPES = ('projects', 'organizations', 'folders', 'billingAccounts')
_GCP_PLACES = ('locations', 'zones', 'regions', 'global')


def _path_family(path: str) -> str:
  """``bucket/prefix/...``: the first two segments (one for ``bucket/key``), digits folded.

  Google resource names (``projects/P/zones/Z/disks/disk-1``) are scope, then collection/id
  pairs: the project, the first collection after the location and its id's first token
  (``projects/P/disks/disk``): a new disk of the same naming is the same kind.
  """
  parts = path.strip('/').split('/')
  if parts[0] in _GCP_SCOPES and len(parts) >= 4:
    rest = parts[2:]
    while rest and rest[0] in _GCP_PLACES:
      rest = rest[1:] if rest[0] == 'global' else rest[2:]
    if len(rest) >= 2:
      return f'{parts[0]}/{parts[1]}/{rest[0]}/{_first_token(rest[1])}'
    return '/'.join(parts[:2] + rest[:1])
  segments = [('=' in x and x.split('=', 1)[0] + '=*') or _DIGITS.sub('#', x)
              for x in path.strip('/').split('/')]
  return '/'.join(segments[:2] if len(segments) >= 3 else segments[:1])


def _first_token(name: str) -> str:
  token = next((t for t in _TOKEN.split(name.strip('/')) if t), '')
  return _DIGITS.sub('#', token)
