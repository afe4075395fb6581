"""Fast layer: real files in tmp folders; no registry process, no skopeo, no Prefect.

The ``site`` fixture is a registry storage holding the seed's old servercore image
(written by the engine itself from an OCI layout), and the month's patch as a
staged bundle and an OCI layout, all real bytes (``regpatch.demo.images``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from regpatch import engine, interrupt
from regpatch.demo.images import scenario_servercore
from regpatch.digest import Digest
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget
from regpatch.storage.layout import Layout

REPO, TAG = "servercore", "ltsc2019"


def tree_hash(root: Path) -> str:
    """Names, modes and bytes of every file and folder under root (symlinks by target)."""
    h = hashlib.sha256()
    if not root.exists():
        return "absent"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)}\0{st.st_mode:o}\0".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class Site:
    root: Path
    scenario: dict
    old: Digest
    new: Digest

    @property
    def v2(self) -> Path:
        return self.root / "docker/registry/v2"

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    def current(self, tag: str = TAG) -> bytes:
        return self.current_of(REPO, tag)

    def current_of(self, repository: str, tag: str = TAG) -> bytes:
        return self.layout.tag_current_link(Repository(repository), Tag(tag)).read_bytes()

    def request(self, bundle=None, **kw) -> engine.PatchRequest:
        target = kw.pop("target", None) or RegistryTarget.resolve(storage=str(self.root),
                                                                  state_dir=kw.pop("state_dir", None))
        return engine.PatchRequest(bundle=str(bundle or self.scenario["staged"]),
                                   repository=Repository.parse(kw.pop("repository", REPO)),
                                   tag=Tag.parse(kw.pop("tag", TAG)), target=target, **kw)

    def docker_hash(self) -> str:
        return tree_hash(self.root / "docker")


@pytest.fixture(scope="session")
def scenario_files(tmp_path_factory):
    """The sample images are built once per session (real gzip layers) and only read."""
    return scenario_servercore(tmp_path_factory.mktemp("scenario"), base_size=256 << 10, delta_size=64 << 10)


@pytest.fixture
def site(tmp_path, scenario_files) -> Site:
    root = tmp_path / "storage"
    (root / "docker/registry/v2").mkdir(parents=True)
    s = Site(root, scenario_files, scenario_files["old"].manifest_digest, scenario_files["new"].manifest_digest)
    engine.patch(s.request(scenario_files["old_layout"]))  # the image the site runs today
    assert s.current() == str(s.old).encode()
    return s


@pytest.fixture(autouse=True)
def _no_stop_request():
    """A test that asks the process to stop must not leak the request into the next."""
    interrupt.reset()
    yield
    interrupt.reset()
