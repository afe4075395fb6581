"""RegistryTarget: which registry a patch is about, and how to reach its API.

Built from the command-line options (or flow parameters): the storage root
and URL come from ``--storage``/``--registry-url`` or from the registry's own
``config.yml``. Credentials are not kept here: they are loaded from the
environment or the auth file when a client is made, so a target can be
logged, passed to a task or shown in an artifact without leaking them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from regpatch.errors import UsageError
from regpatch.options import opt
from regpatch.registry.client import RegistryClient
from regpatch.registry.config import registry_url_from_config, storage_root_from_config
from regpatch.registry.credentials import load_credentials
from regpatch.storage.store import RegistryStore


@dataclass(frozen=True)
class RegistryTarget:
    storage: str
    url: Optional[str] = None
    config: Optional[str] = None
    auth_file: Optional[str] = None
    ca_file: Optional[str] = None
    insecure: bool = False
    state_dir: Optional[str] = None

    @classmethod
    def resolve(cls, *, storage: Optional[str] = None, url: Optional[str] = None,
                config: Optional[str] = None, auth_file: Optional[str] = None,
                ca_file: Optional[str] = None, insecure: bool = False,
                state_dir: Optional[str] = None) -> "RegistryTarget":
        if config:
            storage = storage or str(storage_root_from_config(config))
            url = url or registry_url_from_config(config)
        if not storage:
            raise UsageError(f"the registry storage is unknown: pass {opt.storage} (the registry's "
                             f"rootdirectory) or {opt.registry_config}")
        if url is not None and any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in url):
            raise UsageError(f"registry URL {url!r} contains a control character (a newline?); "
                             "pass the URL alone, e.g. https://registry.example:5000")
        if url and "://" not in url:
            url = ("http://" if insecure else "https://") + url
        return cls(str(storage), url.rstrip("/") if url else None, config, auth_file, ca_file, insecure,
                   state_dir)

    def store(self):
        """The RegistryStore of this registry's storage (and regpatch's state folder)."""
        return RegistryStore(self.storage, state_dir=self.state_dir)

    @property
    def config_path(self):
        return Path(self.config) if self.config else None

    def describe(self) -> str:
        """How logs and summaries name this registry (never a credential)."""
        return self.storage + (f" ({self.url})" if self.url else "")

    def check(self) -> None:
        """Everything about the target that can be checked without the network: the URL
        (scheme, no credentials in it), the CA file (a readable PEM bundle), the auth
        file (readable, valid). Raises UsageError; a client is built and closed unused."""
        for option, kind, path in ((opt.registry_ca, "CA", self.ca_file),
                                   (opt.registry_auth_file, "auth", self.auth_file)):
            if path and not os.path.isfile(path):
                raise UsageError(f"{option}: {kind} file {path} does not exist or is not a file")
            if path and not os.access(path, os.R_OK):
                raise UsageError(f"{option}: {path} is not readable by this user")
        if not self.url:
            if self.auth_file or self.ca_file:
                raise UsageError(f"{opt.registry_auth_file} and {opt.registry_ca} need the registry's URL "
                                 f"({opt.registry_url} or {opt.registry_config})")
            return
        with self.client():
            pass

    @property
    def host(self) -> str:
        """host:port as pull references name the registry."""
        if not self.url:
            raise UsageError(f"no registry URL: pass {opt.registry_url} or {opt.registry_config}")
        return urlsplit(self.url).netloc

    def tls_verify(self):
        if self.insecure:
            return False
        return self.ca_file or True

    def client(self) -> RegistryClient:
        creds = load_credentials(self.host, auth_file=self.auth_file)
        assert self.url is not None  # self.host raised UsageError otherwise
        return RegistryClient(self.url, credentials=creds, ca_file=self.ca_file, insecure=self.insecure)
