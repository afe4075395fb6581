"""RegistryStore: atomic, verified reads and writes of the registry's storage.

Every file is written to a temp name in its own folder, fsynced, renamed into
place, and the folder fsynced. Nothing here ever deletes a file of the
registry: the only files removed are regpatch's own temp and staging files.
Files are 0644, folders 0755; link files are exactly ``sha256:<hex>``.

Inside and outside the storage (the rule every read and write follows)
-----------------------------------------------------------------------
The bundle is untrusted, the operator's layout of the storage is not. An
operator may have made some folders symlinks to other disks (``blobs`` is the
usual one); those are the *anchors*, the folders whose names the registry
fixes and no input chooses:

    <root>   <root>/docker   docker/registry   docker/registry/v2
    v2/blobs   v2/blobs/sha256   v2/repositories   and the state folder itself

A path regpatch reads or writes is inside the storage when it lies (by its
names, ``..`` never used) under ``docker/registry/v2`` or the state folder,
and, walking its components from the root (or the state folder) with
``lstat``: an anchor may be a symlink, which is followed when it leads to a
directory (logged once per process); every component below the anchors that
exists is a real directory or, last, a regular file, never a symlink, FIFO,
socket or device. So ``blobs -> /mnt/disk2/blobs`` works, while a symlink
planted at ``repositories/<name>/_layers`` or ``.../_layers/sha256/<hex>``
(the names come from the repository and the bundle) is refused with
``UnsafePath`` before any byte is read through it or written. Nothing
regpatch creates is ever a symlink (``os.mkdir``, ``O_EXCL`` files, renames).

Operating-system errors of every read and write here go through
``errors.os_errors`` / ``os_error``: ``StorageError``/``NoSpace``, exit 4, with
the errno, the path and what to do.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

from regpatch.digest import Digest
from regpatch.errors import (
    DigestMismatch,
    InvalidReference,
    MalformedLink,
    RegpatchError,
    SizeMismatch,
    StorageError,
    StorageNotFound,
    UnsafePath,
    UsageError,
    os_error,
    os_errors,
)
from regpatch.hashing import advise_sequential, copy_and_hash, hash_fd, hash_file, kernel_copy_and_hash, try_reflink
from regpatch.hooks import checkpoint
from regpatch.reference import Repository, Tag
from regpatch.storage.layout import Layout

log = logging.getLogger("regpatch.store")

TMP_MARK = ".regpatch-tmp-"
FILE_MODE = 0o644
DIR_MODE = 0o755


def _is_plain_file(f) -> bool:
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


_io = os_errors  # every OSError of a read or write here goes through errors.os_error


def _raise_write_error(e: OSError, path: Path):
    raise os_error(e, doing="writing", path=path) from e


LINK_RE = re.compile(rb"sha256:([a-f0-9]{64})")
LINK_READ_LIMIT = 1024  # a link is 71 bytes; anything longer is not a link

_FOLLOWED: set[tuple[str, str]] = set()  # anchor symlinks already logged by this process
_FOLLOWED_LOCK = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: never sweep
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_temp_files(folder: Path) -> int:
    """Remove regpatch temp files in folder left by a process that is gone (killed)."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for e in entries:
        if not e.name.startswith(TMP_MARK):
            continue
        pid_part = e.name[len(TMP_MARK):].split("-", 1)[0]
        if pid_part.isdigit() and not _pid_alive(int(pid_part)) and e.is_file(follow_symlinks=False):
            try:
                os.unlink(e.path)
                n += 1
            except FileNotFoundError:
                pass
    return n


def _marker(st: os.stat_result) -> dict:
    """What a verified-blob marker remembers of the file: device, inode, size, mtime and
    ctime. ``touch`` can restore an mtime, nothing but the kernel sets the ctime: a file
    changed in place after it was hashed never matches its marker."""
    return {"size": st.st_size, "dev": st.st_dev, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_owner(root: Path, v2: Path) -> Optional[tuple[int, int]]:
    """The (uid, gid) every file and folder regpatch creates must have: the owner of the
    registry's own tree (v2/, else the root), when regpatch runs as root and that owner is
    another user (Debian's registry runs as its own user: a root-owned link file there
    breaks its next push). None: keep the process's own (it is the owner, or cannot chown)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    for folder in (v2, root):
        try:
            st = os.stat(folder)
        except OSError:
            continue
        return None if (st.st_uid, st.st_gid) == (0, 0) else (st.st_uid, st.st_gid)
    return None


class RegistryStore:
    def __init__(self, root: Path | str, *, state_dir: Path | str | None = None):
        root = Path(root)
        if not root.is_dir():
            raise StorageNotFound(f"registry storage root {root} is not a directory; pass the "
                                  "'rootdirectory' of the registry's config.yml")
        if (root / "repositories").is_dir() or (root / "blobs").is_dir():
            raise StorageNotFound(f"{root} looks like docker/registry/v2 itself; pass the registry's "
                                  "'rootdirectory' (the folder that holds docker/registry/v2)")
        if (root / "registry" / "v2").is_dir():
            raise StorageNotFound(f"{root} looks like the 'docker' folder; pass its parent, the "
                                  "'rootdirectory' of the registry")
        self.layout = Layout(root, Path(state_dir) if state_dir else None)
        v2, state = self._abs(self.layout.v2), self._abs(self.layout.state)
        self._v2, self._state, self._root = v2, state, self._abs(root)
        self._anchors = {self._root, self._root / "docker", self._root / "docker" / "registry", v2,
                         v2 / "blobs", v2 / "blobs" / "sha256", v2 / "repositories", state}
        if state_dir:
            self._refuse_state_in_docker()
            self._refuse_foreign_state_dir()
        self._owner = _storage_owner(root, self.layout.v2)

    @property
    def root(self) -> Path:
        return self.layout.root

    # -- safety -------------------------------------------------------------
    @staticmethod
    def _abs(path: Path) -> Path:
        return Path(os.path.abspath(path))

    STATE_ENTRIES = frozenset({"journal", "history.jsonl", "reports", "staging", "verified", "locks", "convert",
                               STATE_MARK := ".regpatch-state"})

    def _refuse_foreign_state_dir(self) -> None:
        """A --state-dir that already holds files that are not regpatch's (a typo for /etc,
        a home folder) is refused: regpatch would scatter its folders there."""
        with _io("reading", self._state):
            try:
                names = set(os.listdir(self._state))
            except FileNotFoundError:
                return
        if names and not names & self.STATE_ENTRIES:
            raise UsageError(f"--state-dir {self._state} holds other files ({', '.join(sorted(names)[:3])}"
                             f"{', ...' if len(names) > 3 else ''}) and none of regpatch's: give an empty or new "
                             "folder for regpatch's journal, history and staging")

    def claim_state_dir(self) -> None:
        """Mark the state folder as regpatch's (before the first write of a run)."""
        mark = self.layout.state / self.STATE_MARK
        if not os.path.lexists(mark):
            self.write_file(mark, b"regpatch state folder: journal, history, reports, staging\n", durable=False)

    def _refuse_state_in_docker(self) -> None:
        """--state-dir must not be inside docker/: the registry would list its files as
        repositories (or walk them as blobs). Checked by names and through symlinks."""
        docker = self._root / "docker"
        inside = [docker]
        with _io("reading", docker):
            for anchor in (docker, self._v2, self._v2 / "blobs", self._v2 / "repositories"):
                if os.path.lexists(anchor):
                    inside.append(Path(os.path.realpath(anchor)))
            real_state = Path(os.path.realpath(self._state))
        for base in inside:
            for state in (self._state, real_state):
                if state == base or base in state.parents:
                    raise UsageError(f"--state-dir {self.layout.state} is inside the registry's "
                                     f"storage tree {base}; the registry would take regpatch's "
                                     "files for repositories or blobs: choose a folder outside "
                                     f"{docker} (default: {self._root / '.regpatch'})")

    def _check_inside(self, path: Path) -> None:
        """Refuse a path outside the storage as the operator laid it out (module docstring)."""
        raw = Path(path)
        if any(part in ("..", ".") for part in raw.parts):
            raise UnsafePath(f"refusing {raw}: a storage path never holds '.' or '..'")
        path = self._abs(raw)
        if path == self._v2 or self._v2 in path.parents:
            start = self._root
        elif path == self._state or self._state in path.parents:
            start = self._state if self._root not in self._state.parents else self._root
        else:
            raise UnsafePath(f"refusing {path}: outside the registry storage {self.layout.v2} "
                             f"and regpatch's state folder {self.layout.state}")
        chain = [start] + [p for p in reversed(path.parents) if start in p.parents] + [path]
        with _io("checking", path):
            for p in chain:
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    return  # the rest will be created by regpatch, as real folders
                if stat.S_ISLNK(st.st_mode):
                    if p not in self._anchors:
                        raise UnsafePath(
                            f"refusing {path}: {p} is a symlink that resolves to {os.path.realpath(p)}, "
                            "outside the registry storage as the operator laid it out: symlinks are "
                            "followed only at the registry's fixed folders (root, docker, "
                            "docker/registry, v2, v2/blobs, v2/blobs/sha256, v2/repositories, the "
                            "state folder), never below them; replace it with a real folder")
                    self._follow_anchor(p)
                elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    # (a regular file where a folder must be fails later with ENOTDIR)
                    raise UnsafePath(f"refusing {path}: {p} is a FIFO, socket or device; the "
                                     "registry storage holds only folders and regular files")

    def _follow_anchor(self, p: Path) -> None:
        target = os.path.realpath(p)
        st = os.stat(p)  # ELOOP, ENOENT (dangling) are reported by the caller's _io
        if not stat.S_ISDIR(st.st_mode):
            raise StorageError(f"storage folder {p} is a symlink to {target}, which is not a folder; "
                               "fix the symlink")
        key = (str(p), target)
        with _FOLLOWED_LOCK:
            if key in _FOLLOWED:
                return
            _FOLLOWED.add(key)
        log.info("storage folder %s is a symlink to %s: followed (the operator's layout)", p, target)

    def check_paths(self, paths) -> None:
        """Refuse, before any write, a plan whose paths would leave the storage."""
        for path in paths:
            self._check_inside(path)

    def _mkdirs(self, path: Path) -> None:
        self._check_inside(path)
        missing = []
        p = path
        with _io("checking", path):
            while not os.path.lexists(p):
                missing.append(p)
                p = p.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                continue
            except OSError as e:
                _raise_write_error(e, d)
            with _io("creating", d):
                os.chmod(d, DIR_MODE)  # umask-proof
                if self._owner is not None:
                    os.chown(d, *self._owner)
                fsync_dir(d.parent)

    def ensure_state_dir(self, path: Path) -> None:
        """Create a folder of regpatch's state (refused outside the state folder)."""
        self._mkdirs(path)

    # -- reading ------------------------------------------------------------
    def blob_size(self, digest: Digest) -> Optional[int]:
        path = self.layout.blob_data(digest)
        self._check_inside(path)
        with _io("reading", path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
        return st.st_size

    def read_blob(self, digest: Digest, limit: int) -> bytes:
        path = self.layout.blob_data(digest)
        self._check_inside(path)
        with _io("reading", path):
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        if len(data) > limit:
            raise StorageError(f"blob {digest} in the registry is larger than {limit} bytes")
        return data

    def verify_blob(self, digest: Digest, size: int,
                    progress: Optional[Callable[[int], None]] = None, *, remember: bool = True) -> bool:
        """True if the registry holds this blob with the right size and bytes.

        A blob verified before and unchanged since (same inode, size, mtime)
        is not hashed again. Raises DigestMismatch / SizeMismatch when the
        registry's copy is corrupt.
        """
        path = self.layout.blob_data(digest)
        self._check_inside(path)
        with _io("reading", path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return False
            if self._verified(digest, st):
                return True
            hash_file(path, what=f"registry blob {self.layout.relative(path)}", expected=digest,
                      expected_size=size, progress=progress)
        if remember:
            self._remember_verified(digest, path)
        return True

    def read_link(self, path: Path) -> Optional[Digest]:
        """The digest in a link file, None if absent.

        Read strictly, as distribution's ``readlink`` + go-digest's ``Parse``
        do: the whole file must be ``sha256:<64 hex>``; Go's anchored regexp
        allows no trailing newline, CR, space or BOM (the registry answers an
        error for such a link), and regpatch also refuses upper-case hex (the
        registry would look for a blob path that does not exist). Anything
        else raises ``MalformedLink``; the digest returned is rebuilt from the
        matched hex only, never from the raw text.
        """
        self._check_inside(path)
        with _io("reading", path):
            try:
                with open(path, "rb") as f:
                    raw = f.read(LINK_READ_LIMIT + 1)
            except FileNotFoundError:
                return None
        m = LINK_RE.fullmatch(raw)
        if m is None:
            shown = raw[:80] + (b"..." if len(raw) > 80 else b"")
            raise MalformedLink(
                f"link file {self.layout.relative(path)} does not hold 'sha256:<hex>' exactly "
                f"(64 lowercase hex; got {shown!r}); the registry cannot use it either: a UTF-16 or "
                "newline-terminated link (CRLF, BOM, spaces) makes it answer an error")
        return Digest("sha256", m.group(1).decode("ascii"))

    def current_tag(self, repo: Repository, tag: Tag) -> Optional[Digest]:
        path = self.layout.tag_current_link(repo, tag)
        try:
            return self.read_link(path)
        except MalformedLink as e:
            log.warning("%s; regpatch replaces it when it moves the tag", e)
            return None

    def tags(self, repo: Repository, limit: int = 1000) -> list[Tag]:
        """Tags of a repository that hold a current link (names that fail the grammar are skipped)."""
        found: list[Tag] = []
        tags_dir = self.layout.tags_dir(repo)
        self._check_inside(tags_dir)
        with _io("listing", tags_dir):
            try:
                entries = sorted(os.scandir(tags_dir), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                return found
        for e in entries[:limit]:
            try:
                tag = Tag.parse(e.name)
            except InvalidReference:
                continue
            if os.path.isfile(self.layout.tag_current_link(repo, tag)):
                found.append(tag)
        return found

    def any_tag(self, prefer: Optional[tuple[Repository, Tag]] = None,
                max_dirs: int = 10000) -> Optional[tuple[Repository, Tag, Digest]]:
        """A (repository, tag, digest) the registry can serve from this storage (the tag's
        revision link and manifest blob are there): ``prefer`` if it is, else another tag
        of its repository, else the first such tag found (a bounded walk of
        repositories/). None for a storage with no servable tag at all."""
        def servable(repo: Repository, tag: Tag) -> Optional[Digest]:
            try:
                held = self.current_tag(repo, tag)
                if held is None or self.blob_size(held) is None:
                    return None
                if self.read_link(self.layout.revision_link(repo, held)) != held:
                    return None  # the registry answers MANIFEST_UNKNOWN for it
            except MalformedLink:
                return None  # (the patch itself names a malformed link of the patched tag)
            return held

        candidates: list[Repository] = []
        if prefer is not None:
            repo, tag = prefer
            held = servable(repo, tag)
            if held is not None:
                return repo, tag, held
            candidates.append(repo)
        for repo in candidates:
            for tag in self.tags(repo):
                held = servable(repo, tag)
                if held is not None:
                    return repo, tag, held
        base = self.layout.repositories
        seen = 0
        for dirpath, dirnames, _ in os.walk(base):
            seen += 1
            if seen > max_dirs:
                break
            dirnames.sort()
            if "_manifests" in dirnames:
                try:
                    repo = Repository.parse(os.path.relpath(dirpath, base).replace(os.sep, "/"))
                except InvalidReference:
                    dirnames[:] = []
                    continue
                for tag in self.tags(repo):
                    held = servable(repo, tag)
                    if held is not None:
                        return repo, tag, held
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]
        return None

    def link_ok(self, path: Path, digest: Digest) -> bool:
        want = str(digest).encode("ascii")
        self._check_inside(path)
        with _io("reading", path):
            try:
                with open(path, "rb") as f:
                    return f.read(len(want) + 1) == want
            except FileNotFoundError:
                return False

    # -- verified-blob memory (regpatch state, outside docker/) --------------
    def _verified_marker(self, digest: Digest) -> Path:
        return self.layout.state / "verified" / f"{digest.algorithm}-{digest.hex}"

    def _verified(self, digest: Digest, st: os.stat_result) -> bool:
        try:
            mark = json.loads(self._verified_marker(digest).read_text())
        except (OSError, ValueError):
            return False
        return mark == _marker(st)

    def _remember_verified(self, digest: Digest, path: Path) -> None:
        try:
            st = os.stat(path)
            mark = _marker(st)
            self.write_file(self._verified_marker(digest), json.dumps(mark).encode(), durable=False)
        except (RegpatchError, OSError) as e:  # only an optimisation: never fail a patch for it
            # (OSError: e.g. another run installed the staged file meanwhile)
            log.debug("could not record verified blob %s: %s", digest, e)

    # -- writing ------------------------------------------------------------
    @contextmanager
    def _temp_beside(self, final: Path, durable: bool = True) -> Iterator[BinaryIO]:
        """A temp file in final's folder; renamed onto final when the block succeeds."""
        self._mkdirs(final.parent)
        with _io("cleaning temp files of", final.parent):
            sweep_temp_files(final.parent)
        tmp = final.parent / f"{TMP_MARK}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)  # RDWR: the copy is hashed back
        except OSError as e:
            _raise_write_error(e, final)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), FILE_MODE)  # umask-proof
                if self._owner is not None:
                    os.fchown(f.fileno(), *self._owner)
                yield f
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            if durable:
                fsync_dir(final.parent)
            checkpoint(f"wrote {final.name}")
        except OSError as e:
            self._discard(tmp)
            _raise_write_error(e, final)
        except BaseException:
            self._discard(tmp)
            raise

    @staticmethod
    def _discard(tmp: Path) -> None:
        """Remove a temp file of regpatch's; a failure here never hides the error being raised."""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.debug("could not remove %s: %s", tmp, e)

    def write_file(self, path: Path, data: bytes, durable: bool = True) -> None:
        with self._temp_beside(path, durable) as f:
            f.write(data)

    def write_link(self, path: Path, digest: Digest) -> bool:
        """Write a link file atomically; False (and no write) when it already holds digest."""
        if self.link_ok(path, digest):
            return False
        self.write_file(path, str(digest).encode("ascii"))
        return True

    def write_manifest_blob(self, digest: Digest, raw: bytes) -> bool:
        """Store manifest bytes (already known to hash to digest) as a blob."""
        if Digest.of_bytes(raw) != digest:
            raise StorageError(f"internal: manifest bytes do not hash to {digest}")
        size = self.blob_size(digest)
        if size == len(raw) and self.read_blob(digest, len(raw)) == raw:
            return False
        self.write_file(self.layout.blob_data(digest), raw)
        return True

    def staged_path(self, digest: Digest) -> Optional[Path]:
        """A fully verified staged copy of digest, if one is waiting."""
        path = self.layout.staged_blob(digest)
        self._check_inside(path)
        with _io("reading", path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
        return path if self._verified(digest, st) else None

    def recheck_staged(self, digest: Digest, size: int,
                       progress: Optional[Callable[[int], None]] = None) -> bool:
        """True when a staged copy left by an earlier run still hashes to ``digest``. Its
        marker is not trusted for this (the state folder may be shared, the run that wrote it
        may have been killed): a copy that fails is removed, to be staged again."""
        path = self.layout.staged_blob(digest)
        if not os.path.lexists(path):
            return False
        try:
            hash_file(path, what=f"staged copy {path}", expected=digest, expected_size=size, progress=progress)
        except (DigestMismatch, SizeMismatch) as e:
            log.warning("%s; removed, the blob is staged again", e)
            self._discard(path)
            return False
        self._remember_verified(digest, path)
        return True

    def stage_blob(self, digest: Digest, size: int, open_source: Callable[[], BinaryIO], *,
                   what: str, progress: Optional[Callable[[int], None]] = None) -> Path:
        """Copy a blob into the staging folder while hashing it: one read pass.

        A source that is a regular file is copied by the kernel
        (``copy_file_range``) while the copy itself is hashed.

        On a digest or size mismatch the partial file is removed and the error
        raised; the registry's v2/ tree is never touched here.
        """
        final = self.layout.staged_blob(digest)
        with self._temp_beside(final) as dst, _io(f"copying {what} into", final), open_source() as src:
            done = None
            region = getattr(src, "file_region", None)  # (fd, offset): a member of a local archive
            if region is not None:
                done = kernel_copy_and_hash(region[0], dst.fileno(), what=what, expected=digest,
                                            expected_size=size, progress=progress, src_offset=region[1])
            elif _is_plain_file(src):
                advise_sequential(src.fileno())
                if try_reflink(src.fileno(), dst.fileno()):  # XFS, btrfs: blocks shared, no copy
                    log.info("%s: cloned (reflink), hashing the clone", what)
                    done = hash_fd(dst.fileno(), what=what, expected=digest, expected_size=size,
                                   progress=progress)
                else:  # the kernel copies, this thread hashes the copy
                    done = kernel_copy_and_hash(src.fileno(), dst.fileno(), what=what, expected=digest,
                                                expected_size=size, progress=progress)
            if done is None:
                copy_and_hash(src, dst, what=what, expected=digest, expected_size=size,
                              progress=progress)
        self._remember_verified(digest, final)
        return final

    PARTIAL_SUFFIX = ".partial"

    def partial_path(self, digest: Digest) -> Path:
        """Where an interrupted download of digest waits to be resumed (staging folder)."""
        final = self.layout.staged_blob(digest)
        return final.with_name(final.name + self.PARTIAL_SUFFIX)

    def stage_blob_resumable(self, digest: Digest, size: int, open_at: Callable[[int], BinaryIO], *,
                             what: str, validator: str,
                             progress: Optional[Callable[[int], None]] = None) -> int:
        with _io(f"staging {what} in", self.partial_path(digest)):
            return self._stage_blob_resumable(digest, size, open_at, what=what, validator=validator,
                                              progress=progress)

    def _stage_blob_resumable(self, digest: Digest, size: int, open_at: Callable[[int], BinaryIO], *,
                              what: str, validator: str,
                              progress: Optional[Callable[[int], None]] = None) -> int:
        """Like ``stage_blob``, resuming the partial file an earlier attempt or run left.

        The partial (``partial_path``) and its ``.json`` note of ``validator``
        (e.g. the source object's URL, ETag and size) stay in the staging
        folder. A partial with the same validator is hashed first and the rest
        is read from ``open_at(offset)``; another validator restarts from 0.
        A digest or size mismatch removes the partial; any other error keeps
        it. Returns the number of bytes resumed from disk.
        """
        from regpatch.digest import new_hasher
        from regpatch.errors import DigestMismatch, SizeMismatch

        final = self.layout.staged_blob(digest)
        partial = self.partial_path(digest)
        note = partial.with_name(partial.name + ".json")
        self._mkdirs(partial.parent)
        want = {"validator": validator, "size": size}
        try:
            resumable = json.loads(note.read_text()) == want
        except (OSError, ValueError):
            resumable = False
        hasher, offset = new_hasher(), 0
        if resumable and partial.is_file() and os.path.getsize(partial) <= size:
            with open(partial, "rb", buffering=0) as f:
                _, offset = copy_and_hash(f, None, what=str(partial), hasher=hasher)
        else:
            self._discard(partial)
            self.write_file(note, json.dumps(want).encode())
            hasher = new_hasher()
        if offset and progress:
            progress(offset)
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        except OSError as e:
            _raise_write_error(e, partial)
        try:
            with os.fdopen(fd, "ab", buffering=0) as dst:
                if offset < size or offset == 0:
                    with open_at(offset) as src:
                        copy_and_hash(src, dst, what=what, expected=digest, expected_size=size,
                                      progress=progress, hasher=hasher, already=offset)
                else:
                    actual = Digest("sha256", hasher.hexdigest())
                    if actual != digest:
                        raise DigestMismatch(what, digest, actual, offset)
                os.fsync(dst.fileno())
        except (DigestMismatch, SizeMismatch):
            self._discard(partial)
            self._discard(note)
            raise
        except OSError as e:
            _raise_write_error(e, partial)
        os.replace(partial, final)
        fsync_dir(final.parent)
        self._discard(note)
        self._remember_verified(digest, final)
        return offset

    def install_staged(self, digest: Digest, staged: Path, *, size: int, replace: bool = False) -> bool:
        """Move a verified staged blob to blobs/.../data. False if already present.

        ``replace`` overwrites a registry copy of the wrong size (a repair). The
        staging folder is shared by every run on this storage: when another run
        (another repository's patch) installed the same blob first, the staged
        file is gone and the blob is in place; it is verified (hashed, unless its
        verified marker matches) and the call returns False.
        """
        final = self.layout.blob_data(digest)
        with _io("installing the blob", final):
            return self._install_staged(digest, staged, final, replace, size)

    def _install_staged(self, digest: Digest, staged: Path, final: Path, replace: bool, size: int) -> bool:
        self._check_inside(final)
        if os.path.lexists(final) and not replace:
            self.verify_blob(digest, size)
            self._discard(staged)  # our own copy, not needed: another run installed the blob
            return False
        self._mkdirs(final.parent)
        try:
            os.replace(staged, final)  # same filesystem: the state folder is under root
        except FileNotFoundError:
            if not final.exists():
                raise StorageError(f"staged blob {staged} disappeared before it could be installed, and "
                                   f"{self.layout.relative(final)} is not there; run the patch again") from None
            self.verify_blob(digest, size)
            log.info("blob %s was installed by another run meanwhile: verified in place", digest)
            return False
        except OSError as e:
            if e.errno != errno.EXDEV:
                _raise_write_error(e, final)
            with self._temp_beside(final) as dst, open(staged, "rb") as src:
                copy_and_hash(src, dst, what=str(staged), expected=digest)
            os.unlink(staged)
        fsync_dir(final.parent)
        checkpoint(f"installed blob {digest.short}")
        self._remember_verified(digest, final)
        return True


    # -- --consume: take a bundle file instead of copying it ---------------------
    def same_filesystem(self, path: Path) -> bool:
        """True when ``path`` is on the filesystem of the staging folder (a rename works)."""
        probe = self.layout.staging
        with _io("checking the filesystem of", path):
            while not probe.exists():
                probe = probe.parent
            return os.stat(path).st_dev == os.stat(probe).st_dev

    def adopt_blob(self, digest: Digest, size: int, path: Path, *, what: str,
                   progress: Optional[Callable[[int], None]] = None) -> Path:
        """Move a bundle file into the staging folder (a rename) and verify it there:
        ingest costs one hash. A file that fails verification is renamed back to where
        it was; the registry's v2/ tree is never touched here."""
        with _io(f"moving {what} into", self.layout.staged_blob(digest)):
            return self._adopt_blob(digest, size, path, what=what, progress=progress)

    def _adopt_blob(self, digest: Digest, size: int, path: Path, *, what: str,
                    progress: Optional[Callable[[int], None]] = None) -> Path:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UnsafePath(f"{what} is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a plain file with one link'}"
                             "; it cannot be consumed (renamed into the storage): copy it instead")
        final = self.layout.staged_blob(digest)
        self._mkdirs(final.parent)
        tmp = final.parent / f"{TMP_MARK}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            os.rename(path, tmp)
        except OSError as e:
            if e.errno == errno.EXDEV:
                raise UnsafePath(f"{what} is on another filesystem than the storage: --consume cannot "
                                 "rename it; drop --consume to copy it") from None
            _raise_write_error(e, final)
        try:
            with open(tmp, "rb", buffering=0) as f:
                hash_fd(f.fileno(), what=what, expected=digest, expected_size=size, progress=progress)
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            if self._owner is not None:
                os.chown(tmp, *self._owner)
        except BaseException:
            try:
                if not os.path.lexists(path):
                    os.rename(tmp, path)  # give it back, as it was
                else:
                    self._discard(tmp)
            except OSError:
                pass
            raise
        os.replace(tmp, final)
        fsync_dir(final.parent)
        fsync_dir(Path(path).parent)
        self._remember_verified(digest, final)
        return final
