"""Count what a process asks of the Prefect API: every HTTP request and every event.

Not a test, not shipped: the fleet benchmark runs a rollout as

    python bench/apicount.py OUT.json -- regpatch rollout ...

which installs the counters and then runs the ``regpatch`` command line in this
process. Every HTTP attempt through httpx (Prefect's clients subclass httpx's, so a
retried 503 counts twice) is recorded with its method, its path with ids replaced
by ``{id}``, its status and its time; every event emitted to the server (task run
states travel as events over a websocket, not as HTTP requests) by its name; every
Prefect client made. At exit the counts go to OUT.json.
"""

from __future__ import annotations

import atexit
import collections
import json
import re
import sys
import threading
import time
from pathlib import Path

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAMED = re.compile(r"/(name|by-name)/[^/?]+")


def _path(url) -> str:
    path = _UUID.sub("{id}", str(url.path))
    path = _NAMED.sub(r"/\1/{name}", path)
    return re.sub(r"^/api", "", path)


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, list] = collections.defaultdict(lambda: [0, 0.0, collections.Counter()])
        self.events: collections.Counter = collections.Counter()
        self.clients: collections.Counter = collections.Counter()
        self.t0 = time.monotonic()
        self.phases: dict[str, float] = {}

    def request(self, method: str, url, seconds: float, status: int) -> None:
        if "/api" not in str(url.path) and "/health" not in str(url.path):
            return  # not the Prefect API (a registry, S3)
        key = f"{method} {_path(url)}"
        with self.lock:
            row = self.requests[key]
            row[0] += 1
            row[1] += seconds
            if status >= 400 or status == 0:
                row[2][str(status)] += 1

    def dump(self, out: Path) -> None:
        with self.lock:
            end = time.monotonic()
            marks = sorted({**self.phases, "exit": end}.items(), key=lambda kv: kv[1])
            doc = {"wall": end - self.t0,
                   "phases": [(a[0], round(b[1] - a[1], 3)) for a, b in zip(marks, marks[1:], strict=False)],
                   "requests": {k: {"n": v[0], "seconds": round(v[1], 4), "errors": dict(v[2])}
                                for k, v in sorted(self.requests.items())},
                   "events": dict(self.events), "clients": dict(self.clients)}
        out.write_text(json.dumps(doc, indent=1, sort_keys=True))


def install(out: Path, api_port: str = "") -> Counts:
    import httpx

    counts = Counts()
    port = api_port

    def mine(request) -> bool:
        return not port or f":{port}" in str(request.url)

    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self, request, *a, **kw):
        t0 = time.perf_counter()
        status = 0
        try:
            r = sync_send(self, request, *a, **kw)
            status = r.status_code
            return r
        finally:
            if mine(request):
                counts.request(request.method, request.url, time.perf_counter() - t0, status)

    async def asend(self, request, *a, **kw):
        t0 = time.perf_counter()
        status = 0
        try:
            r = await async_send(self, request, *a, **kw)
            status = r.status_code
            return r
        finally:
            if mine(request):
                counts.request(request.method, request.url, time.perf_counter() - t0, status)

    httpx.Client.send, httpx.AsyncClient.send = send, asend  # type: ignore[method-assign]
    atexit.register(counts.dump, out)
    return counts


def count_prefect(counts: Counts) -> None:
    """Events emitted and Prefect clients made (once Prefect is imported: importing it here
    would move its import time into the process's start)."""
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
    from prefect.events.clients import EventsClient

    emit = EventsClient.emit

    async def counted_emit(self, event):
        with counts.lock:
            counts.events[event.event] += 1
        return await emit(self, event)

    EventsClient.emit = counted_emit  # type: ignore[method-assign]
    for cls in (PrefectClient, SyncPrefectClient):
        init = cls.__init__

        def counted_init(self, *a, __init=init, __name=cls.__name__, **kw):
            with counts.lock:
                counts.clients[__name] += 1
            __init(self, *a, **kw)

        cls.__init__ = counted_init  # type: ignore[method-assign]


def process_start() -> float:
    """This process's start on the monotonic clock (from /proc: its start in clock ticks since boot)."""
    import os

    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.monotonic() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def time_phases(counts: Counts) -> None:
    """Where the process's time goes: start-up and the command's own checks, importing
    Prefect's side (``prefect_side()``), the flow call, and what runs after it until the
    process ends (the table printed, Prefect's log and event workers drained at exit)."""
    import types

    from regpatch.cli import prefect_api

    side = prefect_api.prefect_side
    counts.phases = {"process start": process_start(), "main": time.monotonic()}

    def timed_side():
        counts.phases.setdefault("import prefect side", time.monotonic())
        mod = side()
        if "imported" not in counts.phases:
            counts.phases["imported"] = time.monotonic()
            count_prefect(counts)

        def wrap(fn):
            def call(*a, **kw):
                counts.phases.setdefault("flow call", time.monotonic())
                try:
                    return fn(*a, **kw)
                finally:
                    counts.phases["flow returned"] = time.monotonic()
            return call

        return types.SimpleNamespace(**{name: wrap(getattr(mod, name)) for name in mod.__all__})

    prefect_api.prefect_side = timed_side  # before the command modules import it by name


def main() -> int:
    out = Path(sys.argv[1])
    assert sys.argv[2] == "--", "usage: apicount.py OUT.json -- regpatch ARGS..."
    import os

    url = os.environ.get("PREFECT_API_URL", "")
    port = (re.search(r":(\d+)/", url) or [None, ""])[1]
    counts = install(out, port)
    time_phases(counts)
    from regpatch.cli import main as regpatch_main

    return regpatch_main(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
