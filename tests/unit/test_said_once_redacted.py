"""The one line of an unexpected error (``regpatch_tasks.say_failure``) carries its traceback
through the one credential detector: before, the message was redacted but the traceback
(logged as the record's exc_info) repeated it in full on its last line."""

from __future__ import annotations

import logging

from regpatch_tasks import ONE_TRACEBACK, say_failure

SECRET = "Sup3rS3cretPW"


def test_an_unexpected_errors_traceback_is_redacted_and_said_once(caplog):
    try:
        raise ConnectionError(f"cannot reach https://alice:{SECRET}@registry.example:5000/v2/")
    except ConnectionError as e:
        error = e
    with caplog.at_level(logging.ERROR, logger="regpatch.prefect"):
        say_failure(error, "verify-pull")
        say_failure(error, "patch of servercore:ltsc2019 on site-a")  # said already: not again
    (record,) = [r for r in caplog.records if r.name == "regpatch.prefect"]
    text = record.getMessage()
    assert record.exc_info is None and SECRET not in text and SECRET not in caplog.text
    assert text.startswith("verify-pull failed: ConnectionError: cannot reach https://alice:***@registry.example")
    assert "Traceback (most recent call last)" in text and "test_said_once_redacted.py" in text
    assert ONE_TRACEBACK.is_said(error)
