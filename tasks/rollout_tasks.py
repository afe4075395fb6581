"""The tasks of the rollout flow: find where each registry is patched, patch one registry.

Whatever goes wrong with one registry becomes a ``failed`` outcome (``run_rollout``
guards every call), so one registry never stops or harms the others of its wave.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType,
                                            FlowFilter, FlowFilterName, WorkPoolFilter, WorkPoolFilterName)
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from regpatch.errors import UsageError
from regpatch.inventory import RegistryEntry
from regpatch.params import S3Params, VerifyParams
from regpatch.rollout import DRY_RUN, FAILED, PATCHED, UP_TO_DATE, RegistryOutcome, outcome_of, render_markdown
from tasks.observer import artifact_key

PATCH_FLOW_NAME = "patch-registry"
_opts = dict(cache_policy=NO_CACHE, persist_result=False)


def registry_lock_name(name: str) -> str:
    """The global concurrency limit (1 slot) that guards one registry."""
    return "regpatch-registry-" + re.sub(r"[^a-z0-9-]+", "-", name.lower())


@task(name="find-patch-deployments", **_opts)
def find_patch_deployments(pools: list[str]) -> dict[str, str]:
    """For every work pool, the ``patch-registry/<name>`` deployment that runs on it.

    Preferred: a deployment named like the pool, then one named
    ``patch-registry``; otherwise the only one on that pool. Raises UsageError
    (before anything is touched) when a pool has none, or several and none preferred.
    """
    found: dict[str, str] = {}
    problems = []
    with get_client(sync_client=True) as client:
        for pool in pools:
            deps = client.read_deployments(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[PATCH_FLOW_NAME])),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
            names = sorted(d.name for d in deps)
            pick = next((n for n in (pool, PATCH_FLOW_NAME) if n in names), None)
            if pick is None and len(names) == 1:
                pick = names[0]
            if pick is None:
                problems.append(f"work pool {pool!r} has no {PATCH_FLOW_NAME} deployment" if not names else
                                f"work pool {pool!r} has several {PATCH_FLOW_NAME} deployments "
                                f"({', '.join(names)}): name one after the pool")
                continue
            found[pool] = f"{PATCH_FLOW_NAME}/{pick}"
    if problems:
        raise UsageError("; ".join(problems) + " (deploy deployments/prefect.yaml with `prefect deploy --all`)")
    get_run_logger().info("patch deployments: %s", ", ".join(f"{p} -> {d}" for p, d in found.items()))
    return found


def _parameters(entry: RegistryEntry, *, bundle: str, repository: str, tag: str, image: Optional[str],
                verify_command: Optional[str], dry_run: bool, s3: S3Params) -> dict[str, Any]:
    """patch-registry's parameters for one registry (JSON, as a deployment run takes them)."""
    return dict(bundle=bundle, repository=repository, tag=tag,
                registry=entry.registry_params().model_dump(),
                verify=VerifyParams(command=entry.verify_command or verify_command).model_dump(),
                s3=s3.model_dump(), image=image, dry_run=dry_run, trust=entry.trust_params().model_dump())


def _run_local(entry: RegistryEntry, params: dict) -> RegistryOutcome:
    from flows.patch import patch_registry

    state = patch_registry(**params, return_state=True)
    if state.is_completed():
        return outcome_of(entry, state.result())
    exc = state.result(raise_on_failure=False)
    return outcome_of(entry, error=exc if isinstance(exc, BaseException) else RuntimeError(state.message or state.name))


def _remote_result(flow_run_id) -> Optional[dict]:
    """The ``patch-result`` table artifact the patch-registry flow run created."""
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["table"])))
    for art in arts:
        if art.key and art.key.endswith("-result"):
            data = json.loads(art.data) if isinstance(art.data, str) else art.data
            if isinstance(data, list) and data:
                return data[0]
    return None


def _run_remote(entry: RegistryEntry, deployment: str, params: dict, timeout: Optional[float]) -> RegistryOutcome:
    outcome = RegistryOutcome(entry.name, entry.wave, entry.where, FAILED)
    fr = run_deployment(deployment, parameters=params, timeout=timeout, poll_interval=2,
                        flow_run_name=f"{entry.name}-{params['repository'].replace('/', '-')}-{params['tag']}")
    outcome.flow_run = str(fr.id)
    state = fr.state
    if state is None or not state.is_final():
        outcome.error = (f"the {deployment} run {fr.name} did not finish within {timeout:g} s "
                         f"(is a worker polling work pool {entry.work_pool!r}?); it was cancelled")
        try:
            from prefect.states import Cancelled
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(fr.id, Cancelled(message="rollout gave up waiting"), force=True)
        except Exception:  # noqa: BLE001 - best effort
            pass
        return outcome
    if not state.is_completed():
        outcome.error = f"{state.name}: {state.message or 'no message'} (flow run {fr.name})"
        return outcome
    r = _remote_result(fr.id) or {}
    outcome.status = (DRY_RUN if r.get("dry_run", params["dry_run"]) else
                      PATCHED if r.get("changed", True) else UP_TO_DATE)
    outcome.old, outcome.new, outcome.bytes_copied = r.get("old"), r.get("new"), r.get("bytes_copied")
    return outcome


def patcher(*, bundle: str, repository: str, tag: str, image: Optional[str], verify_command: Optional[str],
            dry_run: bool, s3: S3Params, deployments: dict[str, str], timeout: Optional[float]):
    """``patch_one`` for ``regpatch.rollout.run_rollout``: one task run per registry."""

    @task(name="patch-one", task_run_name="patch-{entry.name}", **_opts)
    def patch_one(entry: RegistryEntry) -> RegistryOutcome:
        """Holds the registry's global concurrency slot (limit 1) for the whole patch,
        so two patches of the same registry never run at once."""
        params = _parameters(entry, bundle=bundle, repository=repository, tag=tag, image=image,
                             verify_command=verify_command, dry_run=dry_run, s3=s3)
        lock = registry_lock_name(entry.name)
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(lock, 1)
        with concurrency(lock, occupy=1, strict=True):
            if entry.work_pool:
                deployment = deployments.get(entry.work_pool)
                if not deployment:
                    raise UsageError(f"no patch-registry deployment for work pool {entry.work_pool!r}")
                get_run_logger().info("%s: running %s on work pool %s", entry.name, deployment, entry.work_pool)
                return _run_remote(entry, deployment, params, timeout)
            get_run_logger().info("%s: patching here (subflow)", entry.name)
            return _run_local(entry, params)

    return patch_one


def publish_rollout(outcomes: list[RegistryOutcome], title: str, repository: str, tag: str) -> None:
    key = artifact_key("rollout", repository, tag)
    create_table_artifact(key=key, table=[o.row() for o in outcomes], description=title)
    create_markdown_artifact(markdown=render_markdown(outcomes, title), description=title)
