"""regpatch.cli.fleet_commands"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regpatch.cli.parser import _only_names
from regpatch.cli.prefect_api import _check_prefect_api, _use_prefect, configured_prefect_api, prefect_side
from regpatch.errors import UsageError


def run_deployments(args: argparse.Namespace) -> None:
    """Plain data from the inventory; Prefect is imported only with --apply."""
    from regpatch.fleet.deployments import render_prefect_yaml, specs_for
    from regpatch.fleet.inventory import load_inventory
    from regpatch.params import refuse_inline_credentials
    from regpatch.reference import Repository

    if args.repository:
        Repository.parse(args.repository)
    only = _only_names(args)
    inventory = load_inventory(args.inventory)
    for e in inventory.select(only):  # deployment parameters are stored in Prefect's database
        refuse_inline_credentials(f"inventory entry {e.name!r} verify_command", e.verify_command)
        refuse_inline_credentials(f"inventory entry {e.name!r} url", e.url)
        refuse_inline_credentials(f"inventory entry {e.name!r} restart", e.restart)
    specs = specs_for(inventory, default_pool=args.default_pool, repository=args.repository, only=only)
    text = render_prefect_yaml(specs, args.inventory)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote {len(specs)} deployments to {args.output}\n")
    elif not args.apply:
        sys.stdout.write(text)
    if args.apply:
        api = configured_prefect_api()
        if not api:
            raise UsageError("--apply needs a Prefect API: set PREFECT_API_URL (e.g. http://HOST:4200/api)")
        _check_prefect_api(api)
        apply = prefect_side().apply_deployments

        for line in apply(specs):
            sys.stdout.write(line + "\n")



def run_rollout(args: argparse.Namespace):
    """Without a Prefect API the rollout runs here (registries patched by this process);
    registries on a work pool need the API, which runs their patch on their own host."""
    from regpatch.engine.patch_run import open_bundle
    from regpatch.fleet.inventory import load_inventory
    from regpatch.fleet.rollout import (
        MAX_PARALLEL,
        RolloutFailed,
        RolloutState,
        engine_patcher,
        render_table,
        run_rollout,
    )
    from regpatch.params import refuse_inline_credentials
    from regpatch.reference import Repository, Tag

    Repository.parse(args.repository)
    Tag.parse(args.tag)
    if not 1 <= args.max_parallel <= MAX_PARALLEL:
        raise UsageError(f"--max-parallel must be between 1 and {MAX_PARALLEL}, not {args.max_parallel}")
    if args.verify_command is not None and "{ref}" not in args.verify_command:
        raise UsageError("the verify command must contain {ref}, where the image reference goes")
    inventory = load_inventory(args.inventory)  # an invalid inventory fails here, before anything runs
    only = _only_names(args)
    entries = inventory.select(only)
    api = _use_prefect(args)
    pooled = [e.name for e in entries if e.work_pool]
    if pooled and not api:
        raise UsageError(f"registries {', '.join(pooled)} have a work_pool: their patches run on their own "
                         "hosts through a Prefect API; set PREFECT_API_URL (or use --only for the others)")
    try:
        if api:
            refuse_inline_credentials("--verify-command", args.verify_command)
            for e in entries:
                refuse_inline_credentials(f"inventory entry {e.name!r} verify_command", e.verify_command)
                refuse_inline_credentials(f"inventory entry {e.name!r} restart", e.restart)
            _check_prefect_api(api)
            rollout = prefect_side().rollout

            outcomes = rollout(bundle=args.bundle, inventory=args.inventory, repository=args.repository,
                               tag=args.tag, only=only, max_parallel=args.max_parallel, dry_run=args.dry_run,
                               state_dir=args.state_dir, image=args.image, verify_command=args.verify_command)
        else:
            digest = str(open_bundle(args.bundle, image=args.image).top.digest)
            state = RolloutState(Path(args.state_dir) if args.state_dir else RolloutState.default_dir(
                Path(args.inventory)), args.repository, args.tag, digest)
            patch_one = engine_patcher(bundle=args.bundle, repository=args.repository, tag=args.tag,
                                       image=args.image, verify_command=args.verify_command,
                                       dry_run=args.dry_run)
            outcomes = run_rollout(entries, patch_one, state=state, max_parallel=args.max_parallel,
                                   dry_run=args.dry_run)
            if any(o.failed or o.status == "not-run" for o in outcomes):
                raise RolloutFailed(outcomes)
    except RolloutFailed as e:
        sys.stdout.write(render_table(e.outcomes))
        raise
    sys.stdout.write(render_table(outcomes))
    sys.stdout.write(f"rollout of {args.repository}:{args.tag}: all {len(outcomes)} registries ok"
                     f"{' (dry run)' if args.dry_run else ''}\n")
    return outcomes

