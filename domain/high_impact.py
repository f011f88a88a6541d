"""High-impact actions, as data: what pages on its own at a non-human identity's first use.

Issue 22 item 4. Turning audit logging off, sharing snapshots, images, keys or buckets outside
the account (or with the world), creating users or keys for other principals, assuming roles in
other accounts: from a non-human identity, each pages the first time it happens unless the
identity's own history shows the action, whatever the model's score, criticality or environment.

The list is data, ``taxonomy/high_impact.csv``: ``provider,service,action,condition,what`` with
each provider's own action names (the parsers' ``service`` and ``action``; globs allowed, matched
case-blind). ``condition`` says when a use counts (``CONDITIONS``); it is checked on the window's
evidence (``domain/evidence.py``: the first and last event of each action, with its resource):

- ``always``: every use;
- ``cross_account``: a target in another AWS account or GCP project than the identity's, or the
  world. The parsers append the targets of a sharing or trust change to the event's resource,
  ``<resource> shared-with:T,T`` (``SHARED_WITH``; ``all`` is the world, ``org:``/``ou:`` an AWS
  organization or unit, ``project:P`` a GCP project, ``user:``/``group:``/``domain:`` members
  outside any project), listing only targets outside the caller's own account or project. Without
  a marker the resource itself is the target (``sts:AssumeRole``: the role ARN;
  ``iamcredentials``: the service account);
- ``other_principal``: a key, token or credential made for a principal other than the identity
  (``iam:CreateAccessKey``'s user name, a GCP or Kubernetes service account named in the resource);
- ``public``: opened to the world (a ``shared-with`` target ``all``).

When a condition cannot be checked (no evidence kept for the action, or a GCP service account
named by its numeric id) the use is still returned, with ``verified`` false: a first use of a
high-impact action is not dropped for want of detail. An organization share (``org:``) is not
counted as cross-account: the log does not say whose organization it is. An identity of no
account (an AWS service principal assuming a role for an instance or a function, a federated
subject) crosses accounts only by opening something to the world or to members of no project.

``first_uses`` is what the rules call; ``what_of`` and ``high_impact_actions`` are for reports.
"""
from __future__ import annotations

import csv
import fnmatch
import functools
import io
import re
from importlib import resources
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from postauth.domain.evidence import FIELDS

CONDITIONS = ('always', 'cross_account', 'other_principal', 'public')
PROVIDERS = ('aws', 'gcp', 'k8s')
TABLE_FILE = 'high_impact.csv'

# What the parsers append to the resource of a sharing or trust change (see the module doc).
SHARED_WITH = ' shared-with:'
WORLD = 'all'
MAX_TARGETS = 4  # targets listed per event (then "+N"): the evidence keeps 256 characters
MAX_TARGET_TEXT = 48
MAX_RESOURCE_TEXT = 256  # evidence.MAX_TEXT: a marker must fit in what the evidence keeps
MAX_LISTED = 5  # targets or resources reported per use

_PROVIDER, _RESOURCE, _ERROR = (FIELDS.index('provider'), FIELDS.index('resource'),
                                FIELDS.index('error_code'))
_OUTSIDE = '<outside>'  # a member that belongs to no project (user:, group:, domain:)
_UNKNOWN = '<unknown>'  # a target named so that its owner cannot be told (a numeric id)


class Row(NamedTuple):
  provider: str
  service: str  # glob, lower case
  action: str  # glob, as written
  condition: str
  what: str


def _lines(text: str) -> Iterable[dict]:
  lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith('#')]
  return csv.DictReader(io.StringIO('\n'.join(lines)))


class Table:
  """The rows of a high-impact table, looked up by (provider, service, action)."""

  def __init__(self, rows: Sequence[Row]):
    self.rows: Tuple[Row, ...] = tuple(rows)
    self._patterns = tuple((r, r.service.lower(), r.action.lower()) for r in self.rows)
    self._match = functools.lru_cache(maxsize=8192)(self._find)
    self.listed = functools.lru_cache(maxsize=8192)(self._has_rows)  # every window asks, per action

  @classmethod
  def from_text(cls, text: str) -> 'Table':
    rows = []
    for line in _lines(text):
      values = {k: (line.get(k) or '').strip() for k in Row._fields}
      if values['condition'] not in CONDITIONS:
        raise ValueError(f'unknown condition {values["condition"]!r} in high-impact row {line} '
                         f'(one of {CONDITIONS})')
      if not all(values.values()):
        raise ValueError(f'incomplete high-impact row {line}: needs {", ".join(Row._fields)}')
      rows.append(Row(values['provider'].lower(), values['service'].lower(), values['action'],
                      values['condition'], values['what']))
    return cls(rows)

  def _find(self, provider: str, service: str, action: str) -> Tuple[Row, ...]:
    service, action = service.lower(), action.lower()
    return tuple(r for r, s, a in self._patterns
                 if r.provider == provider and fnmatch.fnmatchcase(service, s)
                 and fnmatch.fnmatchcase(action, a))

  def match(self, provider: str, service: str, action: str) -> Tuple[Row, ...]:
    """The rows of an action, in file order (empty when it is not high-impact)."""
    return self._match(provider, service, action)

  def _has_rows(self, action_key: str) -> bool:
    """Whether a window's action key (``service:Action``) has a row for any provider (``listed``)."""
    service, _, action = action_key.partition(':')
    return any(self._match(p, service, action) for p in PROVIDERS)


@functools.lru_cache(maxsize=1)
def table() -> Table:
  """The packaged table (``taxonomy/high_impact.csv``), read once per process."""
  return Table.from_text(
      resources.files('postauth.domain').joinpath('taxonomy', TABLE_FILE).read_text())


def high_impact_actions(provider: Optional[str] = None) -> Tuple[Row, ...]:
  """Every row of the table (of one provider when given), for reports and documentation."""
  return tuple(r for r in table().rows if provider is None or r.provider == provider)


def _split(key: str, provider: Optional[str]) -> Tuple[Optional[str], str, str]:
  """(provider, service, action) of ``service:Action`` or ``provider:service:Action``."""
  if provider is None:
    head, _, rest = key.partition(':')
    if head in PROVIDERS and ':' in rest:
      provider, key = head, rest
  service, _, action = key.partition(':')
  return provider, service, action


def what_of(provider_action: str, provider: Optional[str] = None) -> Optional[str]:
  """The responder sentence of an action (``cloudtrail:StopLogging``, the window's action key,
  or ``aws:cloudtrail:StopLogging``); the first row's when it has several; None if not listed."""
  provider, service, action = _split(provider_action, provider)
  for p in (provider,) if provider else PROVIDERS:
    rows = table().match(p, service, action)
    if rows:
      return rows[0].what
  return None


# -- whose account, project or service account ------------------------------------------------

_ACCOUNT = re.compile(r'^\d{12}$')
_SA_IN_PATH = re.compile(r'serviceAccounts/([^/\s]+)')
_K8S_SA_IN_PATH = re.compile(r'(?:^|/)([^/\s]+)/serviceaccounts/([^/\s]+)')
# Projects whose service accounts are Google's own service agents, not a customer's.
_GOOGLE_PROJECTS = ('cloudservices', 'compute-system', 'container-engine-robot', 'gs-project-accounts',
                    'cloudbuild', 'serverless-robot-prod', 'dataflow-service-producer-prod')


def aws_account_of(value: str) -> str:
  """The account of an ARN or a 12-digit account id; '' for anything else."""
  value = value.strip()
  if _ACCOUNT.match(value):
    return value
  if value.startswith('arn:'):
    parts = value.split(':')
    if len(parts) > 4 and _ACCOUNT.match(parts[4]):
      return parts[4]
  return ''


def gcp_project_of(email: str) -> Optional[str]:
  """The project a service account belongs to (its id, or its number for default compute ones);
  None for Google's own service agents and for anything that is not a service account."""
  local, _, domain = email.strip().lower().partition('@')
  if not domain:
    return None
  if domain.endswith('.iam.gserviceaccount.com'):
    project = domain[:-len('.iam.gserviceaccount.com')]
    if project.startswith('gcp-sa-') or project in _GOOGLE_PROJECTS or local.startswith('service-'):
      return None
    return project
  if domain == 'appspot.gserviceaccount.com':
    return local
  if domain == 'developer.gserviceaccount.com':
    return local.partition('-')[0]
  return None


def _home(provider: str, identity: str) -> str:
  """The identity's own account (AWS) or project (GCP service account); '' when it has none."""
  if provider == 'aws':
    return aws_account_of(identity)
  if provider == 'gcp':
    return gcp_project_of(identity) or ''
  return ''


def _owner(provider: str, target: str) -> Optional[str]:
  """Whose a sharing target is: an account or project, ``_OUTSIDE``, ``_UNKNOWN``, or None when
  it is no one else's (an AWS organization, a service principal, Google's own agents)."""
  if target == WORLD:
    return _OUTSIDE
  if provider == 'aws':
    return aws_account_of(target) or None
  if provider == 'gcp':
    kind, sep, rest = target.partition(':')
    if sep and kind == 'project':
      return rest or None
    if sep and kind == 'serviceAccount':
      return gcp_project_of(rest)
    if sep and kind in ('user', 'group', 'domain', 'principal', 'principalSet'):
      return _OUTSIDE
    found = _SA_IN_PATH.search(target)
    if found:  # projects/-/serviceAccounts/NAME: an iamcredentials or key call's subject
      name = found.group(1)
      if '@' in name:
        return gcp_project_of(name)
      return _UNKNOWN  # its numeric unique id
    if '@' in target and '/' not in target:
      return _OUTSIDE  # a member without its kind prefix, as some exports write them
  return None


def _same_project(a: str, b: str) -> Optional[bool]:
  """Whether two GCP projects are the same; None when one is a number and the other an id."""
  if a == b:
    return True
  if a.isdigit() != b.isdigit():
    return None
  return False


def _marked(resource: str) -> Tuple[str, List[str]]:
  base, sep, listed = resource.partition(SHARED_WITH)
  if not sep:
    return resource, []
  return base, [t for t in listed.split(',') if t and not t.startswith('+')]


# -- the conditions: each returns (qualifying resources, whether some sample could not be told) --

Samples = Sequence[Tuple]


def _public(provider: str, identity: str, samples: Samples) -> Tuple[List[str], bool]:
  return [s[_RESOURCE] for s in samples if WORLD in _marked(s[_RESOURCE])[1]], False


def _cross_account(provider: str, identity: str, samples: Samples) -> Tuple[List[str], bool]:
  home = _home(provider, identity)
  hits, unknown = [], False
  for s in samples:
    base, targets = _marked(s[_RESOURCE])
    crossing = False
    for target in targets or [base]:
      owner = _owner(provider, target)
      if owner is None:
        continue
      if owner == _OUTSIDE:
        crossing = True
      elif not home:
        continue  # an identity of no account (an AWS service, a federated subject): only the world counts
      elif owner == _UNKNOWN:
        unknown = True
      elif provider == 'gcp':
        same = _same_project(owner, home)
        if same is None:
          unknown = True
        elif not same:
          crossing = True
      elif owner != home:
        crossing = True
    if crossing:
      hits.append(s[_RESOURCE])
  return hits, unknown


def _other_principal(provider: str, identity: str, samples: Samples) -> Tuple[List[str], bool]:
  hits, unknown = [], False
  k8s_self = identity.split(':')[2:4] if identity.startswith('system:serviceaccount:') else None
  for s in samples:
    resource = _marked(s[_RESOURCE])[0]
    other: Optional[bool]
    k8s = _K8S_SA_IN_PATH.search(resource)
    if k8s:  # Kubernetes (and GKE) paths: NS/serviceaccounts/NAME/token
      other = k8s_self is None or [k8s.group(1), k8s.group(2)] != k8s_self
    elif provider == 'gcp':  # projects/-/serviceAccounts/EMAIL (or its numeric id: cannot tell)
      gcp = _SA_IN_PATH.search(resource)
      name = gcp.group(1) if gcp else ''
      other = (name.lower() != identity.lower()) if '@' in name else None
    elif provider == 'aws':
      # iam:CreateAccessKey and friends name the user; none means the caller itself.
      user = identity.rpartition(':user/')[2].rpartition('/')[2] if ':user/' in identity else None
      target = resource.rpartition('/')[2]
      other = bool(target) and target != user
    else:
      other = None
    if other is None:
      unknown = True
    elif other:
      hits.append(s[_RESOURCE])
  return hits, unknown


_CHECKS: Dict[str, Callable[[str, str, Samples], Tuple[List[str], bool]]] = {
    'public': _public, 'cross_account': _cross_account, 'other_principal': _other_principal}


def _guess_provider(identity: str) -> str:
  if identity.startswith(('arn:', 'aws-service:')):
    return 'aws'
  if identity.startswith('system:'):
    return 'k8s'
  return 'gcp' if '@' in identity else 'aws'


def _rows_of(tab: Table, action_key: str, samples: Samples, identity: str) -> Tuple[str, Tuple[Row, ...]]:
  service, _, action = action_key.partition(':')
  logged = sorted({s[_PROVIDER] for s in samples})
  guess = _guess_provider(identity)
  order = logged or [guess] + [p for p in PROVIDERS if p != guess]
  for provider in order:
    rows = tab.match(provider, service, action)
    if rows:
      return provider, rows
  return '', ()


def _listed(values: Iterable[str]) -> List[str]:
  out: List[str] = []
  for v in values:
    if v and v not in out:
      out.append(v)
  return out[:MAX_LISTED]


def first_uses(agg, identity: str, known: Callable[[str], bool],
               table_: Optional[Table] = None) -> List[Dict]:
  """The high-impact uses in a window whose action the identity's history does not know.

  ``agg`` is the window's ``WindowAggregate``; ``known(action)`` is the history's
  ``knows('actions', action)`` for the window's action keys (``service:Action``). One dict per
  action, in action order: ``action``, ``what`` (the row whose condition holds), ``calls``
  (in the window), ``condition``, and for the reader ``provider``, ``verified`` (false when
  the condition could not be checked: see the module doc), ``targets`` (the resources that
  met it, or the action's resources for ``always``; at most 5) and ``succeeded`` (whether a
  sampled call succeeded; None without samples).
  """
  tab = table_ or table()
  # Most windows hold no listed action their history lacks: their evidence sample, which may
  # still be in parts to merge (WindowAggregate.merge lazy), is then never read.
  candidates = sorted(a for a in agg.actions if tab.listed(a) and not known(a))
  if not candidates:
    return []
  store = getattr(agg, 'evidence', None) or {}
  out = []
  for action in candidates:
    samples = store.get('a' + action) or ()
    provider, rows = _rows_of(tab, action, samples, identity)
    if not rows:
      continue
    chosen, verified, targets = None, False, []
    for row in rows:
      if row.condition == 'always':
        chosen, verified, targets = row, True, [s[_RESOURCE] for s in samples]
        break
      if not samples:
        chosen = chosen or row  # nothing to check it on: kept, unverified
        continue
      hits, unknown = _CHECKS[row.condition](provider, identity, samples)
      if hits:
        chosen, verified, targets = row, True, hits
        break
      if unknown and chosen is None:
        chosen = row
    if chosen is None:
      continue
    out.append({'action': action, 'what': chosen.what, 'calls': agg.actions[action],
                'condition': chosen.condition, 'provider': provider, 'verified': verified,
                'targets': _listed(targets),
                'succeeded': any(not s[_ERROR] for s in samples) if samples else None})
  return out


# -- for the parsers: the shared-with marker -------------------------------------------------

def mark_shared(resource: str, targets: Sequence[str]) -> str:
  """``resource`` with its sharing targets appended (world first), fitted into what the
  window's evidence keeps; ``resource`` unchanged when there are none."""
  unique: List[str] = []
  for t in targets:
    t = t[:MAX_TARGET_TEXT]
    if t and t not in unique:
      unique.append(t)
  if not unique:
    return resource
  unique.sort(key=lambda t: t != WORLD)
  shown = unique[:MAX_TARGETS] + ([f'+{len(unique) - MAX_TARGETS}'] if len(unique) > MAX_TARGETS else [])
  suffix = SHARED_WITH + ','.join(shown)
  return resource[:MAX_RESOURCE_TEXT - len(suffix)] + suffix
