"""Issue 25, item 6: every copy's progress ends where its work ends, inside its step: 100 %, or
where it stopped and why (``regpatch.progress.StepCopies``, ``copy_words``)."""

from __future__ import annotations

import io
import signal
import threading

import pytest

from regpatch import engine, interrupt
from regpatch.errors import DigestMismatch, Interrupted
from regpatch.progress import Progress, StepCopies, copy_words


class Copy:
    """What an observer's progress factory returns: the bytes counted, and how it ended."""

    def __init__(self, step: str, label: str, total: int, stop_after: int = 0):
        self.step, self.label, self.total, self.stop_after = step, label, total, stop_after
        self.done = 0
        self.ends: list = []
        self.ended_in: list = []
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.stop_after and self.done > self.stop_after:
                interrupt.request_stop(signal.SIGTERM)

    def end(self, error=None) -> None:
        self.ends.append(error)


class Watching(engine.LogObserver):
    """Records every copy each step opens, and which step was running when each ended."""

    def __init__(self, stop_after: int = 0):
        super().__init__()
        self.copies: list[Copy] = []
        self.step = ""
        self.stop_after = stop_after

    def run(self, step, fn):
        self.step = step
        try:
            return fn()
        finally:
            for c in self.copies:
                if c.step == step and len(c.ended_in) < len(c.ends):
                    c.ended_in.append(step)
            self.step = ""

    def progress(self, label, total):
        c = Copy(self.step, label, total, self.stop_after)
        self.copies.append(c)
        return c


def test_the_words_of_a_copy_under_way_done_and_stopped():
    assert copy_words("stage a", 4 << 20, 1 << 20, 2.0) == (25.0, "stage a: 25% of 4.0 MiB, 512.0 KiB/s")
    assert copy_words("stage a", 4 << 20, 4 << 20, 2.0, final=True) == (
        100.0, "stage a: 4.0 MiB in 2.0 s (2.0 MiB/s)")
    pct, words = copy_words("pull x", 4 << 20, 3 << 20, 1.0, final=True, error=DigestMismatch(
        "layer.tar.gz", "sha256:" + "a" * 64, "sha256:" + "b" * 64, 3 << 20))
    assert pct == 75.0 and words.startswith("pull x: stopped at 75% of 4.0 MiB: ") and "\n" not in words
    # ended without an error short of its total (a pull skips foreign layers): the work is done
    assert copy_words("pull x", 4 << 20, 3 << 20, 1.0, final=True) == (
        100.0, "pull x: 3.0 MiB of 4.0 MiB counted in 1.0 s (3.0 MiB/s)")
    # a credential in an error's text never reaches a progress artifact
    _, words = copy_words("s3", 10, 1, 1.0, final=True, error=OSError("https://u:hunter2@host/x refused"))
    assert "hunter2" not in words and "stopped at 10%" in words


def test_a_step_ends_the_copies_it_opened_with_its_error():
    opened: list[Copy] = []

    def factory(label, total):
        opened.append(Copy("s", label, total))
        return opened[-1]

    copies = StepCopies(factory)
    a, b = copies("a", 10), copies("b", 10)
    plain = StepCopies(lambda label, total: (lambda n: None))("plain", 10)  # a callback without end: fine
    plain(3)
    a(10)
    b(4)
    boom = ValueError("boom")
    copies.end(boom)
    assert [c.ends for c in opened] == [[boom], [boom]]
    copies.end()  # ended once: nothing left open
    assert [c.ends for c in opened] == [[boom], [boom]]


def test_a_terminal_bar_stopped_short_ends_its_line():
    screen = io.StringIO()
    bar = Progress(stream=screen, terminal=True)("stage base.tar.gz", 4096)
    bar(1024)
    bar.end(Interrupted(signal.SIGINT))
    assert screen.getvalue().endswith(" stopped\n")
    done = io.StringIO()
    bar = Progress(stream=done, terminal=True)("stage x", 10)
    bar(10)
    bar.end()
    assert done.getvalue().count("\n") == 1  # complete: its own newline, no second one


def test_every_copy_of_a_patch_ends_inside_its_step_at_its_total(site, tmp_path):
    from regpatch.demo.images import make_image, make_layer, write_staged_bundle

    big = make_layer(tmp_path / "big", "base.tar.gz", seed=11, size=3 << 20, compresslevel=0)
    bundle = write_staged_bundle(tmp_path / "bundle", make_image(tmp_path / "big", [big], os="windows"))
    obs = Watching()
    engine.patch(site.request(bundle), obs)
    assert obs.copies and {c.step for c in obs.copies} >= {"verify-digests"}
    for c in obs.copies:
        assert c.ends == [None], (c.label, c.ends)       # ended once, the step succeeded
        assert c.ended_in == [c.step], (c.label, c.ended_in)  # before its step was over
        assert c.done == c.total, (c.label, c.done, c.total)


def test_a_copy_stopped_by_a_stop_request_says_where_and_why(site, tmp_path):
    from regpatch.demo.images import make_image, make_layer, write_staged_bundle

    big = make_layer(tmp_path / "big", "base.tar.gz", seed=7, size=24 << 20, compresslevel=0)
    bundle = write_staged_bundle(tmp_path / "bundle", make_image(tmp_path / "big", [big], os="windows"))
    obs = Watching(stop_after=4 << 20)
    with pytest.raises(Interrupted) as e:
        engine.patch(site.request(bundle), obs)
    stopped = max(obs.copies, key=lambda c: c.total)  # the big layer, staged when the stop came
    assert stopped.ends == [e.value] and stopped.ended_in == ["verify-digests"]
    pct, words = copy_words(stopped.label, stopped.total, stopped.done, 1.0, final=True, error=stopped.ends[0])
    assert 0 < pct < 100 and f"stopped at {pct:.0f}% of 24.0 MiB: interrupted by SIGTERM" in words
    for c in obs.copies:
        assert len(c.ends) == 1
