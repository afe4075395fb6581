"""The registry's URL policy for foreign layers (``validation.manifests.urls`` of its config.yml), and the
URL grammar every registry enforces, both as distribution applies them to a pushed manifest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from regpatch.errors import ConfigError
from regpatch.registry.config import PathLike, _load


@dataclass(frozen=True)
class UrlPolicy:
    """The URL rules a distribution registry applies to a pushed manifest.

    From distribution 2.8's ``registry/handlers/app.go`` and the schema2 / OCI
    manifest handlers of ``registry/storage``, for each URL of a descriptor
    that is checked (see ``checked_descriptors`` in ``regpatch.engine.plan``):

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
        for pattern, r in zip(self.deny, self._deny, strict=True):  # type: ignore[attr-defined]
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


def go_url_problem(url: str) -> Optional[str]:  # noqa: C901  (Go's url.Parse, step by step, to read beside it)
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

