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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import ConfigError

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
        doc = yaml.safe_load(text)
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
    https = bool(tls) and bool(tls.get("certificate") or tls.get("letsencrypt"))
    prefix = http.get("prefix") or ""
    if not isinstance(prefix, str):
        raise ConfigError(f"registry config {config_path}: key http.prefix must be a string")
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return f"{'https' if https else 'http'}://{host}:{port}{prefix}"


# -- validation.manifests.urls: the registry's policy for layer URLs -------------------------

@dataclass(frozen=True)
class UrlPolicy:
    """The URL rules a distribution registry applies to a pushed manifest.

    From distribution 2.8's ``registry/handlers/app.go`` and the schema2 / OCI
    manifest handlers of ``registry/storage``, for each URL of a descriptor
    that is checked (see ``checked_descriptors`` in ``regpatch.plan``):

    * ``url.Parse`` must succeed (no control character, well-formed ``%``
      escapes, a valid host and port), the scheme must be ``http`` or
      ``https`` and the fragment empty, always;
    * unless ``validation.disabled: true``: when neither ``allow`` nor ``deny``
      is configured the registry allows NO URL at all (it installs ``^$`` as
      the allow rule); otherwise the URL must match one of the ``allow``
      regular expressions (when there are any) and none of the ``deny`` ones.
      A match is a search anywhere in the URL, as Go's ``MatchString``.

    ``validation.enabled`` is deprecated and has no effect on its own: the
    registry turns the checks on unless ``disabled`` is true.
    """

    source: str
    enabled: bool = True
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allow", tuple(_go_regexp(p, "allow", self.source) for p in self.allow))
        object.__setattr__(self, "_deny", tuple(_go_regexp(p, "deny", self.source) for p in self.deny))

    def refusal(self, url: str) -> Optional[str]:
        """None when the registry's API accepts ``url`` in a manifest, else the rule refusing it."""
        problem = go_url_problem(url)
        if problem:
            return problem
        if not self.enabled:
            return None
        if not self.allow and not self.deny:
            return (f"{self.source} configures neither validation.manifests.urls.allow nor deny, "
                    "so the registry allows no URL at all")
        if self._allow and not any(r.search(url) for r in self._allow):  # type: ignore[attr-defined]
            return (f"it matches none of validation.manifests.urls.allow "
                    f"{list(self.allow)!r} of {self.source}")
        for pattern, r in zip(self.deny, self._deny):  # type: ignore[attr-defined]
            if r.search(url):
                return f"it matches validation.manifests.urls.deny {pattern!r} of {self.source}"
        return None


def url_policy_from_config(config_path: PathLike) -> UrlPolicy:
    """The ``UrlPolicy`` of a registry config (``validation`` section, 2.8 semantics)."""
    doc = _load(config_path)
    source = f"registry config {config_path}"
    validation = doc.get("validation")
    if validation is None:
        return UrlPolicy(source)
    if not isinstance(validation, dict):
        raise ConfigError(f"{source}: key validation must be a mapping")
    disabled = validation.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ConfigError(f"{source}: key validation.disabled must be true or false, got {disabled!r}")
    manifests = validation.get("manifests") or {}
    if not isinstance(manifests, dict):
        raise ConfigError(f"{source}: key validation.manifests must be a mapping")
    urls = manifests.get("urls") or {}
    if not isinstance(urls, dict):
        raise ConfigError(f"{source}: key validation.manifests.urls must be a mapping")
    lists = {}
    for key in ("allow", "deny"):
        value = urls.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: key validation.manifests.urls.{key} must be a list of "
                              f"regular expressions (strings), got {value!r}")
        lists[key] = tuple(value)
    return UrlPolicy(source, not disabled, lists["allow"], lists["deny"])


_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_GO_ONLY = re.compile(r"\\[pPC]|\(\?[a-zA-Z]*U")          # Unicode classes, \C, ungreedy flag
_PY_ONLY = re.compile(r"\(\?(?:=|!|<=|<!|P=|#)|\\[1-9]|\(\?\(")  # lookaround, backreferences


def _go_regexp(pattern: str, key: str, source: str) -> "re.Pattern[str]":
    """A Go (RE2) regular expression of the config as a Python one, same matches.

    Handled: ``\\z`` (end of text), ``\\Q...\\E`` (literal text), POSIX classes
    ``[[:alpha:]]``, a leading ``(?flags)``; ``\\d \\w \\s \\b`` are ASCII as in Go.
    Constructs Go refuses (lookaround, backreferences) or that Python's ``re``
    cannot express (``\\p{...}``) are a ConfigError naming the key.
    """
    where = f"{source}: validation.manifests.urls.{key} entry {pattern!r}"
    if _PY_ONLY.search(pattern):
        raise ConfigError(f"{where} is not an RE2 regular expression (lookaround or "
                          "backreference); the registry cannot start with it")
    if _GO_ONLY.search(pattern):
        raise ConfigError(f"{where} uses RE2 syntax regpatch cannot evaluate (\\p classes, \\C or "
                          "the U flag); rewrite it or skip the URL policy check explicitly")
    text = re.sub(r"\\Q(.*?)(?:\\E|$)", lambda m: re.escape(m.group(1)), pattern, flags=re.S)
    text = re.sub(r"\[:(\^?)([a-z]+):\]",
                  lambda m: _posix_class(m, where), text)
    text = text.replace("\\z", "\\Z")
    lead = re.match(r"\(\?([imsU]+)\)", text)
    if lead:
        text = f"(?{lead.group(1)}:{text[lead.end():]})"
    try:
        return re.compile(text, re.ASCII)
    except re.error as e:
        raise ConfigError(f"{where} is not a regular expression regpatch can evaluate: {e}") from None


def _posix_class(m: "re.Match[str]", where: str) -> str:
    negate, name = m.group(1), m.group(2)
    if name not in _POSIX_CLASSES:
        raise ConfigError(f"{where}: unknown character class [:{name}:]")
    if negate:
        raise ConfigError(f"{where}: negated POSIX class [:^{name}:] is not supported by regpatch")
    return _POSIX_CLASSES[name]


# Go's net/url.Parse, the parts that can fail, and the two checks the registry adds.
_SCHEME_CHARS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*", re.ASCII)
_HEX2 = re.compile(r"%[0-9A-Fa-f]{2}", re.ASCII)
_HOST_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               "-_.~!$&'()*+,;=:[]<>\"")
_USERINFO_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   "-._:~!$&'()*+,;=%@")


def _bad_escape(s: str, host: bool = False) -> bool:
    i = 0
    while i < len(s):
        c = s[i]
        if c == "%":
            if not _HEX2.match(s, i):
                return True
            if host and int(s[i + 1], 16) < 8 and s[i:i + 3] != "%25":
                return True
            i += 3
            continue
        if host and ord(c) < 0x80 and c not in _HOST_OK:
            return True
        i += 1
    return False


def _valid_port(colon_port: str) -> bool:
    return colon_port == "" or (colon_port[0] == ":" and all("0" <= c <= "9" for c in colon_port[1:]))


def go_url_problem(url: str) -> Optional[str]:
    """Why the registry refuses this layer URL before any allow/deny rule, or None.

    Mirrors Go's ``url.Parse`` (control characters, the scheme, ``%``
    escapes, host characters, the port) and the registry's own conditions:
    scheme ``http``/``https``, empty fragment.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "it contains a control character (Go's url.Parse refuses it)"
    rest, _, fragment = url.partition("#")
    if fragment and _bad_escape(fragment):
        return "its fragment has a malformed %-escape"
    if fragment:
        return "it has a #fragment (the registry refuses layer URLs with one)"
    m = _SCHEME_CHARS.match(rest)
    if rest.startswith(":"):
        return "it has no scheme (missing protocol scheme)"
    scheme = ""
    if m and rest[m.end():m.end() + 1] == ":":
        scheme, rest = m.group().lower(), rest[m.end() + 1:]
    if scheme not in ("http", "https"):
        return f"its scheme is {scheme!r}, not http or https"
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest = rest.partition("?")[0]
    if not rest.startswith("/"):
        return None  # an opaque URL ("http:x"): Go accepts it as such
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        userinfo, at, host = authority.rpartition("@")
        if not at:
            host = authority
        if host.startswith("["):
            close = host.rfind("]")
            if close < 0:
                return "its host lacks the closing ']'"
            if not _valid_port(host[close + 1:]):
                return f"its port {host[close + 1:]!r} is not a number"
        elif ":" in host and not _valid_port(host[host.rfind(":"):]):
            return f"its port {host[host.rfind(':'):]!r} is not a number"
        if _bad_escape(host, host=True):
            return "its host contains a character or %-escape a URL host cannot hold"
        if at and (any(c not in _USERINFO_OK for c in userinfo) or _bad_escape(userinfo)):
            return "its user information is malformed"
    if _bad_escape(rest):
        return "its path has a malformed %-escape"
    return None


def blob_descriptor_cache(config_path: PathLike) -> str:
    """``storage.cache.blobdescriptor`` ('' when absent): with ``inmemory`` (or
    ``redis``) a running registry remembers a blob's size until it restarts."""
    doc = _load(config_path)
    value = _get(doc, "storage.cache.blobdescriptor", config_path, required=False)
    return value.strip().lower() if isinstance(value, str) else ""
