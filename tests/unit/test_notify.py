"""Failure notifications as plain data (issue 25 item 1): the automation regpatch deployments
--notify creates, and the block reference it takes."""

from __future__ import annotations

import pytest


def test_the_failure_notification_is_an_automation_the_api_takes():
    from prefect.automations import AutomationCore

    from regpatch.errors import UsageError
    from regpatch.fleet.notify import AUTOMATION_NAME, WATCHED_FLOWS, automation_spec, block_reference

    assert block_reference("custom-webhook/oncall") == ("custom-webhook", "oncall")
    for bad in ("oncall", "Custom Webhook/oncall", "custom-webhook/", "a/b/c"):
        with pytest.raises(UsageError, match="TYPE/NAME"):
            block_reference(bad)
    spec = AutomationCore.model_validate(automation_spec("7b3c5f4e-3a51-4c59-9d5c-0b0d0d0d0d0d"))
    assert spec.name == AUTOMATION_NAME and spec.trigger.posture == "Reactive"
    assert set(spec.trigger.expect) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert spec.trigger.match_related.get("prefect.resource.name") == list(WATCHED_FLOWS)


def test_the_message_names_the_registry_the_tag_the_error_and_where_the_tag_stands():
    """The body as the server renders it (its sandbox, its filters) for a failed run of
    patch-registry, and for a crashed run that recorded nothing."""
    from uuid import uuid4

    import prefect.server.events.jinja_filters as jinja_filters
    from prefect.server.schemas.core import Flow, FlowRun
    from prefect.server.schemas.states import State, StateType
    from prefect.server.utilities.user_templates import (
        register_user_template_filters,
        render_user_template_sync,
        validate_user_template,
    )

    from regpatch.fleet.notify import BODY, SUBJECT

    register_user_template_filters(jinja_filters.all_filters)
    for template in (SUBJECT, BODY):
        validate_user_template(template)
    flow = Flow(name="patch-registry")
    run = FlowRun(flow_id=uuid4(), name="site-a-servercore-ltsc2019", tags=["registry:site-a", "regpatch"],
                  parameters={"repository": "servercore", "tag": "ltsc2019"},
                  labels={"regpatch.error": "digest mismatch in delta.tar.gz",
                          "regpatch.tag": "the tag was not moved: it still points at sha256:aaa"},
                  state=State(type=StateType.FAILED, name="Failed", message="Flow run failed"))
    text = render_user_template_sync(BODY, {"flow": flow, "flow_run": run})
    assert text.splitlines()[:5] == [
        "patch-registry run site-a-servercore-ltsc2019 ended Failed.",
        "registry: site-a ",
        "repository:tag: servercore:ltsc2019",
        "error: digest mismatch in delta.tar.gz",
        "the tag: the tag was not moved: it still points at sha256:aaa"]
    assert f"flow run {run.id}" in text.splitlines()[5] or "/runs/flow-run/" in text.splitlines()[5]
    assert render_user_template_sync(SUBJECT, {"flow": flow, "flow_run": run}) == \
        "regpatch: patch-registry site-a-servercore-ltsc2019 Failed"
    crashed = FlowRun(flow_id=uuid4(), name="rollout-servercore-ltsc2019", tags=[], parameters={},
                      state=State(type=StateType.CRASHED, name="Crashed", message="the worker's process died"))
    text = render_user_template_sync(BODY, {"flow": Flow(name="rollout"), "flow_run": crashed})
    assert "registry: several (see the run's artifact)" in text and "repository:tag: ?:?" in text
    assert "error: the worker's process died" in text and "the tag: not recorded by the run" in text
