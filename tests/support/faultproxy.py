"""A small fault-injecting HTTP proxy for S3 tests (and the benchmark).

It sits between boto3 (``endpoint_url`` = the proxy) and a real S3 endpoint
(moto's server) on loopback, forwards every request, and records what it
served. On command it breaks the next N matching requests:

    slowdown   503 SlowDown, as S3 answers when throttling (upstream not asked)
    reset      headers and half the body, then a TCP reset (SO_LINGER 0)
    truncate   headers (full Content-Length) and half the body, then a clean close
    error      a canned S3 error: ``status`` and ``code`` (NoSuchKey, AccessDenied, ...)
    throttle   the body at ``rate`` bytes per second (a slow link; not a failure)

Usage::

    with FaultProxy(upstream="http://127.0.0.1:5000") as proxy:
        proxy.inject("reset", count=2, match=proxy.object_get("delta.tar.gz"))
        ... boto3 client with endpoint_url=proxy.url ...
        proxy.bytes_served("delta.tar.gz"), proxy.gets("base.tar.gz")
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade"}


@dataclass
class Request:
    method: str
    path: str            # unquoted path, without the query
    query: str
    range: Optional[str]
    status: int = 0
    bytes_sent: int = 0  # body bytes actually sent
    fault: Optional[str] = None


@dataclass
class Rule:
    kind: str
    count: int
    match: Callable[[Request], bool]
    status: int = 503
    code: str = "SlowDown"
    rate: float = 0.0
    fired: int = 0


@dataclass
class _State:
    rules: list[Rule] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>").encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultproxy"

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_GET(self):
        self._proxy()

    def do_HEAD(self):
        self._proxy()

    def do_PUT(self):
        self._proxy()

    def do_POST(self):
        self._proxy()

    def do_DELETE(self):
        self._proxy()

    def _proxy(self) -> None:
        state: _State = self.server.state  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        req = Request(self.command, unquote(parts.path), parts.query, self.headers.get("Range"))
        body = b""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length)
        rule = None
        with state.lock:
            state.log.append(req)
            for r in state.rules:
                if r.fired < r.count and r.match(req):
                    r.fired += 1
                    rule = r
                    break
        req.fault = rule.kind if rule else None

        if rule is not None and rule.kind in ("slowdown", "error"):
            status = 503 if rule.kind == "slowdown" else rule.status
            code = "SlowDown" if rule.kind == "slowdown" else rule.code
            payload = _error_xml(code, f"injected by faultproxy ({rule.kind})")
            # recorded before the client can read the answer: a test that looks at the log
            # as soon as its request failed must find the status there (it raced before)
            req.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                req.bytes_sent = len(payload)
                self.wfile.write(payload)
            return

        up = self.server.upstream  # type: ignore[attr-defined]
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            req.status = resp.status
            self.send_response_only(resp.status, resp.reason)
            resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            total = None
            for k, v in resp_headers:
                if k.lower() == "content-length":
                    total = int(v)
            if total is None and self.command != "HEAD":
                data = resp.read()  # the upstream chunked it: send it with a length
                resp_headers.append(("Content-Length", str(len(data))))
                total = len(data)
                reader: Callable[[int], bytes] = _bytes_reader(data)
            else:
                reader = resp.read
            for k, v in resp_headers:
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD" or not total:
                return
            limit = total
            if rule is not None and rule.kind in ("reset", "truncate"):
                limit = total // 2
            sent = 0
            started = time.monotonic()
            while sent < limit:
                chunk = reader(min(64 << 10, limit - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
                req.bytes_sent = sent
                if rule is not None and rule.kind == "throttle" and rule.rate > 0:
                    ahead = sent / rule.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            if rule is not None and rule.kind == "reset":
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
            elif rule is not None and rule.kind == "truncate":
                self.wfile.flush()
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. a killed download)
        finally:
            conn.close()


def _bytes_reader(data: bytes) -> Callable[[int], bytes]:
    pos = [0]

    def read(n: int) -> bytes:
        chunk = data[pos[0]:pos[0] + n]
        pos[0] += len(chunk)
        return chunk

    return read


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # an injected reset is not an error
        pass


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0):
        self.state = _State()
        self._server = _Server((host, port), _Handler)
        self._server.state = self.state  # type: ignore[attr-defined]
        self._server.upstream = urlsplit(upstream)  # type: ignore[attr-defined]
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="faultproxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- commands -------------------------------------------------------------
    def inject(self, kind: str, *, count: int = 1, match: Optional[Callable[[Request], bool]] = None,
               status: int = 503, code: str = "SlowDown", rate: float = 0.0) -> Rule:
        if kind not in ("slowdown", "reset", "truncate", "error", "throttle"):
            raise ValueError(f"unknown fault {kind!r}")
        rule = Rule(kind, count, match or (lambda r: True), status, code, rate)
        with self.state.lock:
            self.state.rules.append(rule)
        return rule

    def reset(self) -> None:
        """Forget every rule and every recorded request."""
        with self.state.lock:
            self.state.rules.clear()
            self.state.log.clear()

    @staticmethod
    def object_get(name: str = "") -> Callable[[Request], bool]:
        """Matches GETs of objects (not listings) whose key ends with /name (any object if "")."""
        def match(r: Request) -> bool:
            return (r.method == "GET" and "list-type" not in r.query and r.path.count("/") >= 2
                    and (not name or r.path.endswith("/" + name)))
        return match

    @staticmethod
    def listing() -> Callable[[Request], bool]:
        return lambda r: r.method == "GET" and "list-type" in r.query

    # -- what was served -----------------------------------------------------------
    @property
    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.log)

    def gets(self, name: str) -> list[Request]:
        """GETs of the object whose key ends with /name."""
        m = self.object_get(name)
        return [r for r in self.requests if m(r)]

    def bytes_served(self, name: str) -> int:
        """Body bytes of the object whose key ends with /name actually sent to clients."""
        return sum(r.bytes_sent for r in self.gets(name) if r.status in (200, 206))

    def faults(self) -> list[Request]:
        return [r for r in self.requests if r.fault]
