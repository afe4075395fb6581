"""Streaming hash-while-copy: every byte regpatch stores is hashed as it is written."""

from __future__ import annotations

import errno
import os
import queue
import threading
from typing import BinaryIO, Callable, Optional, Protocol

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from regpatch import interrupt, platform
from regpatch.digest import CHUNK, Digest, new_hasher
from regpatch.errors import DigestMismatch, SizeMismatch


class Readable(Protocol):
    """What a copy reads from: a binary ``read(n)`` (a file, a member of an archive, a response body)."""

    def read(self, n: int = -1, /) -> bytes: ...


def copy_and_hash(
    src: Readable,
    dst: Optional[BinaryIO],
    *,
    what: str,
    expected: Optional[Digest] = None,
    expected_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
    hasher=None,
    already: int = 0,
) -> tuple[Digest, int]:
    """Read ``src`` to EOF once, hash it and write it to ``dst`` (if given).

    Fails at EOF (or as soon as the size is exceeded) with ``SizeMismatch`` or
    ``DigestMismatch`` naming ``what``, the expected and the actual values.
    ``hasher``/``already`` let a caller resume a hash over bytes already seen.
    With a ``dst``, reading, hashing and writing overlap in three threads (all
    three release the GIL), so a copy costs about as much as its slowest part.
    Memory use is a few chunks, whatever the size.
    """
    h = hasher or new_hasher()
    total = already

    def account(n: int) -> None:
        nonlocal total
        interrupt.check()  # a stop request ends the copy at this chunk boundary
        total += n
        if expected_size is not None and total > expected_size:
            raise SizeMismatch(what, expected_size, total)
        if progress:
            progress(n)

    if dst is None:  # (a reader thread for network bodies was measured: slower, GIL-bound)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = _readinto(src, buf)
            if not n:
                break
            h.update(view[:n])
            account(n)
    else:
        _pipelined_copy(src, dst, h, account)
    if expected_size is not None and total != expected_size:
        raise SizeMismatch(what, expected_size, total)
    actual = Digest("sha256", h.hexdigest())
    if expected is not None and actual != expected:
        raise DigestMismatch(what, expected, actual, total)
    return actual, total


_BUFFERS = 4


_DONE = object()


def _pipelined_copy(src, dst, h, account: Callable[[int], None]) -> None:  # noqa: C901  (3 threads, one hand-off)
    """reader thread -> (this thread: hash) -> writer thread, over a few reused buffers."""
    free: queue.Queue = queue.Queue()
    for _ in range(_BUFFERS):
        free.put(bytearray(CHUNK))
    filled: queue.Queue = queue.Queue()
    to_write: queue.Queue = queue.Queue()
    errors: list[BaseException] = []
    stop = threading.Event()
    write_failed = threading.Event()  # only a failed write stops the writes: bytes read before
    # a source error are still written (a resumable download keeps all that arrived)

    def reader() -> None:
        try:
            while not stop.is_set():
                buf = free.get()
                if buf is _DONE:
                    break
                n = _readinto(src, buf)
                filled.put((buf, n))
                if not n:
                    return
        except BaseException as e:  # handed to the hashing thread
            errors.append(e)
        filled.put((None, 0))

    def writer() -> None:
        try:
            while True:
                item = to_write.get()
                if item is _DONE:
                    return
                buf, n = item
                if not write_failed.is_set():
                    _write_all(dst, memoryview(buf)[:n])
                free.put(buf)
        except BaseException as e:
            errors.append(e)
            write_failed.set()
            stop.set()
            free.put(_DONE)

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    try:
        while True:
            buf, n = filled.get()
            if not n:  # EOF, or the reader/writer failed: raised below
                break
            h.update(memoryview(buf)[:n])
            account(n)
            to_write.put((buf, n))
    finally:
        stop.set()
        to_write.put(_DONE)
        free.put(_DONE)
        threads[1].join()
        threads[0].join(timeout=60)
    if errors:
        raise errors[0]


KERNEL_COPY_CHUNK = 16 << 20


_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def kernel_copy_and_hash(src_fd: int, dst_fd: int, *, what: str, expected: Optional[Digest],  # noqa: C901
                         # (the copier thread and the hashing loop share their state here, in one place)
                         expected_size: int,
                         progress: Optional[Callable[[int], None]] = None,
                         src_offset: Optional[int] = None) -> Optional[tuple[Digest, int]]:
    """Copy in the kernel (``platform.kernel_copy``: Linux's ``copy_file_range``) while hashing the DESTINATION.

    One thread copies; this thread hashes the bytes that landed in the
    destination right behind it (from the page cache), so what is verified is
    what was written. Returns None when the kernel cannot copy between these
    files (nothing written then): the caller falls back to ``copy_and_hash``.

    ``src_offset``: copy ``expected_size`` bytes from there (a member of an
    archive file); the bytes after them belong to something else and are not
    checked. Without it, the copy starts at the descriptor's position and one
    byte more than ``expected_size`` is a SizeMismatch.
    """
    if not platform.has_kernel_copy():
        return None
    copied = 0
    eof_extra = 0
    cond = threading.Condition()
    errors: list[BaseException] = []
    finished = False
    abandon = threading.Event()  # the hashing side failed or was interrupted: stop copying

    def copier() -> None:
        nonlocal copied, finished, eof_extra
        try:
            while copied < expected_size and not abandon.is_set():
                n = _copy_range(src_fd, dst_fd, min(KERNEL_COPY_CHUNK, expected_size - copied), copied)
                if n == 0:
                    break
                platform.start_writeback(dst_fd, copied, n)
                with cond:
                    copied += n
                    cond.notify()
            if copied == expected_size and src_offset is None:  # one more byte: the source is too long
                eof_extra = len(platform.pread(src_fd, 1, copied))
        except BaseException as e:
            errors.append(e)
        finally:
            with cond:
                finished = True
                cond.notify()

    def _copy_range(src: int, dst: int, n: int, done: int) -> int:
        return platform.kernel_copy(src, dst, n, None if src_offset is None else src_offset + done)

    try:  # probe: can the kernel copy here at all?
        first = _copy_range(src_fd, dst_fd, min(KERNEL_COPY_CHUNK, expected_size), 0) if expected_size else 0
    except OSError as e:
        if e.errno in _NO_KERNEL_COPY:
            return None
        raise
    copied = first
    h = new_hasher()
    t = threading.Thread(target=copier, daemon=True)
    t.start()
    hashed = 0
    try:
        while True:
            with cond:
                while hashed >= copied and not finished:
                    cond.wait()
                upto, done = copied, finished
            hashed = _hash_range(dst_fd, h, hashed, upto, f"the copy of {what}", progress)
            if done and hashed >= copied:
                break
    except BaseException:
        abandon.set()
        raise
    finally:
        t.join()
    if errors:
        raise errors[0]
    if copied != expected_size or eof_extra:
        actual_size = os.fstat(src_fd).st_size if eof_extra else copied
        raise SizeMismatch(what, expected_size, actual_size)
    actual = Digest("sha256", h.hexdigest())
    if expected is not None and actual != expected:
        raise DigestMismatch(what, expected, actual, copied)
    return actual, copied


def _hash_range(fd: int, h, start: int, end: int, what: str,
                progress: Optional[Callable[[int], None]], read_ahead: bool = False) -> int:
    """Hash bytes [start, end) of an open file by ``pread``; returns ``end``. A stop
    request ends it at a chunk boundary. Buffers are reused (``preadv`` into them):
    no allocation, and no page faults on fresh memory, per chunk. A long range is
    read by a second thread while this one hashes: copying 1.5 GiB out of the page
    cache costs about 0.7 s here, hashing it about 1.4 s, and both release the GIL,
    so the pair costs the hash alone (``read_ahead``: a whole stored file; not behind a
    kernel copy, where the copy is the bottleneck and a reader would only take CPU
    from it)."""
    if not read_ahead or end - start <= 2 * CHUNK:
        buf = bytearray(min(CHUNK, max(end - start, 1)))
        view = memoryview(buf)
        while start < end:
            n = platform.pread_into(fd, view[:min(len(buf), end - start)], start)
            if not n:
                raise OSError(errno.EIO, f"short read of {what}")
            h.update(view[:n])
            start += n
            interrupt.check()
            if progress:
                progress(n)
        return start
    free: queue.Queue = queue.Queue()
    for _ in range(_BUFFERS):
        free.put(bytearray(CHUNK))
    filled: queue.Queue = queue.Queue()
    stop = threading.Event()

    def reader() -> None:
        pos = start
        try:
            while pos < end and not stop.is_set():
                buf = free.get()
                if buf is _DONE:
                    return
                n = platform.pread_into(fd, memoryview(buf)[:min(CHUNK, end - pos)], pos)
                if not n:
                    raise OSError(errno.EIO, f"short read of {what}")
                filled.put((buf, n, None))
                pos += n
        except BaseException as e:  # handed to the hashing thread
            filled.put((None, 0, e))

    t = threading.Thread(target=reader, name="hash-reader", daemon=True)
    t.start()
    try:
        while start < end:
            buf, n, error = filled.get()
            if error is not None:
                raise error
            h.update(memoryview(buf)[:n])
            free.put(buf)
            start += n
            interrupt.check()
            if progress:
                progress(n)
    finally:
        stop.set()
        free.put(_DONE)
        t.join()
    return start



def _write_all(dst, view: memoryview) -> None:
    while view:
        written = dst.write(view)
        if written is None:  # non-blocking raw stream: not expected for files
            continue
        view = view[written:]


def _readinto(src, buf: bytearray) -> int:
    if hasattr(src, "readinto"):
        return src.readinto(buf) or 0
    data = src.read(len(buf))
    buf[: len(data)] = data
    return len(data)


# Transient I/O faults (network shares, flaky disks). A digest or size
# mismatch is never retried: it is a fact about the bytes, not a fault.
TRANSIENT_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.ECONNRESET,
                    errno.ESTALE, errno.EHOSTUNREACH, errno.ENETRESET}


def is_transient_io(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


io_retry = retry(
    retry=retry_if_exception(is_transient_io),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.2, max=5),
    sleep=interrupt.sleep,
    reraise=True,
)


@io_retry
def hash_file(path, *, what: Optional[str] = None, expected: Optional[Digest] = None,
              expected_size: Optional[int] = None,
              progress: Optional[Callable[[int], None]] = None) -> tuple[Digest, int]:
    """Hash a file streamed, retrying transient I/O errors from the start."""
    with open(path, "rb", buffering=0) as f:
        return copy_and_hash(f, None, what=what or str(path), expected=expected,
                             expected_size=expected_size, progress=progress)



def hash_fd(fd: int, *, what: str, expected: Optional[Digest], expected_size: int,
            progress: Optional[Callable[[int], None]] = None) -> tuple[Digest, int]:
    """Hash an open file by ``pread`` from offset 0 (what is verified is what is stored)."""
    size = os.fstat(fd).st_size
    if size != expected_size:
        raise SizeMismatch(what, expected_size, size)
    platform.advise_sequential(fd)
    h = new_hasher()
    done = _hash_range(fd, h, 0, size, what, progress, read_ahead=True)
    now = os.fstat(fd).st_size
    if now != size:  # written to while it was hashed: what was hashed is not what is there
        raise SizeMismatch(what, expected_size, now)
    actual = Digest("sha256", h.hexdigest())
    if expected is not None and actual != expected:
        raise DigestMismatch(what, expected, actual, done)
    return actual, done

