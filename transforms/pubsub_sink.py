"""Publish records to a Pub/Sub topic, retrying with backoff, never dropping one silently.

Beam's ``WriteToPubSub`` fails the bundle on the first publish error. A findings
sink must neither crash the job over a missing topic nor lose findings: each
message is published with the real ``google-cloud-pubsub`` client; transient
errors (server unavailable, deadline, quota) are retried with exponential
backoff; a message that still fails (or fails permanently: the topic does not
exist, the message is over Pub/Sub's 10 MB limit, which the client refuses before
sending) leaves on the ``failed_publish`` output as a dead letter that keeps the
reason and the message body. For the dead-letter sink itself there is nowhere
further to route it: it goes to the last-resort file (``transforms/last_resort.py``),
so no bundle is retried forever over one message.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from postauth.transforms.last_resort import LastResort
from postauth.transforms.parse import dead_letter

FAILED = 'failed_publish'
_LOG = logging.getLogger(__name__)

# A message: its body and its attributes (str -> str, for subscription filters).
Message = Tuple[bytes, Dict[str, str]]


def _transient(error: BaseException) -> bool:
  from concurrent.futures import TimeoutError as FutureTimeout
  from google.api_core import exceptions as gexc
  return isinstance(error, (FutureTimeout, TimeoutError, gexc.ServiceUnavailable, gexc.DeadlineExceeded,
                            gexc.ResourceExhausted, gexc.Aborted, gexc.InternalServerError,
                            gexc.Unknown, gexc.Cancelled, gexc.RetryError))


class _PublishBatchFn(beam.DoFn):
  """A batch of records -> Pub/Sub; failures after retries -> ``failed_publish`` dead letters,
  or with ``last_resort`` (the dead-letter sink) the last-resort file."""

  def __init__(self, topic: str, to_message: Callable[[Any], Message], retries: int,
               backoff: float, timeout: float, last_resort: Optional[str]):
    self._topic = topic
    self._to_message = to_message
    self._retries = max(1, retries)
    self._backoff = backoff
    self._timeout = timeout
    self._last_resort = LastResort(last_resort, f'pubsub://{topic}') if last_resort else None
    self.published = Metrics.counter('postauth', 'messages_published')
    self.retried = Metrics.counter('postauth', 'publish_retries')
    self.failed = Metrics.counter('postauth', 'publish_failed')

  def setup(self):
    from google.cloud import pubsub_v1
    self._publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.01))

  def teardown(self):
    publisher = getattr(self, '_publisher', None)
    if publisher is not None:
      publisher.stop()

  def _attempt(self, items: List[Tuple[Any, Message]]) -> List[Tuple[Any, Message, BaseException]]:
    futures, failed = [], []
    for record, (data, attrs) in items:
      # retry=None: this DoFn owns the retry policy, so failures surface here, bounded.
      try:
        futures.append((record, (data, attrs), self._publisher.publish(
            self._topic, data, retry=None, timeout=self._timeout, **attrs)))
      except Exception as e:  # refused before sending (MessageTooLargeError): never retried
        failed.append((record, (data, attrs), e))
    for record, message, future in futures:
      try:
        future.result(timeout=self._timeout)
        self.published.inc()
      except Exception as e:  # every failure is handled: retried or dead-lettered
        failed.append((record, message, e))
    return failed

  def process(self, batch: List[Any]):
    pending = [(record, self._to_message(record)) for record in batch]
    delay = self._backoff
    attempts = 0
    while pending:
      attempts += 1
      failed = self._attempt(pending)
      transient = [f for f in failed if _transient(f[2])]
      yield from self._give_up([f for f in failed if not _transient(f[2])], attempts)
      if transient and attempts >= self._retries:
        yield from self._give_up(transient, attempts)
        return
      if transient:
        self.retried.inc(len(transient))
        _LOG.warning('publish to %s: %d of %d messages failed (%s: %s); retry %d in %.2fs',
                     self._topic, len(transient), len(pending), type(transient[0][2]).__name__,
                     str(transient[0][2])[:200], attempts, delay)
        time.sleep(delay)
        delay = min(delay * 2, 60.0)
      pending = [(r, m) for r, m, _ in transient]

  def _give_up(self, failed, attempts: int):
    refused = []
    for record, (data, attrs), error in failed:
      self.failed.inc()
      kind = 'transient' if _transient(error) else 'permanent'
      reason = (f'publish to {self._topic} failed ({kind}) after {attempts} attempt(s): '
                f'{type(error).__name__}: {error}')[:1000]
      if self._last_resort is not None:
        refused.append((data, reason))
        continue
      ref = f'pubsub:{self._topic}#{attrs.get("finding_id", "")}'
      yield beam.pvalue.TaggedOutput(FAILED, dead_letter(reason, ref, data, stage='sink'))
    if refused:
      self._last_resort.write(refused)


class PublishToPubSub(beam.PTransform):
  """Records -> one Pub/Sub message each; returns the ``failed_publish`` dead letters (none when
  ``last_resort`` names the file that takes them instead)."""

  def __init__(self, topic: str, to_message: Callable[[Any], Message], retries: int = 5,
               backoff: float = 0.5, timeout: float = 30.0, last_resort: Optional[str] = None,
               max_batch_size: int = 500):
    super().__init__()
    self._fn = _PublishBatchFn(topic, to_message, retries, backoff, timeout, last_resort)
    self._max_batch = max_batch_size

  def expand(self, records):
    return (records
            | 'Batch' >> beam.BatchElements(min_batch_size=1, max_batch_size=self._max_batch)
            | 'Publish' >> beam.ParDo(self._fn).with_outputs(FAILED, main='published'))[FAILED]


def finding_message(finding: Dict) -> Message:
  """A finding as a message: JSON body; attributes that subscription filters can select on."""
  attrs = {k: str(finding.get(k, ''))[:1024] for k in ('severity', 'identity', 'finding_id',
                                                       'model_version', 'identity_type')}
  attrs['score'] = f'{float(finding.get("score", 0.0)):.3f}'
  # One message per version (transforms/versions.py): a subscriber keeps the highest ``updates``
  # per finding_id; a pager subscribes with the filter attributes.page = "true".
  updates = int(finding.get('updates') or 0)
  attrs.update(updates=str(updates), update=str(updates > 0).lower(),
               page=str(bool(finding.get('page'))).lower(),
               severity_raised=str(bool(finding.get('severity_raised'))).lower())
  return json.dumps(finding, sort_keys=True).encode('utf-8'), attrs


def dead_letter_message(line: str) -> Message:
  """A dead-letter JSON line as a message; stage and reason as attributes."""
  try:
    doc = json.loads(line)
  except ValueError:
    doc = {}
  attrs = {'stage': str(doc.get('stage', ''))[:1024], 'reason': str(doc.get('reason', ''))[:1024]}
  return line.encode('utf-8'), attrs
