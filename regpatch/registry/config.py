"""Read the facts regpatch needs from a registry's ``config.yml``.

* ``storage_root_from_config``: ``storage.filesystem.rootdirectory``, the folder
  that holds ``docker/registry/v2/``.
* ``registry_url_from_config``: the URL a local client reaches the registry at,
  from ``http.addr`` (a wildcard listen address becomes loopback), ``http.prefix``
  and ``http.tls`` (https when a certificate or Let's Encrypt is configured).
* ``url_policy_from_config``: ``validation.manifests.urls.allow`` / ``deny``, the
  policy the registry's API applies to the ``urls`` of layers on a manifest push
  (``UrlPolicy``).

Values are used whole, as the registry (Go) reads them: a rootdirectory or an
address with a trailing newline or surrounding spaces is refused, not trimmed.

Every error is a ``ConfigError`` naming the file and the key. The registry's own
``REGISTRY_*`` environment overrides apply to the registry process, not to us,
and are not read here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

import yaml

from regpatch.errors import ConfigError
from regpatch.yamldoc import DuplicateKey, load_yaml

PathLike = Union[str, Path]

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)


def _load(config_path: PathLike) -> dict:
    path = Path(config_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"registry config {path} does not exist; pass the config.yml the "
                          "registry is started with") from e
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(f"registry config {path} cannot be read: {reason}") from e
    try:
        doc = load_yaml(text)
    except DuplicateKey as e:
        raise ConfigError(f"registry config {path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"registry config {path} is not valid YAML{where}: {problem}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"registry config {path} must be a YAML mapping at the top level")
    return doc


def _get(doc: dict, dotted: str, path: PathLike, *, required: bool = True) -> Any:
    node: Any = doc
    walked = []
    for key in dotted.split("."):
        walked.append(key)
        if node is None or not isinstance(node, dict):
            if not required:
                return None
            raise ConfigError(f"registry config {path}: key {'.'.join(walked[:-1])} must be a mapping")
        if key not in node or node[key] is None:
            if not required:
                return None
            raise ConfigError(f"registry config {path}: key {dotted} is missing")
        node = node[key]
    return node


def storage_root_from_config(config_path: PathLike) -> Path:
    """``storage.filesystem.rootdirectory`` as an absolute ``Path``."""
    doc = _load(config_path)
    storage = _get(doc, "storage", config_path)
    if not isinstance(storage, dict):
        raise ConfigError(f"registry config {config_path}: key storage must be a mapping")
    if "filesystem" not in storage:
        drivers = sorted(k for k in storage if k not in {"cache", "delete", "maintenance", "redirect"})
        found = f" (it uses {', '.join(drivers)})" if drivers else ""
        raise ConfigError(f"registry config {config_path}: key storage.filesystem is missing{found}; "
                          "regpatch patches only the filesystem storage driver")
    root = _get(doc, "storage.filesystem.rootdirectory", config_path)
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"registry config {config_path}: key storage.filesystem.rootdirectory "
                          f"must be a non-empty path string, got {root!r}")
    if _CONTROL.search(root) or root != root.strip():
        raise ConfigError(f"registry config {config_path}: key storage.filesystem.rootdirectory is "
                          f"{root!r}, with surrounding spaces or a control character; the registry "
                          "uses the value exactly as written: fix the quoting in the file")
    p = Path(root)
    if not p.is_absolute():
        raise ConfigError(f"registry config {config_path}: key storage.filesystem.rootdirectory "
                          f"is the relative path {root!r}; it depends on the registry's working "
                          "folder, make it absolute")
    return p


def _split_addr(addr: str, config_path: PathLike) -> tuple[str, int]:
    bad = ConfigError(f"registry config {config_path}: key http.addr must be 'host:port' or ':port', "
                      f"got {addr!r}")
    host, sep, port_s = addr.rpartition(":")
    if not sep or not _PORT.fullmatch(port_s) or _CONTROL.search(host) or " " in host:
        raise bad
    port = int(port_s)
    if not 0 < port < 65536:
        raise bad
    if host.startswith("[") != host.endswith("]"):
        raise bad
    return host, port


def registry_url_from_config(config_path: PathLike) -> str:
    """The base URL a client on this machine reaches the registry at.

    ``:5000`` and ``0.0.0.0:5000`` (and ``[::]:5000``) become ``127.0.0.1:5000``;
    the scheme is https when ``http.tls.certificate`` (or ``http.tls.letsencrypt``)
    is set; a ``http.prefix`` is kept as the URL path.
    """
    doc = _load(config_path)
    http = _get(doc, "http", config_path)
    if not isinstance(http, dict):
        raise ConfigError(f"registry config {config_path}: key http must be a mapping")
    net = http.get("net") or "tcp"
    if net != "tcp":
        raise ConfigError(f"registry config {config_path}: key http.net is {net!r}; "
                          "only a tcp listener can be reached over HTTP by regpatch")
    addr = _get(doc, "http.addr", config_path)
    if not isinstance(addr, str):
        raise ConfigError(f"registry config {config_path}: key http.addr must be a string, got {addr!r}")
    host, port = _split_addr(addr, config_path)
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    tls = http.get("tls")
    if tls is not None and not isinstance(tls, dict):
        raise ConfigError(f"registry config {config_path}: key http.tls must be a mapping")
    https = tls is not None and bool(tls.get("certificate") or tls.get("letsencrypt"))
    prefix = http.get("prefix") or ""
    if not isinstance(prefix, str):
        raise ConfigError(f"registry config {config_path}: key http.prefix must be a string")
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return f"{'https' if https else 'http'}://{host}:{port}{prefix}"


# -- validation.manifests.urls: the registry's policy for layer URLs -------------------------


def blob_descriptor_cache(config_path: PathLike) -> str:
    """``storage.cache.blobdescriptor`` ('' when absent): with ``inmemory`` (or
    ``redis``) a running registry remembers a blob's size until it restarts."""
    doc = _load(config_path)
    value = _get(doc, "storage.cache.blobdescriptor", config_path, required=False)
    return value.strip().lower() if isinstance(value, str) else ""
