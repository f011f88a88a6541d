"""A real Pub/Sub server on 127.0.0.1 for local runs and tests: Google's pstest.

The gcloud emulator needs the Cloud SDK; Google's own in-memory Pub/Sub server,
``cloud.google.com/go/pubsub/pstest`` (the fake the Go client tests against),
ships as source in Debian's ``golang-google-cloud-dev`` and builds offline with
Debian's Go. ``tools/pstest/main.go`` wraps it in a command; this module builds
that command once (cached under ``~/.cache/postauth/pstest``, rebuilt when the
source changes), starts it and hands back ``host:port`` for
``PUBSUB_EMULATOR_HOST``. The real ``google-cloud-pubsub`` client and Beam's
Pub/Sub IO talk to it over gRPC exactly as they talk to Google.

``postauth pubsub-server`` runs it in the foreground for people trying the
streaming path by hand.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, 'tools', 'pstest', 'main.go')
GOCODE = '/usr/share/gocode'
PSTEST_PACKAGE = os.path.join(GOCODE, 'src', 'cloud.google.com', 'go', 'pubsub', 'pstest')
DEBIAN_PACKAGES = ('golang-go', 'golang-google-cloud-dev')
ENV = 'PUBSUB_EMULATOR_HOST'


class ServerUnavailable(RuntimeError):
  """The local server cannot be built or started here; the message says why."""


def cache_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'postauth', 'pstest')


def _go() -> Optional[str]:
  return shutil.which('go') or (os.path.exists('/usr/lib/go/bin/go') and '/usr/lib/go/bin/go') or None


def missing_prerequisites() -> List[str]:
  """Why the server cannot be built here ([] when it can)."""
  why = []
  if not os.path.exists(SOURCE):
    why.append(f'{SOURCE} is missing')
  if not _go():
    why.append('no Go toolchain (Debian package golang-go)')
  if not os.path.isdir(PSTEST_PACKAGE):
    why.append(f'no pstest source at {PSTEST_PACKAGE} (Debian package golang-google-cloud-dev)')
  return why


def build(verbose: bool = False) -> str:
  """The path of the pstest binary, building it if its source changed (GOPATH mode, offline)."""
  why = missing_prerequisites()
  if why:
    raise ServerUnavailable('cannot build the local Pub/Sub server: ' + '; '.join(why)
                            + f' -- install with: apt-get install -y {" ".join(DEBIAN_PACKAGES)}')
  with open(SOURCE, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  out_dir = cache_dir()
  binary = os.path.join(out_dir, f'pstest-{digest}')
  if os.path.exists(binary):
    return binary
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as gopath:
    pkg = os.path.join(gopath, 'src', 'postauth-pstest')
    os.makedirs(pkg)
    shutil.copy(SOURCE, pkg)
    env = dict(os.environ, GOPATH=f'{gopath}:{GOCODE}', GO111MODULE='off', GOPROXY='off',
               GOFLAGS='', GOCACHE=os.path.join(out_dir, 'gocache'))
    tmp_binary = os.path.join(gopath, 'pstest')
    if verbose:
      print(f'building the local Pub/Sub server (pstest) into {binary} ...', file=sys.stderr, flush=True)
    done = subprocess.run([_go(), 'build', '-o', tmp_binary, 'postauth-pstest'], env=env,
                          capture_output=True, text=True)
    if done.returncode:
      raise ServerUnavailable(f'go build of {SOURCE} failed: {done.stderr.strip()[-2000:]}')
    os.replace(tmp_binary, binary)  # atomic: concurrent builders never see a partial binary
  return binary


class LocalPubSub:
  """A running pstest process; ``host`` is what PUBSUB_EMULATOR_HOST must be set to."""

  def __init__(self, binary: Optional[str] = None, start_timeout: float = 20.0):
    self.binary = binary or build()
    self.proc = subprocess.Popen([self.binary], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)
    self.host = self._read_address(start_timeout)

  def _read_address(self, timeout: float) -> str:
    found: List[str] = []

    def read():
      line = self.proc.stdout.readline()
      found.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    line = found[0] if found else ''
    if not line.startswith(ENV + '='):
      self.stop()
      err = self.proc.stderr.read() if self.proc.stderr else ''
      raise ServerUnavailable(f'pstest did not report its address within {timeout}s: {line!r} {err[-500:]}')
    return line.split('=', 1)[1]

  @property
  def running(self) -> bool:
    return self.proc.poll() is None

  def stop(self, timeout: float = 10.0) -> None:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    for stream in (self.proc.stdout, self.proc.stderr):
      if stream:
        stream.close()

  def env(self) -> dict:
    """os.environ with PUBSUB_EMULATOR_HOST pointing at this server (for subprocesses)."""
    return dict(os.environ, **{ENV: self.host})

  def __enter__(self) -> 'LocalPubSub':
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


@contextlib.contextmanager
def emulator_host(host: str) -> Iterator[None]:
  """Points google-cloud-pubsub clients created inside the block at ``host``."""
  old = os.environ.get(ENV)
  os.environ[ENV] = host
  try:
    yield
  finally:
    if old is None:
      os.environ.pop(ENV, None)
    else:
      os.environ[ENV] = old


def create_topic(topic: str) -> None:
  """Creates ``projects/P/topics/T`` (no error if it exists)."""
  from google.api_core.exceptions import AlreadyExists
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient()
  try:
    publisher.create_topic(name=topic)
  except AlreadyExists:
    pass


def create_subscription(subscription: str, topic: str, ack_deadline_seconds: int = 60) -> None:
  """Creates a pull subscription with an explicit ack deadline (pstest rejects the default 0)."""
  from google.api_core.exceptions import AlreadyExists
  from google.cloud import pubsub_v1
  with pubsub_v1.SubscriberClient() as subscriber:
    try:
      subscriber.create_subscription(name=subscription, topic=topic,
                                     ack_deadline_seconds=ack_deadline_seconds)
    except AlreadyExists:
      pass


def main(argv: Optional[List[str]] = None) -> int:
  """``postauth pubsub-server``: build, start, print the export line, serve until Ctrl-C."""
  ap = argparse.ArgumentParser(
      prog='postauth pubsub-server',
      description='Start a local in-memory Pub/Sub server (Google\'s pstest) for the streaming path.')
  ap.add_argument('--topic', action='append', default=[],
                  help='Create this topic (projects/P/topics/T) at start; repeatable.')
  ap.add_argument('--subscription', action='append', default=[],
                  help='Create SUBSCRIPTION=TOPIC at start (ack deadline 60 s); repeatable.')
  a = ap.parse_args(argv)
  try:
    server = LocalPubSub(build(verbose=True))
  except ServerUnavailable as e:
    print(f'postauth pubsub-server: {e}', file=sys.stderr)
    return 1
  with server, emulator_host(server.host):
    for topic in a.topic:
      create_topic(topic)
    for spec in a.subscription:
      sub, _, topic = spec.partition('=')
      if not topic:
        print(f'postauth pubsub-server: --subscription needs SUBSCRIPTION=TOPIC, got {spec!r}', file=sys.stderr)
        return 2
      create_topic(topic)
      create_subscription(sub, topic)
    # Ctrl-C is handled from the moment the export line says the server is ready: a caller may
    # use it and stop the server at once (a handler set after the line raced such a caller).
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, lambda *_: stop.set())
    print(f'export {ENV}={server.host}', flush=True)
    print('# local Pub/Sub server running (in memory); Ctrl-C stops it', file=sys.stderr, flush=True)
    while not stop.is_set() and server.running:
      stop.wait(0.5)
    if not server.running:
      print('postauth pubsub-server: the server exited', file=sys.stderr)
      return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
