"""Text that reaches an operator: control characters escaped, secrets redacted.

* ``escape_controls``: names from a bundle or a storage may hold newlines,
  carriage returns, terminal escape sequences or bidirectional overrides; a
  layer file named ``"x\\nregpatch: error: ..."`` must not forge a line of
  output. Every such character becomes a visible escape (``\\n``, ``\\x1b``,
  ``\\u202e``). ``RegpatchError.__str__`` and every ``regpatch.*`` log record
  (``install_log_escaping``) pass through it: one place each. Multi-line text
  regpatch composes from escaped parts is marked ``SafeText`` to keep its lines.
* credentials: ONE detector, ``find_credentials``, says where a text carries a
  credential (the value of ``--creds``/``-u``/``-p``/``--password``/``--token``... in
  every spelling, ``user:password@`` in a URL, ``*_PASSWORD=``/``*_TOKEN=``/``*_SECRET=``
  assignments, an ``Authorization:`` header), telling a literal secret from a
  reference (``$VAR``, ``${VAR}``, ``%VAR%``, ``$(...)``). Both of its uses go
  through it: the refusal of a value a Prefect run would store
  (``regpatch.params.refuse_inline_credentials``: ``has_credentials``) and the
  redaction of every message (``redact``: error messages in
  ``RegpatchError.__str__``, every ``regpatch.*`` log record, reports, artifacts and
  history lines), so they never disagree.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

# -- control characters --------------------------------------------------------------

# C0 and C1 controls (with DEL), line and paragraph separators, and the bidirectional
# marks, embeddings, overrides and isolates (they reorder what a terminal shows).
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(chr(c) for c in sorted(_BIDI)) + "]")


def escape_controls(text: str) -> str:
    """``text`` with every control, line/paragraph separator and bidi control escaped.

    Printable text, spaces and non-ASCII letters are kept as they are; the
    result never spans more than one line.
    """
    if not _UNSAFE_RE.search(text):
        return text
    return _UNSAFE_RE.sub(lambda m: _escape(m.group()), text)


def shown(text: object, limit: int = 200) -> str:
    """A string from a bundle, a storage or a server, bounded and escaped, as it may be
    printed on a terminal (``escape_controls`` of at most ``limit`` characters)."""
    value = str(text)
    return escape_controls(value[:limit]) + ("..." if len(value) > limit else "")


class SafeText(str):
    """Text regpatch composed itself whose untrusted parts are already escaped (with
    ``escape_controls``), so its own line breaks may stay: a multi-line plan, a table.

    A ``regpatch.*`` log record whose format string and string arguments are all
    ``SafeText`` is left as it is; any other record is escaped whole.
    """


_FACTORY_MARK = "_regpatch_escaping"


def install_log_escaping() -> None:
    """Escape control characters and redact credentials (``redact``) in every record of the
    ``regpatch`` logger tree.

    Done in the log record factory, when the record is made: the message is
    formatted with its arguments once, escaped, and stored as ``record.msg``
    with no arguments left. Every handler attached anywhere (the console,
    Prefect's API handler that the flows add to the ``regpatch`` logger,
    pytest's caplog) therefore sees the escaped text, whatever its formatter.
    Records of other loggers are not touched. Idempotent; it wraps whatever
    factory was installed before it.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, _FACTORY_MARK, False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        name = record.name
        if name == "regpatch" or name.startswith("regpatch."):
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: leave it to the handler to report
                return record
            if _vouched(record):  # its escaped lines stay; credentials never do
                record.msg, record.args = SafeText(redact(message)), ()
            else:
                record.msg, record.args = escape_controls(redact(message)), ()
        return record

    setattr(factory, _FACTORY_MARK, True)
    logging.setLogRecordFactory(factory)


def _vouched(record: logging.LogRecord) -> bool:
    if not isinstance(record.msg, SafeText):
        return False
    args = record.args if isinstance(record.args, tuple) else (record.args,) if record.args else ()
    return all(isinstance(a, SafeText) or (isinstance(a, (int, float)) and not isinstance(a, bool))
               or a is None for a in args)


# -- credentials: one detector, two uses (refusal and redaction) --------------------------

REDACTED = "***"

# one shell word: quoted strings, $(commands) and runs of characters that end no word, glued together
_WORD = r"""(?:'[^']*'|"(?:[^"\\]|\\.)*"|\$'(?:[^'\\]|\\.)*'|\$\([^()]*\)|[^\s'";&|<>()]+)+"""
_BEFORE_OPTION = r"(?<![\w./-])"     # an option starts a word: not "re-run", not "a/-p"

# options whose whole value is a secret: long ones with ' ' or '=', -p also attached (-pPW)
_SECRET_LONG = re.compile(_BEFORE_OPTION + r"(?P<opt>--(?:[A-Za-z0-9]+-)*(?:password|passwd|token|secret|"
                          r"passphrase))(?:=|\s+)(?P<val>" + _WORD + ")", re.IGNORECASE)
_SECRET_SHORT = re.compile(_BEFORE_OPTION + r"(?P<opt>-p)(?:=|\s+|(?=[^\s=]))(?P<val>" + _WORD + ")")
# options whose value is user:secret (the part after the first colon is the secret):
# -u / --user (curl, wget), --creds / --src-creds / --dest-creds / --*-creds (skopeo, podman)
_PAIR_LONG = re.compile(_BEFORE_OPTION + r"(?P<opt>--(?:user|(?:[A-Za-z0-9]+-)*creds?))(?:=|\s+)"
                        r"(?P<val>" + _WORD + ")", re.IGNORECASE)
_PAIR_SHORT = re.compile(_BEFORE_OPTION + r"(?P<opt>-u)(?:=|\s+|(?=[^\s=]))(?P<val>" + _WORD + ")")
# scheme://user:secret@host
_URL_USERINFO = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@'\"]*:(?P<val>[^\s/@'\"]*)@")
# NAME=secret where NAME holds PASSWORD, PASSWD, TOKEN, SECRET or PASSPHRASE (any case); a name
# that ends in _FILE, _PATH, _DIR or _URL names where a secret is, not the secret; true, false,
# yes, no, none, null, 0 and 1 are switches
_ASSIGNMENT = re.compile(r"(?<![\w-])(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<val>" + _WORD + ")")
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|PASSPHRASE", re.IGNORECASE)
_NOT_SECRET_NAME = re.compile(r"_(?:FILE|PATH|DIR|URL)$", re.IGNORECASE)
_SWITCH = re.compile(r"true|false|yes|no|none|null|[01]", re.IGNORECASE)  # identity_token=True is a switch
# Authorization: Basic xxx / Bearer xxx (curl -H, wget --header)
_AUTH_HEADER = re.compile(r"(?i:(?:proxy-)?authorization)\s*:\s*(?:[A-Za-z]+\s+)?(?P<val>[^\s'\"]+)")
# a value that only names where the secret is: $VAR, ${VAR}, %VAR% (cmd), $(command)
_REFERENCE = re.compile(r"\$[A-Za-z_]\w*|\$\{[A-Za-z_]\w*\}|%[A-Za-z_]\w*%|\$\([^()]*\)")
_VARIABLE = re.compile(r"\$([A-Za-z_]\w*)|\$\{([A-Za-z_]\w*)\}|%([A-Za-z_]\w*)%")
_QUOTES = "'\""
# what -p and -u also take that is no secret: a path (mkdir -p /x), a port mapping (docker run
# -p 5000:5000, -p 127.0.0.1:5000:5000/tcp), a numeric uid:gid (docker run -u 1000:1000)
_NOT_A_PASSWORD = re.compile(r"(?:/|\./|\.\./|~/)\S*|(?:[\d.]+:)?\d{1,5}(?:-\d{1,5})?:\d{1,5}(?:-\d{1,5})?"
                             r"(?:/(?:tcp|udp|sctp))?")
_UID_GID = re.compile(r"\d+:\d+")
# flags that begin with -p and are no attached password (openssl -pubout/-passin, find -print/-prune...)
_P_FLAGS = frozenset({"ubout", "ubin", "assin", "assout", "rint", "rint0", "rintf", "rune", "ath", "erm", "id"})


@dataclass(frozen=True)
class Credential:
    """Where a text carries a credential: ``text[start:end]`` is the secret value (quotes
    around it excluded); ``carrier`` says what carries it, in words an operator reads (never
    the value, and never in a form the detector would take for a credential itself: it ends
    with the option's name); ``reference`` is True when the value only names a variable or a command
    (``$PW``, ``${PW}``, ``%PW%``, ``$(cat f)``): a reference, not a secret."""

    start: int
    end: int
    carrier: str
    reference: bool

    def value(self, text: str) -> str:
        return text[self.start:self.end]


def _span(text: str, start: int, end: int, carrier: str) -> Optional[Credential]:
    """The credential of ``text[start:end]`` with the quotes around it trimmed (None: empty)."""
    while start < end and text[start] in _QUOTES:
        start += 1
    while end > start and text[end - 1] in _QUOTES:
        end -= 1
    if start >= end:
        return None
    return Credential(start, end, carrier, bool(_REFERENCE.fullmatch(text[start:end])))


def _pair(text: str, m: re.Match, carrier: str) -> Optional[Credential]:
    """user:secret: the secret is after the first colon (no colon: only a user name)."""
    colon = text.find(":", m.start("val"), m.end("val"))
    return None if colon < 0 else _span(text, colon + 1, m.end("val"), carrier)


def scan_credentials(text: str) -> list[Credential]:
    """Every place ``text`` carries a credential, references included, in text order
    (overlaps merged: a credential found twice counts once)."""
    found: list[Optional[Credential]] = []
    for m in _SECRET_LONG.finditer(text):
        found.append(_span(text, m.start("val"), m.end("val"), f"the value given to {m.group('opt')}"))
    for m in _SECRET_SHORT.finditer(text):
        attached = m.start("val") == m.end("opt")
        if not _NOT_A_PASSWORD.fullmatch(m.group("val").strip(_QUOTES)) \
                and not (attached and m.group("val") in _P_FLAGS):
            found.append(_span(text, m.start("val"), m.end("val"), "the value given to -p"))
    for m in _PAIR_LONG.finditer(text):
        found.append(_pair(text, m, f"the password given to {m.group('opt')}"))
    for m in _PAIR_SHORT.finditer(text):
        if not _UID_GID.fullmatch(m.group("val").strip(_QUOTES)):
            found.append(_pair(text, m, "the password given to -u"))
    for m in _URL_USERINFO.finditer(text):
        found.append(_span(text, m.start("val"), m.end("val"), "the password of a URL's user"))
    for m in _ASSIGNMENT.finditer(text):
        name = m.group("name")
        if _SECRET_NAME.search(name) and not _NOT_SECRET_NAME.search(name) \
                and not _SWITCH.fullmatch(m.group("val").strip(_QUOTES)):
            found.append(_span(text, m.start("val"), m.end("val"), f"the value assigned to {name}"))
    for m in _AUTH_HEADER.finditer(text):
        found.append(_span(text, m.start("val"), m.end("val"), "an Authorization header"))
    spans = sorted((c for c in found if c is not None), key=lambda c: (c.start, -c.end))
    merged: list[Credential] = []
    for c in spans:
        if merged and c.start < merged[-1].end:
            last = merged[-1]
            if c.end > last.end:  # overlapping: one span, a secret if either part is
                merged[-1] = Credential(last.start, c.end, last.carrier, last.reference and c.reference)
            continue
        merged.append(c)
    return merged


def find_credentials(text: str) -> list[Credential]:
    """The literal credentials of ``text`` (references are not secrets)."""
    return [c for c in scan_credentials(text) if not c.reference]


def has_credentials(text: Optional[str]) -> bool:
    """True when ``text`` carries a credential literally (a value a Prefect run must not store)."""
    return bool(text) and bool(find_credentials(text or ""))


def referenced_variables(text: str) -> list[str]:
    """The variables ``text`` names where a credential goes (``--creds alice:$PW`` -> PW):
    their values are secrets wherever they show up (a command's stderr)."""
    names: list[str] = []
    for c in scan_credentials(text):
        for m in _VARIABLE.finditer(c.value(text)):
            name = next(g for g in m.groups() if g)
            if name not in names:
                names.append(name)
    return names


def referenced_secrets(text: str, environ: Optional[Mapping[str, str]] = None) -> tuple[str, ...]:
    """The values (in ``environ``, default ``os.environ``) of the variables ``text`` names where a
    credential goes: what a command that expands them may print, to redact from its output."""
    env = os.environ if environ is None else environ
    return tuple(v for v in (env.get(n) for n in referenced_variables(text)) if v)


def command_secrets(text: str, environ: Optional[Mapping[str, str]] = None) -> tuple[str, ...]:
    """Every secret a command carries or expands: its literal credentials and the values of the
    variables it names where a credential goes. Its output (a failing command's stderr line) is
    redacted with them: a secret it echoes is hidden wherever it shows."""
    return tuple(c.value(text) for c in find_credentials(text)) + referenced_secrets(text, environ)


def redact(text: str, extra_secrets: Iterable[str] = ()) -> str:
    """``text`` with every literal credential ``find_credentials`` finds (wherever its value shows
    in the text), and every string of ``extra_secrets`` (3 characters or more), replaced by
    ``***``. References stay: they are not secrets."""
    if not text:
        return text
    out = text
    # a secret found in a credential position is hidden wherever else it shows in the text too
    found = [c.value(text) for c in find_credentials(text)]
    for secret in sorted({s for s in (*extra_secrets, *found) if s and len(s) >= 3}, key=len, reverse=True):
        out = out.replace(secret, REDACTED)
    for c in reversed(find_credentials(out)):
        out = out[:c.start] + REDACTED + out[c.end:]
    return out


def redact_command(text: str, extra_secrets: Iterable[str] = ()) -> str:
    """A command line as it may be shown: ``redact`` (the name its callers know)."""
    return redact(text, extra_secrets)
