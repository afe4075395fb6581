"""The one runner of the child processes regpatch starts: the verify command, a restart
command, a docker credential helper, the demo's skopeo.

    result = children.run(["docker-credential-x", "get"], input=b"host:5000",
                          stdout=Capture(1 << 20), timeout=30)
    result.returncode, result.stdout.data, result.status()

What it guarantees:

- the child runs in a tree of its own (``regpatch.platform.spawn_tree``): a new session
  and process group on POSIX, a Job Object that ends on close on Windows;
- its output is read while it runs, in chunks, and only ``Capture.limit`` bytes of each
  stream are kept (the first, or the last); the rest is read and dropped, so a child that
  prints 512 MiB costs a few chunks of memory and never blocks on a full pipe. A stream
  without a ``Capture`` goes to the null device, or with ``inherit=True`` to this
  process's own (an interactive demo);
- the wait polls the stop flag (``regpatch.platform.stopflag``): on a stop request the
  whole tree is stopped (SIGTERM, then SIGKILL after ``kill_grace`` seconds; Windows ends
  the job), the child is reaped and ``Interrupted`` raised (exit 130/143); on ``timeout``
  the same, then ``ChildTimeout``;
- when the child exits by itself, what it left running in its tree is killed
  (``leftovers="kill"``, the default) or left running (``"keep"``: a restart command may
  start the registry; a credential helper may start its agent). A pipe such a leftover
  still holds is read for ``DRAIN_GRACE`` seconds, then left to a background reader.

A child that cannot be started raises the ``OSError`` of the attempt. The registry that
``--restart process:`` starts is not a child of a run: it is started detached
(``regpatch.platform.spawn_detached``) because it must outlive regpatch.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Literal, Mapping, Optional

from regpatch.platform import shell_quote, spawn_tree
from regpatch.platform._base import Args, ChildTree, StrPath
from regpatch.platform.stopflag import wait

__all__ = ["Capture", "ChildTimeout", "Finished", "Output", "quote", "run", "run_or_raise"]

READ_CHUNK = 64 << 10
POLL_SECONDS = 0.2
DRAIN_GRACE = 2.0


@dataclass(frozen=True)
class Capture:
    """Keep ``limit`` bytes of a stream: the first (``"head"``) or the last (``"tail"``)."""

    limit: int
    keep: Literal["head", "tail"] = "head"


@dataclass(frozen=True)
class Output:
    data: bytes   # the bytes kept
    total: int    # every byte the child wrote to the stream

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    def lines(self) -> list[str]:
        """The non-empty lines kept, decoded (UTF-8, errors replaced) and stripped."""
        return [line.strip() for line in self.data.decode("utf-8", "replace").splitlines() if line.strip()]


NOTHING = Output(b"", 0)


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: Output = NOTHING
    stderr: Output = NOTHING

    def status(self) -> str:
        """'exited with code N', or 'was killed by signal N' (POSIX)."""
        if self.returncode < 0:
            return f"was killed by signal {-self.returncode}"
        return f"exited with code {self.returncode}"


class ChildTimeout(Exception):
    """The child did not finish within ``seconds``; its tree was killed and reaped."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"did not finish within {seconds:g} s")


def quote(arg: str) -> str:
    """``arg`` as one word of the shell ``run(..., shell=True)`` uses (sh, or cmd.exe)."""
    return shell_quote(arg)


class _Reader:
    """Reads a pipe to its end in a thread, keeping what ``capture`` says."""

    def __init__(self, pipe: IO[bytes], capture: Capture):
        self._pipe, self._capture = pipe, capture
        self._buf = bytearray()
        self._total = 0
        self._lock = threading.Lock()
        self.done = threading.Event()
        threading.Thread(target=self._run, name="child-output", daemon=True).start()

    def _run(self) -> None:
        fd = self._pipe.fileno()
        try:
            while True:
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    break
                with self._lock:
                    self._keep(chunk)
        except OSError:
            pass
        finally:
            self._pipe.close()
            self.done.set()

    def _keep(self, chunk: bytes) -> None:
        self._total += len(chunk)
        limit = self._capture.limit
        if self._capture.keep == "head":
            room = limit - len(self._buf)
            if room > 0:
                self._buf += chunk[:room]
        else:
            self._buf += chunk[-limit:] if limit else b""
            if len(self._buf) > limit:
                del self._buf[:len(self._buf) - limit]

    def result(self) -> Output:
        with self._lock:
            return Output(bytes(self._buf), self._total)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except OSError:  # (BrokenPipeError: the child did not read it all)
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def run(args: Args, *, shell: bool = False, input: Optional[bytes] = None,
        stdout: Optional[Capture] = None, stderr: Optional[Capture] = None,
        timeout: Optional[float] = None, env: Optional[Mapping[str, str]] = None,
        cwd: Optional[StrPath] = None, leftovers: Literal["kill", "keep"] = "kill",
        kill_grace: float = 5.0, inherit: bool = False) -> Finished:
    """Run ``args`` (a list, or with ``shell=True`` a command line for sh / cmd.exe) to its
    end; see the module docstring. Raises ``Interrupted``, ``ChildTimeout`` or ``OSError``."""
    pipe, other = subprocess.PIPE, (None if inherit else subprocess.DEVNULL)
    tree = spawn_tree(args, shell=shell, env=env, cwd=cwd,
                      stdin=pipe if input is not None else subprocess.DEVNULL,
                      stdout=pipe if stdout else other, stderr=pipe if stderr else other)
    proc = tree.proc
    readers = {name: _Reader(stream, capture) for name, stream, capture in
               (("stdout", proc.stdout, stdout), ("stderr", proc.stderr, stderr)) if stream is not None and capture}
    if input is not None and proc.stdin is not None:
        threading.Thread(target=_feed, args=(proc.stdin, input), name="child-input", daemon=True).start()
    try:
        _wait(tree, timeout)
    except BaseException:  # a stop request, the timeout, or this thread's own KeyboardInterrupt
        _end(tree, kill_grace)
        _drain(readers.values(), DRAIN_GRACE)
        raise
    if leftovers == "kill":
        tree.kill_all()
    code = tree.reap()
    if leftovers == "keep":
        tree.release()
    tree.close()
    _drain(readers.values(), DRAIN_GRACE)
    out = {name: reader.result() for name, reader in readers.items()}
    return Finished(code, out.get("stdout", NOTHING), out.get("stderr", NOTHING))


def run_or_raise(args: Args, *, what: str, error: Callable[[str], Exception],
                 show: Optional[Callable[[str], str]] = None, **options) -> Finished:
    """``run``, and a child that did not do its work said in one sentence, raised as
    ``error(sentence)`` (the caller's class of the error tree):

    - ``<what> did not finish within N s``;
    - ``<what> could not start: <why>``;
    - ``<what> exited with code N: <line>`` (or ``was killed by signal N``), the line being
      the last non-empty one of its stderr, else of its stdout, through ``show`` (the
      caller's redaction), cut at 300 characters.

    ``what`` names the child as the operator knows it, already redacted. The verify
    command, a restart command and the registry's garbage-collect say their failures
    through it; a credential helper (whose output is never shown) and ``systemctl`` (whose
    failures carry their own remedies) say theirs in their own words."""
    try:
        done = run(args, **options)
    except ChildTimeout as e:
        raise error(f"{what} did not finish within {e.seconds:g} s") from None
    except OSError as e:
        raise error(f"{what} could not start: {e.strerror or type(e).__name__}") from None
    if done.returncode != 0:
        lines = done.stderr.lines() or done.stdout.lines()
        last = (show or str)(lines[-1])[:300] if lines else "(no output)"
        raise error(f"{what} {done.status()}: {last}")
    return done


def _wait(tree: ChildTree, timeout: Optional[float]) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while not tree.exited():
        left = POLL_SECONDS if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise ChildTimeout(timeout or 0.0)
        wait(min(delay, left))  # Interrupted on a stop request
        delay = min(delay * 2, POLL_SECONDS)


def _end(tree: ChildTree, grace: float) -> None:
    """Stop the whole tree (the child gets ``grace`` seconds to leave), kill what is left, reap."""
    try:
        tree.stop_all()
        deadline = time.monotonic() + grace
        while not tree.exited() and time.monotonic() < deadline:
            time.sleep(0.02)
        tree.kill_all()
        tree.reap()
    finally:
        tree.close()


def _drain(readers: Iterable[_Reader], grace: float) -> None:
    deadline = time.monotonic() + grace
    for reader in readers:
        reader.done.wait(max(0.0, deadline - time.monotonic()))
