"""Text that reaches an operator: control characters escaped, secrets redacted.

* ``escape_controls``: names from a bundle or a storage may hold newlines,
  carriage returns, terminal escape sequences or bidirectional overrides; a
  layer file named ``"x\\nregpatch: error: ..."`` must not forge a line of
  output. Every such character becomes a visible escape (``\\n``, ``\\x1b``,
  ``\\u202e``). ``RegpatchError.__str__`` and every ``regpatch.*`` log record
  (``install_log_escaping``) pass through it: one place each. Multi-line text
  regpatch composes from escaped parts is marked ``SafeText`` to keep its lines.
* ``redact_command``: a command line (``--verify-command``) shown in a log
  line or an error, with the values of credential options, ``user:password@``
  in URLs, ``Authorization:`` headers and ``*_PASSWORD=`` / ``*_TOKEN=`` /
  ``*_SECRET*=`` assignments replaced by ``***``.
"""

from __future__ import annotations

import logging
import re

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
    """Escape control characters in every record of the ``regpatch`` logger tree.

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
            if _vouched(record):
                return record
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: leave it to the handler to report
                return record
            record.msg, record.args = escape_controls(message), ()
        return record

    setattr(factory, _FACTORY_MARK, True)
    logging.setLogRecordFactory(factory)


def _vouched(record: logging.LogRecord) -> bool:
    if not isinstance(record.msg, SafeText):
        return False
    args = record.args if isinstance(record.args, tuple) else (record.args,) if record.args else ()
    return all(isinstance(a, SafeText) or (isinstance(a, (int, float)) and not isinstance(a, bool))
               or a is None for a in args)


# -- secrets in command lines ------------------------------------------------------

REDACTED = "***"

# one shell word: a quoted string or a run of non-blank characters
_WORD = r"""(?:'[^']*'|"(?:[^"\\]|\\.)*"|\$'(?:[^'\\]|\\.)*'|[^\s'"]+)+"""

# options whose value is a secret (with a space or '=' before the value)
_SECRET_OPTION = re.compile(
    r"(?P<opt>(?<![\w-])(?:--(?:[A-Za-z0-9]+-)*(?:creds|password|passwd|registry-token|token|secret|"
    r"passphrase|identity-token)|-p))(?P<sep>=|\s+)(?P<val>" + _WORD + ")")
# -u / --user user:password (curl and friends): the part after the colon
_USER_OPTION = re.compile(r"(?P<opt>(?<![\w-])(?:--user|-u))(?P<sep>=|\s+)(?P<user>['\"]?[^\s:'\"]*):"
                          r"(?P<val>" + _WORD + ")")
# scheme://user:password@host
_URL_USERINFO = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@'\"]*):(?P<val>[^\s/@'\"]*)@")
# NAME=value where NAME holds PASSWORD, PASSWD, TOKEN or SECRET (any case)
_SECRET_ASSIGNMENT = re.compile(r"(?P<name>(?<![\w-])(?:[A-Za-z_][A-Za-z0-9_]*)?(?:PASSWORD|PASSWD|TOKEN|SECRET)"
                                r"[A-Za-z0-9_]*)=(?P<val>" + _WORD + ")?", re.IGNORECASE)
# Authorization: Basic xxx / Bearer xxx (curl -H, wget --header)
_AUTH_HEADER = re.compile(r"(?P<pre>(?i:authorization)\s*:\s*(?:[A-Za-z]+\s+)?)(?P<val>[^\s'\"]+)")


def redact_command(text: str, extra_secrets: tuple[str, ...] = ()) -> str:
    """A command line with its secrets replaced by ``***``.

    Hidden: the value after ``--creds``, ``--src-creds``, ``--password``,
    ``-p``, ``--registry-token`` (and any ``--*-creds``, ``--*-password``,
    ``--*-token``, ``--*-secret``), with a space or ``=``; the password of
    ``-u``/``--user user:password``; ``user:password@`` in URLs (the user is
    kept); the value of an ``Authorization:`` header; the value of any
    ``NAME=value`` whose NAME contains PASSWORD, PASSWD, TOKEN or SECRET; and
    any literal string of ``extra_secrets``.
    """
    out = text
    for secret in sorted((s for s in extra_secrets if s), key=len, reverse=True):
        out = out.replace(secret, REDACTED)

    out = _SECRET_OPTION.sub(lambda m: f"{m.group('opt')}{m.group('sep')}{REDACTED}", out)
    out = _USER_OPTION.sub(lambda m: f"{m.group('opt')}{m.group('sep')}{m.group('user')}:{REDACTED}", out)
    out = _URL_USERINFO.sub(lambda m: f"{m.group('pre')}:{REDACTED}@", out)
    out = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group('name')}={REDACTED}", out)
    out = _AUTH_HEADER.sub(lambda m: f"{m.group('pre')}{REDACTED}", out)
    return out
