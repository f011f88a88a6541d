"""AI agents' tool calls joined to the audit log of the principals they run as.

An agent shows up twice: in its own OpenTelemetry spans (which tool it called, when) and in the
cloud audit log of the role or service account it runs as (which API calls that credential
made). The inventory's ``runs_as`` names an agent's principals; this step attributes each audit
record of such a principal to the agent's tool call in flight at the record's time, and derives
one event on the *agent's* identity per finding of the join, so the agent's windows, history,
features, rules and evidence see it like any event of its own (training runs the same step):

- a record made during a tool call: ``service:Action@tool`` (the record's own category,
  resource, network and client; ``tool_call`` = the call's ``trace_id/span_id``);
- a record made while no tool call of any agent running as the principal was in flight (the
  credential used outside the agent): ``service:Action@no_tool_call``, on each such agent;
- a tool call with records behind it, once: ``genai:execute_tool:T@cloud_call`` (beside the
  call's own event: a window's calls of T minus these are its calls that made no record).

Keys, strongest first: the record's ``acting_for`` (AWS ``sourceIdentity``), the agent id in its
user agent, the agent id as its session name; else time alone. When several calls were in
flight, any of them may have made the record: it names all their tools
(``dynamodb:GetItem@lookup_order|search_kb``), cites the call whose start is nearest before it
(``acting_for`` says ``time ambiguous:N``), and backs every one of them; calls of several agents
sharing the principal each get it.
A call's range is its span widened by ``skew`` on both sides (clocks differ; CloudTrail logs
whole seconds).

Grouping is per principal and ``window`` seconds of event time (a span is copied into every
window its widened range touches), so batch and streaming group the same records; streaming
holds the watermark at a group's earliest element until it fires, and a late firing emits only
what earlier firings of the window did not (state per principal-window, read once per firing).
A late record is joined as in batch; a late *span* cannot take back a record already emitted as
made outside any tool call (counted as ``join_changed_too_late``): spans come from the agent's
runtime within seconds, audit logs within minutes.
"""
from __future__ import annotations

import typing
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from postauth.domain.event import Event
from postauth.domain.tool_calls import CLOUD_CALL, NO_TOOL_CALL, TOOLS_JOINED, caused_action
from postauth.transforms.inventory import read_inventory
from postauth.transforms.packed import PackedStateCoder

SPAN_PROVIDER = 'otel'
JOIN_BASES = ('source_identity', 'user_agent', 'session_name', 'time')


class AgentPrincipals(typing.NamedTuple):
  """principal -> the agents running as it (sorted); empty when no agent has ``runs_as``."""
  agents_of: Dict[str, Tuple[str, ...]]

  @classmethod
  def from_rows(cls, rows: Iterable[Tuple[str, dict]]) -> 'AgentPrincipals':
    agents_of: Dict[str, List[str]] = {}
    for identity, row in rows:
      for principal in row.get('runs_as') or ():
        agents_of.setdefault(principal, []).append(identity)
    return cls({p: tuple(sorted(set(a))) for p, a in agents_of.items()})

  @classmethod
  def from_inventory(cls, path: Optional[str]) -> 'AgentPrincipals':
    """Read once when the job is built: whether the graph joins at all depends on it."""
    if not path or path.startswith('bq://'):
      return cls({})
    return cls.from_rows(read_inventory(path))

  def principals_of(self) -> Dict[str, Tuple[str, ...]]:
    out: Dict[str, List[str]] = {}
    for principal, agents in self.agents_of.items():
      for a in agents:
        out.setdefault(a, []).append(principal)
    return {a: tuple(sorted(p)) for a, p in out.items()}


def _tool(span: Event) -> str:
  return span.action.partition(':')[2] or span.action


def _range(span: Event, skew: float) -> Tuple[float, float]:
  return span.event_time - skew, span.event_time + span.duration + skew


def _strong_agent(call: Event, agents: Tuple[str, ...]) -> Tuple[Optional[str], str]:
  """The agent the record itself names, and by which key; (None, '') when it names none."""
  if call.acting_for in agents:
    return call.acting_for, 'source_identity'
  for agent in agents:
    if agent in call.user_agent:
      return agent, 'user_agent'
  session = call.principal_raw.rsplit('/', 1)[-1]
  if session in agents:
    return session, 'session_name'
  return None, ''


def _derived(call: Event, agent: str, action: str, tool_call: str, basis: str,
             session: str = '') -> Event:
  return call._replace(identity=agent, identity_type='ai_agent', action=action, session_id=session,
                       duration=0.0, tool_call=tool_call, acting_for=basis)


def attribute(principal: str, agents: Tuple[str, ...], spans: List[Event],
              calls: List[Event], skew: float) -> Tuple[List[Event], Dict[str, int]]:
  """One principal-window's join: the derived events and counts by outcome (pure, so batch and
  streaming run the same code). Only ever adds: a later record adds an attribution and a
  backing, and takes nothing back, so a streaming job's late firings converge on the batch."""
  counts = dict.fromkeys(('attributed', 'ambiguous', 'outside', 'backed'), 0)
  spans = sorted({s.tool_call: s for s in spans if s.identity in agents}.values(),
                 key=lambda s: (s.event_time, s.tool_call))
  ranges = [(s, *_range(s, skew)) for s in spans]
  out: List[Event] = []
  backed: Dict[str, Event] = {}
  for call in sorted(calls, key=lambda c: (c.event_time, c.event_id)):
    named, key = _strong_agent(call, agents)
    live = [s for s, lo, hi in ranges if (named is None or s.identity == named) and lo <= call.event_time <= hi]
    if not live:
      counts['outside'] += 1
      for agent in (named,) if named else agents:
        out.append(_derived(call, agent, caused_action(call.action, NO_TOOL_CALL), '',
                            key or 'time'))
      continue
    basis = key or 'time'
    if len(live) > 1:
      counts['ambiguous'] += 1
      basis += f' ambiguous:{len(live)}'
    counts['attributed'] += 1
    for agent in sorted({s.identity for s in live}):
      theirs = [s for s in live if s.identity == agent]
      started = [s for s in theirs if s.event_time <= call.event_time] or theirs
      span = max(started, key=lambda s: (s.event_time, s.tool_call))
      by = TOOLS_JOINED.join(sorted({_tool(s) for s in theirs}))
      out.append(_derived(call, agent, caused_action(call.action, by), span.tool_call, basis,
                          span.session_id))
    for s in live:  # any of them may have made it: none is said to have made no record
      backed.setdefault(s.tool_call, s)
  for span in backed.values():
    counts['backed'] += 1
    out.append(backing(span))
  return out, counts


def backing(span: Event) -> Event:
  """The event saying a tool call has records behind it. Its own id: beside the span itself
  (same time, same window), an event sharing the span's id would tie with it wherever events are
  kept by (time, id), and which one a bounded evidence sample kept would depend on arrival order.
  A span whose range crosses join windows can be backed in several of them: the same event each
  time, which ``_BackedOnceFn`` lets through once (it keeps the span's duration until then, to
  know how long another can come, and emits it with none)."""
  return span._replace(action=caused_action(span.action, CLOUD_CALL), acting_for='time',
                       event_id=f'{span.event_id}@{CLOUD_CALL}')


def _is_backing(e: Event) -> bool:
  return e.event_id.endswith(f'@{CLOUD_CALL}')


def _derived_key(e: Event) -> Tuple[str, str, str]:
  return e.identity, e.event_id, e.action


class _KeyForJoin(beam.DoFn):
  """Spans of joined agents (one copy per principal and window touched) and records of their
  principals, keyed by principal; every other event is not joined."""

  def __init__(self, principals: AgentPrincipals, skew: float, window_seconds: int):
    self._agents_of = principals.agents_of
    self._principals_of = principals.principals_of()
    self._skew = skew
    self._window = window_seconds

  def process(self, e: Event) -> Iterator:
    if e.provider == SPAN_PROVIDER:
      principals = self._principals_of.get(e.identity)
      if not principals or not e.tool_call:
        return
      start, end = _range(e, self._skew)
      first = int(start // self._window) * self._window
      for w in range(first, int(end // self._window) * self._window + 1, self._window):
        stamp = max(float(w), start)
        for principal in principals:
          yield window.TimestampedValue((principal, ('span', e)), stamp)
    elif e.identity in self._agents_of:
      yield window.TimestampedValue((e.identity, ('call', e)), e.event_time)


class _AttributeFn(beam.DoFn):
  """(principal, [('span'|'call', Event)]) in a join window -> derived events at their own times.

  Streaming (``_AttributeOnceFn``): a late firing holds only the late elements; the window's
  earlier ones and what they emitted are in state, so the window is joined whole again and only
  what is new is emitted. A record emitted as outside that a late span would now explain cannot
  be taken back: counted, not re-emitted."""

  def __init__(self, principals: AgentPrincipals, skew: float):
    self._agents_of = principals.agents_of
    self._skew = skew
    self._counters = {k: Metrics.counter('postauth', f'join_{k}') for k in ('attributed', 'ambiguous', 'outside')}
    self._changed = Metrics.counter('postauth', 'join_changed_too_late')

  def _join(self, kv) -> List[Event]:
    principal, items = kv
    spans = [e for kind, e in items if kind == 'span']
    calls = [e for kind, e in items if kind == 'call']
    derived, counts = attribute(principal, self._agents_of.get(principal, ()), spans, calls, self._skew)
    for k, n in counts.items():
      if n and k != 'backed':  # counted where each backed call is let through once
        self._counters[k].inc(n)
    return derived

  def process(self, kv) -> Iterator:
    for e in self._join(kv):
      yield window.TimestampedValue(e, e.event_time)


class _KeyByJoinWindow(beam.DoFn):
  """(principal, elements) of a join window's firing -> ((principal, window end), elements)."""

  def process(self, kv, w=beam.DoFn.WindowParam):
    yield (kv[0], int(w.end.micros // 1_000_000)), list(kv[1])


class _AttributeOnceFn(_AttributeFn):
  """Streaming, in the global window, keyed by (principal, join window end).

  Why not state in the join window itself: the windows discard (an accumulating grouping on
  Prism holds the watermark, and every finding downstream, until the window expires), and on
  Prism 2.77 a discarding window's late firing reached a stateful step with that window's state
  already gone. Here the state lives until the window can fire no more (end + lateness)."""

  SEEN = ReadModifyWriteStateSpec('seen', PackedStateCoder())  # the window's elements so far
  EMITTED = ReadModifyWriteStateSpec('emitted', PickleCoder())
  DONE = TimerSpec('done', TimeDomain.WATERMARK)

  def __init__(self, principals: AgentPrincipals, skew: float, allowed_lateness: int):
    super().__init__(principals, skew)
    self._lateness = allowed_lateness

  def process(self, kv, seen=beam.DoFn.StateParam(SEEN), emitted=beam.DoFn.StateParam(EMITTED),
              done_timer=beam.DoFn.TimerParam(DONE)) -> Iterator:
    (principal, end), items = kv
    items = (seen.read() or []) + list(items)
    seen.write(items)
    done_timer.set(Timestamp.of(end + self._lateness + 1))
    done: FrozenSet = emitted.read() or frozenset()
    derived = self._join((principal, items))
    seen_ids = {(k[0], k[1]) for k in done}
    fresh = []
    for e in derived:
      key = _derived_key(e)
      if key in done:
        continue
      if (e.identity, e.event_id) in seen_ids:
        self._changed.inc()
        continue
      fresh.append(e)
    if fresh:
      emitted.write(done | {_derived_key(e) for e in fresh})
    for e in fresh:
      yield window.TimestampedValue(e, e.event_time)

  @on_timer(DONE)
  def forget(self, seen=beam.DoFn.StateParam(SEEN), emitted=beam.DoFn.StateParam(EMITTED)):
    seen.clear()
    emitted.clear()


class _BackedOnceFn(beam.DoFn):
  """((agent, backing id), (backing event, its span's range end)) -> the backing event once, with
  no duration (a record's, like every derived event).

  A span is copied into every join window its range touches, and each window with a record
  behind it backs it: the same event from each. Global window, keyed by the event: the first is
  emitted, later ones are dropped until no join window of the span can fire any more (the end of
  the last one plus the allowed lateness), in batch and in streaming alike."""

  EMITTED = ReadModifyWriteStateSpec('emitted', PickleCoder())
  FORGET = TimerSpec('forget', TimeDomain.WATERMARK)

  def __init__(self, window_seconds: int, allowed_lateness: int):
    self._window = window_seconds
    self._lateness = allowed_lateness
    self._backed = Metrics.counter('postauth', 'join_backed')

  def process(self, kv, emitted=beam.DoFn.StateParam(EMITTED), forget=beam.DoFn.TimerParam(FORGET)) -> Iterator:
    event, range_end = kv[1]
    last_window_end = (int(range_end // self._window) + 1) * self._window
    forget.set(Timestamp.of(last_window_end + self._lateness + 1))
    if emitted.read():
      return
    emitted.write(True)
    self._backed.inc()
    yield window.TimestampedValue(event._replace(duration=0.0), event.event_time)

  @on_timer(FORGET)
  def forget(self, emitted=beam.DoFn.StateParam(EMITTED)):
    emitted.clear()


class JoinAgentCalls(beam.PTransform):
  """Events -> the same events plus the join's derived events on the agents' identities.

  With no agent declaring ``runs_as`` the input passes through unchanged (no step is added)."""

  def __init__(self, principals: AgentPrincipals, skew: float = 2.0, window_seconds: int = 300,
               allowed_lateness: int = 0):
    super().__init__()
    if window_seconds <= 0 or skew < 0:
      raise ValueError('the join window must be > 0 and the clock skew >= 0')
    self._principals = principals
    self._skew = skew
    self._window = window_seconds
    self._lateness = allowed_lateness

  def expand(self, events):
    if not self._principals.agents_of:
      return events
    keyed = events | 'KeyByPrincipal' >> beam.ParDo(_KeyForJoin(self._principals, self._skew, self._window))
    if events.is_bounded:
      derived = (keyed
                 | 'JoinWindows' >> beam.WindowInto(window.FixedWindows(self._window))
                 | 'GroupByPrincipal' >> beam.GroupByKey()
                 | 'Attribute' >> beam.ParDo(_AttributeFn(self._principals, self._skew)).with_output_types(Event))
    else:  # a firing per late element, with only what is new; state keeps the earlier ones
      late = dict(trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                  accumulation_mode=trigger.AccumulationMode.DISCARDING,
                  timestamp_combiner=window.TimestampCombiner.OUTPUT_AT_EARLIEST,
                  allowed_lateness=Duration(seconds=self._lateness))
      derived = (keyed
                 | 'JoinWindows' >> beam.WindowInto(window.FixedWindows(self._window), **late)
                 | 'GroupByPrincipal' >> beam.GroupByKey()
                 | 'ByPrincipalWindow' >> beam.ParDo(_KeyByJoinWindow()).with_output_types(
                     typing.Tuple[typing.Tuple[str, int], typing.List[typing.Any]])
                 | 'JoinStateGlobal' >> beam.WindowInto(window.GlobalWindows())
                 | 'Attribute' >> beam.ParDo(_AttributeOnceFn(self._principals, self._skew, self._lateness))
                 .with_output_types(Event))
    derived = derived | 'BackToGlobal' >> beam.WindowInto(window.GlobalWindows())
    attributed, backings = derived | 'SplitBackings' >> beam.Partition(lambda e, _: int(_is_backing(e)), 2)
    skew = self._skew
    once = (backings
            | 'KeyBySpan' >> beam.Map(lambda e: ((e.identity, e.event_id), (e, _range(e, skew)[1])))
            .with_output_types(typing.Tuple[typing.Tuple[str, str], typing.Tuple[Event, float]])
            | 'BackedOnce' >> beam.ParDo(_BackedOnceFn(self._window, self._lateness)).with_output_types(Event))
    return (events, attributed, once) | 'WithDerived' >> beam.Flatten()
