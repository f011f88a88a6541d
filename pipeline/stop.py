"""Stopping a running job on SIGINT (Ctrl-C) or SIGTERM without a traceback.

Why: a streaming ``postauth run`` only ends when it is stopped. Python turns Ctrl-C
into a ``KeyboardInterrupt`` raised wherever Beam's runner happens to be (a 20-line
traceback) and dies silently on SIGTERM (what ``kill``, systemd and Kubernetes
send), leaving partial output uncompacted. Inside ``stop_on_signals`` both signals
raise ``Interrupted`` in the main thread instead; the caller cancels the job
(``cancel``), flushes what the sinks hold, says what was processed and exits
128 + the signal number (130 for SIGINT, 143 for SIGTERM), as shells expect.

A second signal while stopping gets the default behaviour (a second Ctrl-C kills).
A signal the process inherited as ignored (``nohup``, a background job of a
non-interactive shell) stays ignored. Outside the main thread (the launcher's
detached runner calls the CLI from a worker) no handler can be installed and
nothing changes.

After a stop, the runner may leave a non-daemon thread blocked (seen with the
FnApiRunner running a watch: about one stop in six hung in Python's exit, waiting
for it); ``exit_code_after_stop`` gives such threads a grace period and then ends
the process with the exit code, once the output has been flushed and reported.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Iterator, Optional

_log = logging.getLogger('postauth.stop')

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
  """The job was asked to stop by a signal; ``detail`` says what was done before.

  A ``BaseException`` like ``KeyboardInterrupt``, so that the runner's own
  ``except Exception`` handlers do not swallow it.
  """

  def __init__(self, signum: int, detail: str = ''):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.detail = detail
    self.result = None  # the pipeline result, when the runner had returned one

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class _Watch:
  """What ``stop_on_signals`` yields: the signal received, if any, and ``reclaim``."""

  def __init__(self):
    self.received: Optional[int] = None
    self.reclaim = lambda: None



@contextlib.contextmanager
def stop_on_signals() -> Iterator[_Watch]:
  """Within the block, SIGINT/SIGTERM raise ``Interrupted`` (once) in the main thread."""
  watch = _Watch()
  if threading.current_thread() is not threading.main_thread():
    yield watch
    return
  previous = {}

  def restore():
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    previous.clear()

  def handler(signum, frame):
    if watch.received is not None:
      return
    watch.received = signum
    restore()  # a second signal: the default (or the caller's) behaviour
    quiet_shutdown()
    raise Interrupted(signum)

  for signum in SIGNALS:
    current = signal.getsignal(signum)
    if current is signal.SIG_IGN:
      continue
    previous[signum] = current
    signal.signal(signum, handler)

  def reclaim():
    # Beam's job server wrapper (Prism, portable runners) installs its own SIGINT handler
    # when it starts, which stops the job server at once (the SDK harness threads then
    # print tracebacks) before chaining to ours; put ours back on top. Its job server is
    # still stopped: by the cancel's cleanup, else by Beam's atexit hook.
    for signum in previous:
      if watch.received is None and signal.getsignal(signum) is not handler:
        signal.signal(signum, handler)

  watch.reclaim = reclaim
  try:
    yield watch
  except Interrupted:
    raise
  except BaseException as e:
    # The runner failed because of the signal (e.g. Ctrl-C reached Prism, a child process
    # in the same process group, before this handler ran): report it as the stop it was.
    if watch.received is not None:
      quiet_shutdown()
      raise Interrupted(watch.received) from e
    raise
  finally:
    restore()


def _postauth_only(record: logging.LogRecord) -> bool:
  return record.name.startswith('postauth')


def quiet_shutdown() -> None:
  """Silences the runner for the rest of the process, which is ending.

  Why: as the job is cancelled and its job server (Prism) stopped, the SDK harness
  threads still streaming to it die with gRPC ``UNAVAILABLE`` tracebacks, "Bundle
  Failed (pipeline canceled)" and "Error processing instruction" lines: the expected
  end of a cancelled job, not news for the user. From here on, the root handlers only
  pass postauth's own records, thread exceptions go to this module's DEBUG log, and so does
  what other threads print to stderr (Beam's SDK harness prints a bundle's traceback there
  directly, e.g. ``KeyError`` when the harness shut down the bundle's processor under it).
  """
  for h in logging.getLogger().handlers:
    if _postauth_only not in h.filters:
      h.addFilter(_postauth_only)
  if not isinstance(sys.stderr, _MainThreadOnly):
    sys.stderr = _MainThreadOnly(sys.stderr)

  def quiet(args):
    _log.debug('runner thread %s ended after the stop: %r',
               getattr(args.thread, 'name', '?'), args.exc_value)

  threading.excepthook = quiet


class _MainThreadOnly:
  """A stream that passes the main thread's writes and sends other threads' to the DEBUG log."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    if threading.current_thread() is threading.main_thread():
      return self._stream.write(text)
    if text.strip():
      _log.debug('runner thread output after the stop: %s', text.rstrip())
    return len(text)

  def __getattr__(self, name):  # flush, fileno, encoding, isatty...: the real stream's
    return getattr(self._stream, name)


def cancel(result) -> str:
  """Cancels a running pipeline result where the runner supports it; returns what happened."""
  if result is None:
    return 'job stopped'
  try:
    result.cancel()
    return 'job cancelled'
  except NotImplementedError:
    return 'this runner cannot cancel a job: it stops with the process'
  except Exception as e:  # the job may already be gone (e.g. Prism got the Ctrl-C too)
    _log.debug('cancel failed: %s', e)
    return f'job already stopped ({type(e).__name__})'


def exit_code_after_stop(stopped: Interrupted, grace: float = 5.0) -> int:
  """The exit code, once no runner thread can keep the process from exiting (else exits now)."""
  code = stopped.exit_code
  if threading.current_thread() is not threading.main_thread():
    return code
  deadline = time.monotonic() + grace
  for t in threading.enumerate():
    if t is not threading.current_thread() and not t.daemon:
      t.join(max(0.0, deadline - time.monotonic()))
  stuck = [t.name for t in threading.enumerate()
           if t is not threading.current_thread() and not t.daemon and t.is_alive()]
  if stuck:
    _log.info('runner threads still busy after the stop (%s): exiting with %d', ', '.join(stuck), code)
    try:
      atexit._run_exitfuncs()  # Beam stops its job servers (Prism) there: no orphan process
    except Exception as e:
      _log.debug('exit handlers: %s', e)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  return code
