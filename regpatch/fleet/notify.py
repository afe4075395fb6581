"""Failure notifications, as plain data (no Prefect here): the automation that
``regpatch deployments --apply --notify BLOCK`` creates or updates on the Prefect API
(``regpatch_flows.deploy.apply_notification``).

It fires on every failed or crashed run of a regpatch flow (patch-registry,
rollback-registry, rollout, and the maintenance window's registry-maintenance, maintenance and
fleet-status, which fails while a registry drifts: whatever started it, a schedule, a form, the command line,
a rollout) and sends, through the notification block the operator names (a Custom
Webhook for Mattermost, Teams or a ticket system; Slack, e-mail where SMTP exists), one
message: the run, the registry, the repository and the tag, the error line, and where
the tag stands (the run's ``regpatch.tag`` label, written before the run ends).

``prefect.yaml`` cannot hold such an automation (its triggers run deployments only):
it is made through the API, found again by its name, and updated in place.
"""

from __future__ import annotations

import re
from typing import Any

from regpatch.errors import UsageError

AUTOMATION_NAME = "regpatch: a run failed"
WATCHED_FLOWS = ("patch-registry", "rollback-registry", "rollout", "registry-maintenance", "maintenance",
                 "fleet-status")
EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")

# Jinja, rendered by the server when the automation fires: ``flow`` and ``flow_run`` are
# read from the API then (the run's final state and labels)
SUBJECT = "regpatch: {{ flow.name }} {{ flow_run.name }} {{ flow_run.state.name }}"
BODY = """\
{{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}.
registry: {% for t in flow_run.tags if t.startswith('registry:') %}{{ t[9:] }} {% else %}\
{% if flow.name in ('rollout', 'maintenance', 'fleet-status') %}several (see the run's artifact)\
{% else %}not named{% endif %}{% endfor %}
repository:tag: {{ flow_run.parameters.get('repository', '?') }}:{{ flow_run.parameters.get('tag', '?') }}
error: {{ flow_run.labels.get('regpatch.error') or flow_run.state.message }}
the tag: {{ flow_run.labels.get('regpatch.tag') or 'not recorded by the run (a crash, or a rollout: see its \
summary; regpatch history tells)' }}
run: {{ (flow_run|ui_url) or ('flow run ' ~ flow_run.id ~ ' (set PREFECT_UI_URL on the server for a link)') }}
"""

BLOCK_RE = re.compile(r"([a-z0-9-]+)/([A-Za-z0-9._-]+)")


def block_reference(text: str) -> tuple[str, str]:
    """``TYPE/NAME`` of a notification block (as Prefect names blocks: ``custom-webhook/oncall``,
    ``slack-webhook/ops``, ``email/ops``) -> (type slug, name)."""
    m = BLOCK_RE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"--notify {text!r}: name a notification block as TYPE/NAME, e.g. custom-webhook/oncall "
                         "(the block's type slug and name, as the UI's Blocks page shows them)")
    return m.group(1), m.group(2)


def automation_spec(block_document_id: str) -> dict[str, Any]:
    """The automation, as the API's JSON: a reactive trigger on any failed or crashed run
    of a regpatch flow, one notification per run."""
    return {
        "name": AUTOMATION_NAME,
        "description": ("Made by regpatch deployments --notify: one message per failed or crashed run of "
                        f"{', '.join(WATCHED_FLOWS)}, with the registry, the tag, the error and where the tag stands."),
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Reactive",
            "expect": list(EVENTS),
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {"prefect.resource.role": "flow", "prefect.resource.name": list(WATCHED_FLOWS)},
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": 0,
        },
        "actions": [{"type": "send-notification", "block_document_id": block_document_id,
                     "subject": SUBJECT, "body": BODY}],
    }
