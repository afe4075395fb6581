"""One error hierarchy for regpatch.

Every error says what failed, on which object, and what to do next. The CLI
prints ``str(error)`` as a single line and exits with ``error.exit_code``.
No error message ever contains a credential: ``str(error)`` passes the message through
``sanitize.redact`` (the one detector the refusal of inline credentials uses too). Names in a message may come from
a hostile bundle or a damaged storage: ``str(error)`` escapes their control
characters (a newline shows as ``\\n``), so a message is always one line and
can never forge another.

Operating-system errors of the registry storage and of regpatch's state files
become errors of this hierarchy in one place, ``os_error`` (see there), used
through the ``os_errors`` context manager by every reader and writer.

    RegpatchError                    base class; exit code 1
    ├── UsageError                   bad arguments or options (exit 2)
    │   ├── InvalidReference         repository, tag or digest fails its grammar
    │   └── ConfigError              unreadable / invalid registry config.yml
    ├── BundleError                  the patch bundle is unusable (exit 3)
    │   ├── UnknownBundleFormat      not a staged folder nor an OCI layout
    │   ├── ManifestError            malformed or unsupported manifest JSON
    │   ├── BlobMissing              a descriptor is in neither bundle nor registry
    │   ├── DigestMismatch           bytes do not hash to the expected digest
    │   ├── SizeMismatch             bytes are not the expected length
    │   ├── CrossRepositoryBlob      another repository's blob, not carried by the bundle
    │   ├── UnsafePath               symlink or path leaving the bundle / storage
    │   ├── SourceError              the bundle source failed (I/O, S3)
    │   ├── SignatureError           signature missing (UnsignedBundle) or not by a trust key
    │   ├── BundleMismatch           regpatch-bundle.json does not describe the bundle
    │   └── BaseBlobsMissing         blobs the bundle assumes present are not in the registry
    ├── StorageError                 the registry storage cannot be read/written (exit 4)
    │   ├── StorageNotFound          ROOT does not hold a registry storage
    │   ├── MalformedLink            a link file does not hold exactly 'sha256:<hex>'
    │   ├── NoSpace                  ENOSPC / EDQUOT while writing
    │   ├── LockTimeout              another patch holds the repository lock
    │   ├── StorageMismatch          the URL's registry does not serve this storage
    │   ├── TagMoved                 another writer moved the tag during the run (nothing overwritten)
    │   └── TagRaced                 another writer wrote the tag while regpatch moved it
    ├── RegistryError                the registry HTTP API failed (exit 5)
    │   ├── RegistryUnavailable      /v2/ does not answer
    │   ├── AuthError                credentials missing or refused
    │   └── VerificationError        the pulled image is not the patched image
    ├── RestartError                 the restart strategy failed (exit 6)
    └── Interrupted                  SIGINT / SIGTERM: stopped at a chunk boundary
                                     (exit 130 / 143, as a shell reports a signal)
"""

from __future__ import annotations

import errno
import os
import signal
from contextlib import contextmanager
from typing import Iterator, Optional

from regpatch.options import opt
from regpatch.sanitize import escape_controls, redact


class RegpatchError(Exception):
    """Base class of every error regpatch raises on purpose."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always: control characters escaped, never removed;
        return escape_controls(redact(self.message.strip()))  # and never a credential (sanitize.redact)


class UsageError(RegpatchError):
    exit_code = 2


class InvalidReference(UsageError):
    """A repository name, tag or digest does not match its grammar."""

    def __init__(self, kind: str, value: str, rule: str):
        self.kind, self.value, self.rule = kind, value, rule
        super().__init__(f"invalid {kind} {value!r}: {rule}")


class ConfigError(UsageError):
    pass


class BundleError(RegpatchError):
    exit_code = 3


class UnknownBundleFormat(BundleError):
    pass


class ManifestError(BundleError):
    pass


class BlobMissing(BundleError):
    def __init__(self, digest, referenced_by: str, hint: str = ""):
        self.digest, self.referenced_by = digest, referenced_by
        msg = f"blob {digest} referenced by {referenced_by} is in neither the bundle nor the registry"
        super().__init__(msg + (f"; {hint}" if hint else "; add it to the bundle"))


class DigestMismatch(BundleError):
    def __init__(self, what: str, expected, actual, size: int):
        self.what, self.expected, self.actual, self.size = what, expected, actual, size
        super().__init__(
            f"digest mismatch for {what}: expected {expected}, got {actual} "
            f"after {size} bytes; the file is corrupt or is not the one the manifest names"
        )


class SizeMismatch(BundleError):
    def __init__(self, what: str, expected: int, actual: int):
        self.what, self.expected, self.actual = what, expected, actual
        super().__init__(
            f"size mismatch for {what}: expected {expected} bytes, got {actual}; "
            "the file is truncated or is not the one the manifest names"
        )


class CrossRepositoryBlob(BundleError):
    """The image would link a blob of another repository that the bundle does not carry."""


class UnsafePath(BundleError):
    pass


class SourceError(BundleError):
    pass


class StorageError(RegpatchError):
    exit_code = 4


class StorageNotFound(StorageError):
    pass


class MalformedLink(StorageError):
    """A link file of the storage that neither regpatch nor the registry can use."""


class NoSpace(StorageError):
    pass


class FileInUse(StorageError):
    """Windows: a file could not be replaced while another program (the registry, a virus
    scanner) held it open without delete sharing, even after the bounded retries."""


class LockTimeout(StorageError):
    pass


class LockLost(StorageError):
    """The repository lock's file was removed or replaced while this run held it."""


class StorageMismatch(StorageError):
    """The registry behind the URL does not serve what the storage holds."""


class TagMoved(StorageError):
    """Another writer moved the tag between the run's read of it and its move: nothing of
    theirs was overwritten. ``doing``: what was moving it (patch, rollback, restore)."""

    def __init__(self, repository, tag, expected, found, *, doing: str = "patch", to=None):
        self.expected, self.found, self.doing, self.to = expected, found, doing, to
        if doing == "restore":
            text = (f"tag {repository}:{tag} was moved by another writer while regpatch put it back on {to} "
                    f"(the registry did not serve {expected} after the patch moved it there): it holds "
                    f"{found or '(nothing)'} now; the tag was left as the other writer set it: check who pushed "
                    "and which image the registry serves")
        else:
            when = "the patch was planned" if doing == "patch" else "the rollback chose its image"
            again = ("run the patch again to move the tag on purpose (the new image is stored and verified)"
                     if doing == "patch" else f"run the rollback again ({opt.to} DIGEST) to move it on purpose")
            text = (f"tag {repository}:{tag} was moved by another writer during this {doing}: it held "
                    f"{expected or '(nothing)'} when {when} and holds {found or '(nothing)'} now; the tag was left "
                    f"as the other writer set it; check who pushed, then {again}")
        super().__init__(text)


class GcRefused(StorageError):
    """The registry's garbage collection would delete what a kept image needs, or said something
    regpatch cannot check: nothing was deleted."""


class TagRaced(StorageError):
    """Another writer wrote the tag while regpatch's compare-and-swap moved it (a push that
    landed in the window): recorded as ``raced`` in the history; the tag is not moved again."""

    def __init__(self, repository, tag, expected, to, others, holds, *, doing: str = "patch"):
        self.expected, self.to, self.others, self.holds, self.doing = expected, to, tuple(others), holds, doing
        theirs = ", ".join(str(d) for d in self.others) or "a link that is not a digest"
        whose = f"{to} is regpatch's image" + (f", {self.others[0]} the other writer's" if self.others else "")
        super().__init__(
            f"tag {repository}:{tag} was written by another writer while this {doing} moved it from "
            f"{expected or '(nothing)'} to {to}: the other writer wrote {theirs}; the tag holds "
            f"{holds or '(nothing)'} now; regpatch did not move it again (history: 'raced'): check who "
            f"pushed, then set the tag on purpose with a rollback {opt.to} DIGEST ({whose})")


class RegistryError(RegpatchError):
    exit_code = 5


class RegistryUnavailable(RegistryError):
    pass


class AuthError(RegistryError):
    pass


class VerificationError(RegistryError):
    pass


class RestartError(RegpatchError):
    exit_code = 6


class FleetDrift(RegpatchError):
    """A registry of the fleet is not on the expected image, or cannot be read (regpatch status)."""
    exit_code = 7


class Interrupted(RegpatchError):
    """The run was asked to stop (SIGINT / SIGTERM) and stopped cleanly."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        super().__init__(f"interrupted by {name}; nothing is half-written: run the same command "
                         "again to resume")


# -- bundle trust (the shuttle side: regpatch-bundle.json and its signature) ------
# All are BundleErrors (exit 3), raised before anything is staged.

class SignatureError(BundleError):
    """The bundle's signature does not verify with any trust key (or is malformed)."""


class UnsignedBundle(SignatureError):
    """Trust keys are configured and the bundle carries no signature."""


class BundleMismatch(BundleError):
    """regpatch-bundle.json does not describe the bundle (a file added, removed or altered)."""


class OlderBundle(BundleError):
    """A signed bundle made before the image the tag serves: a replay, refused unless asked for."""


class BaseBlobsMissing(BundleError):
    """Blobs the bundle assumes the site holds are not in the registry storage."""


# -- operating-system errors --------------------------------------------------------

# errno -> (error class, what to do). Every read and write of the registry storage
# and of the state folder maps its OSError through ``os_error``.
_OS_ADVICE = {
    errno.ENOSPC: (NoSpace, "no space left on the device: free space on that filesystem and run "
                            "the same command again (blobs already verified are kept)"),
    errno.EDQUOT: (NoSpace, "raise the disk quota of this user or free space, and run the same "
                            "command again (blobs already verified are kept)"),
    errno.EROFS: (StorageError, "the filesystem is mounted read-only: remount it read-write, or run "
                                "regpatch on the host that mounts the storage read-write"),
    errno.EACCES: (StorageError, "permission denied: run regpatch as the user that owns the registry "
                                 "storage (the registry's own user, or root), or fix the folder's "
                                 "owner and mode"),
    errno.EPERM: (StorageError, "operation not permitted: the file or folder may be immutable or "
                                "append-only (lsattr), or the filesystem refuses it; fix that and run "
                                "again"),
    errno.ENOTDIR: (StorageError, "a component of the path is a file where a folder must be: the "
                                  "storage layout is damaged there; inspect it (and the registry's "
                                  "rootdirectory) before running again"),
    errno.EISDIR: (StorageError, "a folder stands where a file must be: the storage layout is damaged "
                                 "there; inspect it before running again"),
    errno.ENAMETOOLONG: (StorageError, "a file name or the whole path is longer than the filesystem "
                                       "allows; use a shorter storage root or {state_dir}"),
    errno.ELOOP: (StorageError, "too many levels of symbolic links: a symlink in the storage points "
                                "back at itself or at a loop; fix the symlink"),
    errno.EIO: (StorageError, "the device reported an I/O error: check the disk or the network "
                              "filesystem (dmesg, mount state) before running again"),
    errno.ENOENT: (StorageError, "it disappeared or a folder of its path is missing: is another "
                                 "process changing the storage? run the same command again"),
    errno.EMFILE: (StorageError, "too many open files in this process: raise the limit (ulimit -n) "
                                 "and run again"),
    errno.ENFILE: (StorageError, "the system ran out of file handles: try again later"),
    errno.ESTALE: (StorageError, "stale network filesystem handle: remount the share and run again"),
    errno.EXDEV: (StorageError, "the rename crosses filesystems: keep {state_dir} on the storage's "
                                "filesystem"),
}


def os_error(e: OSError, *, doing: str, path: Optional[object] = None) -> RegpatchError:
    """The ``RegpatchError`` for an ``OSError`` raised while ``doing`` (e.g.
    ``"writing"``) ``path`` (default: the file the OS named).

    ENOSPC/EDQUOT become ``NoSpace``, every other errno a ``StorageError``
    (exit 4) whose one-line message names the errno, the path (and the file
    the OS named, when another one) and what to do. Raise it ``from e``.
    """
    def text(p) -> str:
        if isinstance(p, bytes):
            return p.decode("utf-8", "replace")
        return os.fspath(p) if isinstance(p, os.PathLike) else str(p)

    named = [text(f) for f in (e.filename, e.filename2) if f is not None]
    target = text(path) if path is not None else (named[0] if named else "?")
    also = [n for n in named if n != target]
    code = e.errno
    fallback = (StorageError, "check the storage and run the same command again")
    cls, advice = _OS_ADVICE.get(code, fallback) if code is not None else fallback
    name = errno.errorcode.get(code, str(code)) if code is not None else type(e).__name__
    reason = e.strerror or str(e) or type(e).__name__
    at = f" (at {', '.join(also)})" if also else ""
    advice = advice.replace("{state_dir}", opt.state_dir)  # named as the caller names it, when it is raised
    return cls(f"{doing} {target} failed{at}: [{name}] {reason}; {advice}")


@contextmanager
def os_errors(doing: str, path: Optional[object] = None) -> Iterator[None]:
    """Map an ``OSError`` raised in the block with ``os_error``; other errors pass.

        with os_errors("writing", path):
            os.write(fd, data)
    """
    try:
        yield
    except RegpatchError:
        raise
    except OSError as e:
        raise os_error(e, doing=doing, path=path) from e
