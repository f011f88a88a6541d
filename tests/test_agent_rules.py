"""The rules on what the agent join derives (transforms/agent_rules.py), on windows and histories
built from events the way the pipeline builds them."""
from __future__ import annotations

from postauth.domain.event import Event
from postauth.domain.window import WindowAggregate
from postauth.models.profile import IdentityProfile
from postauth.transforms.agent_rules import (agent_credential_used_outside_agent, agent_tool_caused_unusual_call,
                                             agent_tool_without_cloud_call)
from postauth.transforms.judgment import judge
from postauth.transforms.windowing import IdentityWindow

T0 = 1_793_836_800.0  # 2026-11-05T00:00:00Z
AGENT = 'agent-x'


def _event(t, service, action, category='data_read', resource='', ip='10.1.0.5', ua='Boto3/1.34.0 Botocore/1.34.0',
           provider='aws', eid=None):
  return Event(eid or f'{action}-{t}', t, AGENT, 'ai_agent', AGENT, '', provider, service, action, category, resource,
               'us-east-1', ip, ua, True, '', category == 'data_read', 'f#1')


def _tool(t, tool, backed=True, **kw):
  """A tool call's span, and its backing marker when a record was behind it."""
  span = _event(t, 'genai', f'execute_tool:{tool}', 'auth_other', provider='otel', ip='', ua='agent/1.0', **kw)
  return [span] + ([span._replace(action=f'execute_tool:{tool}@cloud_call')] if backed else [])


def _window(events, start=T0):
  agg = WindowAggregate()
  for e in events:
    agg.add(e, 900)
  return IdentityWindow(AGENT, start, start + 3600, agg)


def _history(days=3):
  """Routine: summarize_thread (no cloud call), export_table (s3 reads and writes in the team's
  buckets), run_sql (always a record); a nightly job on the role outside tool calls."""
  profile = IdentityProfile()
  for d in range(days):
    for h in range(0, 24, 2):
      t = T0 - (d + 1) * 86400 + h * 3600
      events = (_tool(t, 'summarize_thread', backed=False)
                + _tool(t + 60, 'export_table')
                + [_event(t + 61, 's3', 'GetObject@export_table', resource='arn:aws:s3:::data-finance/t/1'),
                   _event(t + 62, 's3', 'PutObject@export_table', 'data_write', 'arn:aws:s3:::exports-finance/o/1')]
                + _tool(t + 120, 'run_sql')
                + [_event(t + 121, 'athena', 'StartQueryExecution@run_sql', 'compute_launch', 'wg/finance')]
                + ([_event(t + 300, 'glue', 'GetTable@no_tool_call', resource='db/t', ip='10.2.0.9')] if h == 2 else []))
      w = _window(events, t)
      profile.update(w.agg, w.window_end)
  return profile


HISTORY = _history()


def test_a_harmless_tool_reading_secrets_is_high_and_pages():
  events = (_tool(T0 + 10, 'summarize_thread')
            + [_event(T0 + 11, 'secretsmanager', 'GetSecretValue@summarize_thread', 'secret_access', 'prod/db')])
  w = _window(events)
  reason = agent_tool_caused_unusual_call(w, {}, HISTORY, None)
  assert reason['severity'] == 'high' and reason['actions'] == ['secretsmanager:GetSecretValue@summarize_thread']
  assert judge(w, {}, HISTORY, None, None, [reason]).pages()
  # the same call through a tool the agent never used before is left to the history's novelty
  assert agent_tool_caused_unusual_call(_window(events[:1] + [events[-1]._replace(action='GetSecretValue@new_tool')]),
                                        {}, HISTORY, None) is None


def test_usual_calls_on_another_team_s_buckets_are_flagged_and_own_ones_are_not():
  own = _tool(T0 + 10, 'export_table') + [
      _event(T0 + 11, 's3', 'GetObject@export_table', resource='arn:aws:s3:::data-finance/t/9'),
      _event(T0 + 12, 's3', 'PutObject@export_table', 'data_write', 'arn:aws:s3:::exports-finance/o/9')]
  assert agent_tool_caused_unusual_call(_window(own), {}, HISTORY, None) is None
  out = _tool(T0 + 10, 'export_table') + [
      _event(T0 + 11, 's3', 'GetObject@export_table', resource='arn:aws:s3:::data-marketing/t/1'),
      _event(T0 + 12, 's3', 'PutObject@export_table', 'data_write', 'arn:aws:s3:::dropbox-3f2a/o/1')]
  reason = agent_tool_caused_unusual_call(_window(out), {}, HISTORY, None)
  assert reason['severity'] == 'high' and 'dropbox-3f2a' in reason['detail'] and 'data-marketing' in reason['detail']


def test_the_credential_outside_a_tool_call_from_a_new_place_is_high_and_a_known_job_is_quiet():
  stolen = [_event(T0 + 10 + i, 's3', 'ListBuckets@no_tool_call', 'enumerate', ip='203.0.113.7', ua='aws-cli/2.15.0')
            for i in range(3)]
  reason = agent_credential_used_outside_agent(_window(stolen), {}, HISTORY, None)
  assert reason['severity'] == 'high' and '203.0.113.0/24' in reason['detail'] and 'aws-cli' in reason['detail']
  routine = [_event(T0 + 10, 'glue', 'GetTable@no_tool_call', resource='db/t', ip='10.2.0.9')]
  assert agent_credential_used_outside_agent(_window(routine), {}, HISTORY, None) is None
  rollout = [_event(T0 + 10, 'glue', 'GetPartitions@no_tool_call', resource='db/t', ip='10.2.0.9')]
  assert agent_credential_used_outside_agent(_window(rollout), {}, HISTORY, None) is None
  secret = [_event(T0 + 10, 'secretsmanager', 'GetSecretValue@no_tool_call', 'secret_access', ip='10.2.0.9')]
  assert agent_credential_used_outside_agent(_window(secret), {}, HISTORY, None)['severity'] == 'medium'


def test_a_tool_that_always_made_a_record_answering_without_one():
  calls = _tool(T0 + 10, 'run_sql', backed=False) + _tool(T0 + 20, 'run_sql', backed=False)
  reason = agent_tool_without_cloud_call(_window(calls), {}, HISTORY, None)
  assert reason['actions'] == ['genai:execute_tool:run_sql'] and '2 of 2' in reason['detail']
  # a tool that never makes one, and a tool too new to know, are silent
  assert agent_tool_without_cloud_call(_window(_tool(T0 + 10, 'summarize_thread', backed=False)), {}, HISTORY, None) is None
  assert agent_tool_without_cloud_call(_window(_tool(T0 + 10, 'new_tool', backed=False)), {}, HISTORY, None) is None
  backed = _tool(T0 + 10, 'run_sql') + [_event(T0 + 11, 'athena', 'StartQueryExecution@run_sql', 'compute_launch')]
  assert agent_tool_without_cloud_call(_window(backed), {}, HISTORY, None) is None


def test_no_history_no_agent_rule():
  w = _window(_tool(T0, 'run_sql', backed=False) + [_event(T0 + 1, 's3', 'ListBuckets@no_tool_call', 'enumerate')])
  for rule in (agent_credential_used_outside_agent, agent_tool_caused_unusual_call, agent_tool_without_cloud_call):
    assert rule(w, {}, None, None) is None and rule(w, {}, IdentityProfile(), None) is None
