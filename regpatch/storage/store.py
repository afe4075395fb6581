"""RegistryStore: atomic, verified reads and writes of the registry's storage.

Every file is written to a temp name in its own folder, fsynced, renamed into
place, and the folder fsynced. Nothing here deletes a file of the registry
but ``remove_link``, which only ``regpatch prune`` calls (a link file, never a
blob); the other files removed are regpatch's own temp and staging files.
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

from regpatch import platform
from regpatch.digest import Digest
from regpatch.errors import (
    InvalidReference,
    MalformedLink,
    RegpatchError,
    StorageError,
    StorageNotFound,
    UnsafePath,
    UsageError,
)
from regpatch.hashing import hash_file
from regpatch.hooks import checkpoint
from regpatch.manifest import MAX_MANIFEST_SIZE, Manifest, parse_manifest
from regpatch.options import opt
from regpatch.platform.ownfiles import read_own_file
from regpatch.reference import Repository, Tag
from regpatch.storage.files import DIR_MODE, FILE_MODE, TMP_MARK, _io, _raise_write_error, fsync_dir, sweep_temp_files
from regpatch.storage.layout import Layout
from regpatch.storage.staging import Staging

log = logging.getLogger("regpatch.store")


LINK_RE = re.compile(rb"sha256:([a-f0-9]{64})")
LINK_READ_LIMIT = 1024  # a link is 71 bytes; anything longer is not a link

_FOLLOWED: set[tuple[str, str]] = set()  # anchor symlinks already logged by this process
_FOLLOWED_LOCK = threading.Lock()
_WARNED: set[str] = set()  # malformed links already warned about by this process (path and bytes)


MARKER_LIMIT = 4096  # a verified-blob marker is a few numbers
MAX_REVISIONS = 100_000  # revision links listed per repository


def _storage_owner(root: Path, v2: Path) -> Optional[tuple[int, int]]:
    """The (uid, gid) every file and folder regpatch creates must have: the owner of the
    registry's own tree (v2/, else the root), when regpatch runs as root and that owner is
    another user (Debian's registry runs as its own user: a root-owned link file there
    breaks its next push). None: keep the process's own (it is the owner, or cannot chown;
    always on Windows)."""
    return platform.storage_owner([v2, root])


def docker_tree_holding(root: Path, path: Path) -> Optional[Path]:
    """The folder of the registry's tree under ``root`` (``docker/``, ``v2``, ``blobs``,
    ``repositories``, by name or through a symlink) that holds ``path``, or None."""
    root = Path(os.path.abspath(root))
    docker = root / "docker"
    v2 = docker / "registry" / "v2"
    inside = [docker]
    with _io("reading", docker):
        for anchor in (docker, v2, v2 / "blobs", v2 / "repositories"):
            if os.path.lexists(anchor):
                inside.append(Path(os.path.realpath(anchor)))
        candidates = (Path(os.path.abspath(path)), Path(os.path.realpath(path)))
    for base in inside:
        for candidate in candidates:
            if candidate == base or base in candidate.parents:
                return base
    return None


class RegistryStore(Staging):
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

    STATE_ENTRIES = frozenset({"gc", "journal", "history.jsonl", "reports", "staging", "verified", "locks", "convert",
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
            raise UsageError(f"{opt.state_dir} {self._state} holds other files ({', '.join(sorted(names)[:3])}"
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
        base = docker_tree_holding(self._root, self._state)
        if base is not None:
            raise UsageError(f"{opt.state_dir} {self.layout.state} is inside the registry's "
                             f"storage tree {base}; the registry would take regpatch's "
                             "files for repositories or blobs: choose a folder outside "
                             f"{self._root / 'docker'} (default: {self._root / '.regpatch'})")

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
                    platform.chown(d, self._owner)
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

    def stored_manifest(self, digest: Digest) -> Optional[Manifest]:
        """The manifest blob ``digest`` as parsed, or None when it is missing or unreadable."""
        try:
            return parse_manifest(self.read_blob(digest, MAX_MANIFEST_SIZE), what=f"manifest {digest}")
        except (RegpatchError, OSError):
            return None

    def linked_revisions(self, repo: Repository, limit: int = MAX_REVISIONS) -> list[Digest]:
        """The manifests ``repo`` links: a revision link that holds its own digest (in name order,
        at most ``limit``)."""
        try:
            names = sorted(p.name for p in self.layout.revisions_dir(repo).iterdir())[:limit]
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for hexdigest in names:
            try:
                d = Digest("sha256", hexdigest)
            except RegpatchError:
                continue
            if self.read_link(self.layout.revision_link(repo, d)) == d:
                out.append(d)
        return out

    def verify_blob(self, digest: Digest, size: int,
                    progress: Optional[Callable[[int], None]] = None, *, remember: bool = True) -> bool:
        """True if the registry holds this blob with the right size and bytes.

        A blob verified before and proven unchanged since (``platform.file_identity``:
        same inode, size, mtime and ctime; where nothing proves it, never) is not hashed
        again. Raises DigestMismatch / SizeMismatch when the
        registry's copy is corrupt.
        """
        path = self.layout.blob_data(digest)
        self._check_inside(path)
        with _io("reading", path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return False
            if self._verified(digest, path, st):
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
        """The digest the tag holds; None for no tag, or a malformed link (warned about once)."""
        path = self.layout.tag_current_link(repo, tag)
        try:
            return self.read_link(path)
        except MalformedLink as e:
            with _FOLLOWED_LOCK:  # the plan, the same-registry probe, a preflight and its run: said once
                key = f"{os.path.abspath(path)}\0{e}"
                first = key not in _WARNED
                _WARNED.add(key)
            if first:
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
        if prefer is not None:
            repo, tag = prefer
            held = self._servable(repo, tag)
            if held is not None:
                return repo, tag, held
            found = self._servable_tag_of(repo)
            if found is not None:
                return found
        for repo in self._repositories(max_dirs):
            found = self._servable_tag_of(repo)
            if found is not None:
                return found
        return None

    def _servable(self, repo: Repository, tag: Tag) -> Optional[Digest]:
        """The digest the registry would serve for repo:tag, or None when it could not."""
        try:
            held = self.current_tag(repo, tag)
            if held is None or self.blob_size(held) is None:
                return None
            if self.read_link(self.layout.revision_link(repo, held)) != held:
                return None  # the registry answers MANIFEST_UNKNOWN for it
        except MalformedLink:
            return None  # (the patch itself names a malformed link of the patched tag)
        return held

    def _servable_tag_of(self, repo: Repository) -> Optional[tuple[Repository, Tag, Digest]]:
        for tag in self.tags(repo):
            held = self._servable(repo, tag)
            if held is not None:
                return repo, tag, held
        return None

    def _repositories(self, max_dirs: int) -> Iterator[Repository]:
        """Repositories of the storage in name order (a walk of at most ``max_dirs`` folders)."""
        base = self.layout.repositories
        seen = 0
        for dirpath, dirnames, _ in os.walk(base):
            seen += 1
            if seen > max_dirs:
                return
            dirnames.sort()
            if "_manifests" in dirnames:
                try:
                    yield Repository.parse(os.path.relpath(dirpath, base).replace(os.sep, "/"))
                except InvalidReference:
                    dirnames[:] = []
                    continue
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]

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

    def _verified(self, digest: Digest, path: Path, st: os.stat_result) -> bool:
        """True when the marker of ``digest`` proves the file at ``path`` (stat ``st``) is the
        one hashed when the marker was written."""
        identity = platform.file_identity(path, st)
        if identity is None:  # this file system cannot prove it: hash again
            return False
        try:
            mark = json.loads(read_own_file(self._verified_marker(digest), MARKER_LIMIT,
                                            what="verified-blob marker") or b"null")
        except (RegpatchError, ValueError):
            return False
        return bool(mark == identity)

    def _remember_verified(self, digest: Digest, path: Path) -> None:
        try:
            mark = platform.file_identity(path, os.stat(path))
            if mark is None:
                return
            self.write_file(self._verified_marker(digest), json.dumps(mark).encode(), durable=False)
        except (RegpatchError, OSError) as e:  # only an optimisation: never fail a patch for it
            # (OSError: e.g. another run installed the staged file meanwhile)
            log.debug("could not record verified blob %s: %s", digest, e)

    # -- writing ------------------------------------------------------------
    def _new_temp(self, final: Path) -> tuple[Path, BinaryIO]:
        """A new temp file in final's folder (mode 0644 whatever the umask, the storage's owner)."""
        self._mkdirs(final.parent)
        with _io("cleaning temp files of", final.parent):
            sweep_temp_files(final.parent)
        tmp = final.parent / f"{TMP_MARK}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            fd = platform.open_file(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)  # RDWR: the copy is hashed back
        except OSError as e:
            _raise_write_error(e, final)
        f = os.fdopen(fd, "wb", buffering=0)
        try:
            platform.set_mode(f.fileno(), FILE_MODE)  # umask-proof
            if self._owner is not None:
                platform.fchown(f.fileno(), self._owner)
        except OSError as e:
            f.close()
            self._discard(tmp)
            _raise_write_error(e, final)
        return tmp, f

    @contextmanager
    def _temp_beside(self, final: Path, durable: bool = True) -> Iterator[BinaryIO]:
        """A temp file in final's folder; renamed onto final when the block succeeds."""
        tmp, f = self._new_temp(final)
        try:
            with f:
                yield f
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            platform.replace(tmp, final)
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

    def write_temp(self, final: Path, data: bytes) -> Path:
        """``data`` in a new temp file beside ``final``, fsynced, NOT renamed: for a caller that
        puts it in place itself (``storage.tagswap``); it removes it with ``discard_temp``."""
        tmp, f = self._new_temp(final)
        try:
            with f:
                f.write(data)
                os.fsync(f.fileno())
        except OSError as e:
            self._discard(tmp)
            _raise_write_error(e, final)
        except BaseException:
            self._discard(tmp)
            raise
        return tmp

    def discard_temp(self, tmp: Path) -> None:
        """Remove a temp file of ``write_temp`` (gone already: nothing to do)."""
        self._discard(tmp)

    def write_file(self, path: Path, data: bytes, durable: bool = True) -> None:
        with self._temp_beside(path, durable) as f:
            f.write(data)

    def write_link(self, path: Path, digest: Digest) -> bool:
        """Write a link file atomically; False (and no write) when it already holds digest."""
        if self.link_ok(path, digest):
            return False
        self.write_file(path, str(digest).encode("ascii"))
        return True

    def remove_link(self, path: Path) -> bool:
        """Remove a link file and the folders it leaves empty up to its ``_manifests`` or
        ``_layers`` folder (as the registry's own delete does); False when it was not there.
        Only a link: a path that does not end in ``link`` or holds no digest is refused."""
        if path.name != "link":
            raise StorageError(f"internal: {path} is not a link file")
        self.read_link(path)  # checked inside the storage; a malformed link is refused, not removed
        with _io("removing", path):
            try:
                platform.remove(path)
            except FileNotFoundError:
                return False
            folder = path.parent
            while folder.name not in ("_manifests", "_layers", "v2") and folder != self._root:
                try:
                    os.rmdir(folder)
                except OSError:
                    break  # not empty (or in use): the registry reads an empty folder as absent too
                folder = folder.parent
            fsync_dir(folder)
        checkpoint("unlink")
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
