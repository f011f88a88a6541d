"""The flags the transforms read, as PipelineOptions subclasses (so Dataflow templates and
``--help`` see them): the sources, windows, detection and sinks.

Defined below ``pipeline/`` so a transform reads its own flags without reaching up a layer;
``pipeline/options.py`` re-exports every name here beside the job-only options (training,
retraining) and the checks that run before a job is submitted. Only Beam is imported.
"""
from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions


class EventOptions(PipelineOptions):
  """Where events come from and how they are read."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--events', dest='events', default=None,
                        help='Glob of event files (local, gs://, s3:// through Beam FileSystems).')
    parser.add_argument('--events-watch', dest='events_watch', default=None,
                        help='With --streaming: watch this glob (local, gs://, s3://) for new log files '
                             '(e.g. CloudTrail\'s S3 delivery, a GCS audit-log sink) and read each new file '
                             'once, with an event-time watermark from its records (see --watch-*).')
    parser.add_argument('--format', dest='format', default=None,
                        help='Force a log format instead of detecting it per record (e.g. cloudtrail).')
    parser.add_argument('--taxonomy-file', dest='taxonomy_files', action='append', default=None,
                        help='Extra CSV (provider,service,action,category) extending the action taxonomy; repeatable.')
    parser.add_argument('--dead-letters', dest='dead_letters', default=None,
                        help='Sink for records that could not be parsed and findings that could not be '
                             'delivered: a JSON-lines path, or any --sink URI (default: dead-letter.jsonl '
                             'beside the findings or model).')
    parser.add_argument('--max-record-bytes', dest='max_record_bytes', type=int, default=1 << 20,
                        help='A record larger than this is dead-lettered unparsed, with its first bytes, '
                             'size and SHA-256 (default 1048576; CloudTrail\'s own limit is far below '
                             'it; an OTLP/JSON batch line may take 64 MiB).')
    parser.add_argument('--max-gzip-bytes', dest='max_gzip_bytes', type=int, default=1 << 30,
                        help='A gzip file or message that would expand beyond this many bytes is one '
                             'dead letter, never decompressed further (default 1073741824).')
    parser.add_argument('--max-gzip-ratio', dest='max_gzip_ratio', type=float, default=200.0,
                        help='... nor beyond this many times its compressed size, once past '
                             '--max-record-bytes (default 200; audit logs compress 10-30x, a '
                             'decompression bomb about 1000x).')
    parser.add_argument('--max-clock-skew', dest='max_clock_skew', type=float, default=900.0,
                        help='A record dated more than this many seconds ahead of the wall clock '
                             '(a Pub/Sub timestamp attribute too) moves no watermark and goes to the '
                             'dead letters with reason time_ahead_of_clock (default 900). Times in '
                             'the past are never refused: a replay of an old day is far behind.')


class WindowOptions(PipelineOptions):
  """Event-time windowing per identity."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--window-size', dest='window_size', type=int, default=3600,
                        help='Sliding window length in seconds (default 3600).')
    parser.add_argument('--window-period', dest='window_period', type=int, default=900,
                        help='Sliding window period in seconds; must divide the size (default 900).')
    parser.add_argument('--allowed-lateness', dest='allowed_lateness', type=int, default=3600,
                        help='Streaming: seconds after the watermark passed an event\'s 15 min pane '
                             'during which the event still updates its windows (they are re-scored). '
                             'Default 3600: CloudTrail delivers about 5 min after the call on average, '
                             'with no guarantee and reported peaks of 45 min; 1 h covers those with '
                             'margin, at the cost of keeping each identity\'s window state 1 h longer. '
                             'Later events are not dropped silently: they are counted (events_late) '
                             'and written to the dead letters with reason "late" and their payload.')


class AgentJoinOptions(PipelineOptions):
  """The join of AI agents' tool-call spans to the audit log of the principals they run as."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--join-clock-skew', dest='join_clock_skew', type=float, default=2.0,
                        help='Seconds an audit record may fall outside a tool call\'s span and still be '
                             'attributed to it: the two clocks differ and CloudTrail logs whole seconds '
                             '(default 2). Only agents with a runs_as column in the inventory are joined.')
    parser.add_argument('--join-window', dest='join_window', type=int, default=300,
                        help='Event-time window (s) the join groups a principal\'s records and spans in; '
                             'streaming holds the watermark at most this long for it (default 300).')


class DetectOptions(PipelineOptions):
  """The detection job: model, inventory, findings."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--inventory', dest='inventory', default=None,
                        help='Identity inventory CSV (identity,identity_type,owner,team,environment,...).')
    parser.add_argument('--model-dir', dest='model_dir', default=None,
                        help='Model directory written by `postauth train` (uses its LATEST version).')
    parser.add_argument('--model-version', dest='model_version', default=None,
                        help='Score with this version instead of LATEST.')
    parser.add_argument('--findings', dest='findings', default=None,
                        help='JSON-lines path for findings.')
    parser.add_argument('--threshold', dest='threshold', type=float, default=3.0,
                        help='Calibrated score at which a window becomes a finding '
                             '(3 = rarer than 1 in 1,000 training windows of its cohort).')
    parser.add_argument('--replay-step', dest='replay_step', type=int, default=900,
                        help='With --streaming over files: event-time seconds released per watermark step.')
    parser.add_argument('--inventory-refresh', dest='inventory_refresh', type=float, default=300.0,
                        help='Streaming from an unbounded source: re-read the inventory every N seconds '
                             '(default 300; 0 reads it once). A file replay reads it once.')
    parser.add_argument('--model-refresh', dest='model_refresh', type=float, default=300.0,
                        help='Streaming from an unbounded source: re-read the model directory\'s LATEST '
                             'pointer every N seconds and switch to a newly promoted version without a '
                             'restart (default 300; 0 keeps the version loaded at start; ignored with '
                             '--model-version).')
    parser.add_argument('--allowlist', dest='allowlist', default=None,
                        help='JSON/JSON-lines allow-list of {identity, rule, action, resource, expires, '
                             'reason} entries whose matching reasons are suppressed (and counted).')
    parser.add_argument('--suppressed', dest='suppressed', default=None,
                        help='JSON-lines path for wholly suppressed findings '
                             '(default: suppressed.jsonl beside the findings).')
    parser.add_argument('--dedup-period', dest='dedup_period', type=float, default=21600.0,
                        help='Seconds within which repeats of the same identity and reasons fold into '
                             'one finding with an occurrence count (default 21600; 0 disables).')
    parser.add_argument('--disable-rules', dest='disabled_rules', default=None,
                        help='Comma-separated deterministic rules to turn off (out_of_scope, '
                             'disabled_identity_active, dormant_identity_revived, credential_created_by_nhi, '
                             'privilege_change_by_nhi, new_network_beside_usual, new_network_and_client, access_denied_sweep, '
                             'collect_and_send, '
                             'unregistered_identity, '
                             'fleet_change).')
    parser.add_argument('--fleet-change-identities', dest='fleet_change_identities', type=int, default=3,
                        help='Identities of one type that must make the same new action on the same day '
                             '(and at least 10%% of the type) for one fleet-change notice (default 3).')
    parser.add_argument('--corroboration-delay', dest='corroboration_delay', type=float, default=1800.0,
                        help='Seconds of event time a finding resting only on never-seen sensitive calls '
                             'waits for peers of its type making the same calls (then it is a low fleet '
                             'change, not a page); evidence no rollout explains never waits '
                             '(default 1800; 0 asks only peers seen so far).')
    parser.add_argument('--corroboration-peers', dest='corroboration_peers', type=int, default=2,
                        help='Other identities of the type that must have made the same never-seen calls '
                             'within the day for a finding to be a fleet change (default 2).')
    parser.add_argument('--dormant-days', dest='dormant_days', type=float, default=30.0,
                        help='Silence, in days, after which activity raises dormant_identity_revived (default 30).')


class PubSubSourceOptions(PipelineOptions):
  """The streaming source: a Pub/Sub subscription or topic of raw log records (one per message)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--subscription', dest='subscription', default=None,
                        help='With --streaming: read records from this Pub/Sub subscription '
                             '(projects/P/subscriptions/S) instead of --events.')
    parser.add_argument('--topic', dest='topic', default=None,
                        help='With --streaming: read records from this Pub/Sub topic (projects/P/topics/T) '
                             'through a temporary subscription instead of --events.')
    parser.add_argument('--timestamp-attribute', dest='timestamp_attribute', default=None,
                        help='Message attribute holding the event time (RFC 3339 or epoch millis); it '
                             'drives the source watermark. Default: the publish time.')
    parser.add_argument('--dedup-seconds', dest='dedup_seconds', type=int, default=0,
                        help='Event-time span over which a redelivered or republished event (same '
                             'event id) is dropped; 0 = window size + allowed lateness, the longest a '
                             'duplicate could still change a window.')
    parser.add_argument('--direct-pubsub-watermark', dest='direct_pubsub_watermark',
                        choices=('event-time', 'wall-clock'), default='event-time',
                        help='DirectRunner only: the Pub/Sub source watermark. event-time (default) '
                             'follows --timestamp-attribute like Dataflow; wall-clock is Beam\'s local '
                             'default (every record older than now is late).')
    parser.add_argument('--watermark-max-delay', dest='watermark_max_delay', type=int, default=60,
                        help='DirectRunner event-time watermark: seconds of event-time disorder '
                             'tolerated (the watermark trails the newest event by this much).')
    parser.add_argument('--watermark-idle-seconds', dest='watermark_idle_seconds', type=float,
                        default=10.0,
                        help='DirectRunner event-time watermark: after this many seconds without '
                             'messages it advances to wall-clock time minus the max delay (at most '
                             '--watermark-idle-limit past the newest event), closing every open window. '
                             'Only once a message has been read: a job idle since its start keeps its '
                             'watermark, so records published later are not late.')
    parser.add_argument('--watermark-idle-limit', dest='watermark_idle_limit', type=int,
                        default=14400,
                        help='DirectRunner event-time watermark: an idle advance stops this many '
                             'seconds of event time past the newest event read (default 14400: past '
                             'every window, finding flush and file part of that event), so older logs '
                             'published after a quiet spell, e.g. a backfill, are not all late; 0 = '
                             'no limit (wall-clock time).')
    parser.add_argument('--pubsub-max-messages', dest='pubsub_max_messages', type=int, default=500,
                        help='Messages per pull (DirectRunner: per bundle; sdf reader: per pull, up '
                             'to 20 pulls per round while the backlog lasts).')
    parser.add_argument('--pubsub-pull-interval', dest='pubsub_pull_interval', type=float, default=1.0,
                        help='sdf reader: seconds between pull rounds once a pull came back short (default '
                             '1). Each round is a bundle every later step pays for on Prism and Flink; '
                             'a backlog is read without waiting (full pulls go on at once).')
    parser.add_argument('--pubsub-readers', dest='pubsub_readers', type=int, default=1,
                        help='sdf reader: pull loops on the subscription, each a part a runner can '
                             'run on its own worker. The watermark is the least of the parts\' and a '
                             'part moves only once it read a message: more than 1 only for a '
                             'subscription busy enough to feed every part.')
    parser.add_argument('--pubsub-reader', dest='pubsub_reader', choices=('auto', 'native', 'sdf'),
                        default='auto',
                        help='How Pub/Sub is read. native: Beam\'s ReadFromPubSub (Dataflow and the '
                             'DirectRunner only); sdf: postauth\'s splittable DoFn over synchronous '
                             'pull, acked at bundle finalization (Prism, Flink, FnApiRunner, '
                             'PortableRunner; docs/pubsub.md); auto (default): native on Dataflow '
                             'and the DirectRunners, sdf elsewhere. The --watermark-* flags apply '
                             'to both.')
    parser.add_argument('--pubsub-stop-idle', dest='pubsub_stop_idle', type=float, default=0.0,
                        help='sdf reader: end the source after this many seconds without a message '
                             'newer (in event time) than every one before -- redeliveries do not '
                             'count -- (every window then closes and the job finishes); 0 = never. For '
                             'backfills, benchmarks and tests.')
    parser.add_argument('--events-out', dest='events_out', default=None,
                        help='Streaming Pub/Sub: also write every event read, parsed and '
                             'deduplicated, as JSON lines (event_id, event_time, identity, action, '
                             'message ref) into files under this folder, one file per bundle, '
                             'written as soon as the bundle runs: an audit trail of what the job '
                             'counted.')


class WatchOptions(PipelineOptions):
  """The streaming source that watches a folder or bucket for new log files (--events-watch)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--watch-interval', dest='watch_interval', type=float, default=30.0,
                        help='--events-watch: seconds between two listings of the glob (default 30).')
    parser.add_argument('--watch-max-delay', dest='watch_max_delay', type=int, default=600,
                        help='--events-watch: the watermark trails the newest record read by this many '
                             'seconds of event time (default 600: CloudTrail writes a file about every '
                             '5 min per account and region, so files of several arrive out of order).')
    parser.add_argument('--watch-idle-seconds', dest='watch_idle_seconds', type=float, default=900.0,
                        help='--events-watch: after this many seconds without a new file the watermark '
                             'advances to wall-clock time minus --watch-max-delay (at most '
                             '--watch-idle-limit past the newest record), closing open windows; never '
                             'before the first file (default 900; 0 = never).')
    parser.add_argument('--watch-idle-limit', dest='watch_idle_limit', type=int, default=14400,
                        help='--events-watch: an idle advance stops this many seconds of event time past '
                             'the newest record read (default 14400), so older logs written after a quiet '
                             'spell are not all late; 0 = no limit.')
    parser.add_argument('--watch-stop-idle', dest='watch_stop_idle', type=float, default=0.0,
                        help='--events-watch: stop watching after this many seconds without a new file; '
                             'the watermark then goes to infinity, every window closes and the job ends '
                             '(backfills, tests; default 0 = watch forever).')


class SinkOptions(PipelineOptions):
  """Where findings go: any number of sinks chosen by URI."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--sink', dest='sinks', action='append', default=None,
                        help='Findings sink, repeatable or comma-separated: PATH.jsonl (JSON lines), '
                             'PATH.avro (Avro), pubsub://projects/P/topics/T or projects/P/topics/T '
                             '(one message per finding), bq://PROJECT:DATASET.TABLE (BigQuery). '
                             '--findings PATH adds a JSON-lines sink.')
    parser.add_argument('--publish-retries', dest='publish_retries', type=int, default=5,
                        help='Pub/Sub sinks: attempts per message before it goes to the dead letters.')
    parser.add_argument('--publish-backoff', dest='publish_backoff', type=float, default=0.5,
                        help='Pub/Sub sinks: first retry delay in seconds, doubled per attempt.')
    parser.add_argument('--publish-timeout', dest='publish_timeout', type=float, default=30.0,
                        help='Pub/Sub sinks: seconds to wait for one publish attempt.')
    parser.add_argument('--bigquery-method', dest='bigquery_method', default='STREAMING_INSERTS',
                        choices=('STREAMING_INSERTS', 'FILE_LOADS', 'STORAGE_WRITE_API'),
                        help='BigQuery sinks: WriteToBigQuery method (FILE_LOADS needs --temp_location '
                             'on GCS; STORAGE_WRITE_API needs Beam\'s Java expansion service).')
    parser.add_argument('--last-resort', dest='last_resort', default=None,
                        help='File (local, gs://, s3://) for dead letters the dead-letter sink refuses '
                             '(a Pub/Sub message over its size limit, a row BigQuery rejects), counted as '
                             'last_resort_records, so that no bundle is retried forever (default: '
                             'last-resort.jsonl beside the dead-letter file or the first findings file, '
                             'else under --temp_location, else in the working directory).')


class OptionsError(ValueError):
  """An invalid flag combination, reported before any job is submitted."""


class CommandParser(argparse.ArgumentParser):
  """A `postauth` command's own flags: a bad or missing one is an ``OptionsError`` (the CLI's one
  line, exit 2) instead of argparse's usage text; ``--help`` still prints the help."""

  def error(self, message):
    raise OptionsError(message)
