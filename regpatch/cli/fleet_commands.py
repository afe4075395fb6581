"""``regpatch rollout`` and ``deployments``: many registries, from an inventory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regpatch.cli.console import fit
from regpatch.cli.options import change_of, model_of
from regpatch.cli.prefect_api import (
    _check_prefect_api,
    _use_prefect,
    configured_prefect_api,
    prefect_server_answers,
    prefect_side,
)
from regpatch.errors import UsageError
from regpatch.options import ROLLOUT, VERIFY, opt
from regpatch.params import RolloutParams, VerifyParams, refuse_inline_credentials
from regpatch.reference import Repository


def run_deployments(args: argparse.Namespace) -> None:
    """Plain data from the inventory; Prefect is imported only with --apply."""
    from regpatch.fleet.blocks import block_names  # only this command needs it (start-up)
    from regpatch.fleet.deployments import render_prefect_yaml, specs_for  # only this command needs it (start-up)
    from regpatch.fleet.inventory import (  # only this command needs it (start-up)
        load_inventory,
        refuse_stored_credentials,
    )
    from regpatch.fleet.notify import block_reference  # only this command needs it (start-up)

    if args.repository:
        Repository.parse(args.repository)
    if args.notify is not None:
        if not args.apply:
            raise UsageError("--notify creates an automation on the Prefect API: give --apply too")
        block_reference(args.notify)
    fleet = model_of(RolloutParams, ROLLOUT, args, only=("inventory", "only", "drop", "max_bundle_age_days"))
    inventory = load_inventory(fleet.inventory)
    if args.check:
        _check_drop(fleet, inventory.select(fleet.only), args.repository, args.tag)
        return
    entries = inventory.select(fleet.only)
    refuse_stored_credentials(entries)  # deployment parameters and blocks are stored in Prefect's database
    block_names(inventory.registries)  # two registries that would share a block: refused before anything is written
    specs = specs_for(inventory, default_pool=args.default_pool, repository=args.repository, only=fleet.only)
    text = render_prefect_yaml(specs, str(fleet.inventory))
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
        for line in prefect_side().apply_deployments(specs, entries, not fleet.only):
            sys.stdout.write(line + "\n")
        if args.notify is not None:
            sys.stdout.write(prefect_side().apply_notification(args.notify) + "\n")


def run_rollout(args: argparse.Namespace):
    """Without a Prefect API the rollout runs here (registries patched by this process);
    registries on a work pool need the API, which runs their patch on their own host."""
    from regpatch.engine.patch_run import open_bundle  # only this command needs it (start-up)
    from regpatch.fleet.inventory import (  # only this command needs it (start-up)
        load_inventory,
        refuse_stored_credentials,
    )
    from regpatch.fleet.rollout import (  # only this command needs it (start-up)
        RolloutFailed,
        RolloutState,
        check_change_for_workers,
        check_state_dir,
        engine_patcher,
        render_table,
        run_rollout,
    )
    from regpatch.reference import Tag  # only this command needs it (start-up)

    Repository.parse(args.repository)
    Tag.parse(args.tag)
    fleet = model_of(RolloutParams, ROLLOUT, args)
    if bool(args.bundle) == bool(fleet.drop):
        raise UsageError(f"give either BUNDLE or {opt.drop} (the drop location, for the newest bundle there), "
                         "not both, not neither")
    verify = model_of(VerifyParams, VERIFY, args, only=("command",))
    change = change_of(args)
    if verify.command is not None and "{ref}" not in verify.command:
        raise UsageError(f"{opt.verify_command} must contain {{ref}}, where the image reference goes")
    if fleet.registry_blocks:
        return _rollout_from_blocks(args, fleet, verify, change)
    inventory = load_inventory(fleet.inventory)  # an invalid inventory fails here, before anything runs
    entries = inventory.select(fleet.only)
    state_dir = Path(fleet.state_dir) if fleet.state_dir else RolloutState.default_dir(Path(str(fleet.inventory)))
    check_state_dir(state_dir, entries)
    api = _use_prefect(args)
    pooled = [e.name for e in entries if e.work_pool]
    if pooled and not api:
        raise UsageError(f"registries {', '.join(pooled)} have a work_pool: their patches run on their own "
                         f"hosts through a Prefect API; set PREFECT_API_URL (or use {opt.only} for the others)")
    check_change_for_workers(change, entries)
    try:
        if api:
            refuse_inline_credentials(opt.verify_command, verify.command)
            refuse_stored_credentials(entries)
            _check_prefect_api(api)
            _check_server_database(api, fleet.max_parallel)
            outcomes = prefect_side().rollout(bundle=args.bundle, repository=args.repository, tag=args.tag,
                                              rollout=fleet, change=change, verify=verify, image=args.image,
                                              dry_run=args.dry_run)
        else:
            if fleet.drop:
                args.bundle = _check_drop(fleet, entries, args.repository, args.tag).bundle.location
            digest = str(open_bundle(args.bundle, image=args.image).top.digest)
            state = RolloutState(state_dir, args.repository, args.tag, digest)
            patch_one = engine_patcher(bundle=args.bundle, repository=args.repository, tag=args.tag,
                                       image=args.image, verify_command=verify.command, dry_run=args.dry_run,
                                       change=change)
            outcomes = run_rollout(entries, patch_one, state=state, max_parallel=fleet.max_parallel,
                                   dry_run=args.dry_run)
            if any(o.failed or o.status == "not-run" for o in outcomes):
                raise RolloutFailed(outcomes)
    except RolloutFailed as e:
        sys.stdout.write(fit(render_table(e.outcomes)))
        raise
    return _said_ok(args, outcomes)


def _said_ok(args: argparse.Namespace, outcomes: list):
    from regpatch.fleet.rollout import render_table  # only this command needs it (start-up)

    sys.stdout.write(fit(render_table(outcomes)))
    sys.stdout.write(f"rollout of {args.repository}:{args.tag}: all {len(outcomes)} registries ok"
                     f"{' (dry run)' if args.dry_run else ''}\n")
    return outcomes


def _rollout_from_blocks(args: argparse.Namespace, fleet: RolloutParams, verify: VerifyParams, change):
    """The registries are the Prefect API's regpatch-registry blocks: the rollout flow reads
    and checks them (as it checks an inventory) on the API it runs on."""
    from regpatch.fleet.rollout import RolloutFailed, render_table  # only this command needs it (start-up)

    api = configured_prefect_api()
    if not api:
        raise UsageError(f"{opt.registry_blocks} reads the registry blocks of a Prefect API: set PREFECT_API_URL "
                         f"(e.g. http://HOST:4200/api), or give {opt.inventory}")
    refuse_inline_credentials(opt.verify_command, verify.command)
    _check_prefect_api(api)
    _check_server_database(api, fleet.max_parallel)
    try:
        outcomes = prefect_side().rollout(bundle=args.bundle, repository=args.repository, tag=args.tag,
                                          rollout=fleet, change=change, verify=verify, image=args.image,
                                          dry_run=args.dry_run)
    except RolloutFailed as e:
        sys.stdout.write(fit(render_table(e.outcomes)))
        raise
    return _said_ok(args, outcomes)


def _check_drop(fleet, entries, repository, tag):
    """The bundle of the drop location a rollout would take, said on stdout; UsageError when it
    would refuse."""
    from regpatch.fleet.drop import choose_bundle  # only with a drop location (start-up)

    if not fleet.drop or not repository or not tag:
        raise UsageError(f"--check needs {opt.drop}, --repository and --tag (what the scheduled rollout patches)")
    Repository.parse(repository)
    choice = choose_bundle(fleet.drop, repository=repository, tag=tag, entries=entries,
                           max_age_days=fleet.max_bundle_age_days)
    sys.stdout.write(f"drop location {fleet.drop}: {choice.summary()}\n")
    return choice


def _check_server_database(api: str, max_parallel: int) -> None:
    """More than 4 registries at once only on a PostgreSQL server: refused here, before
    Prefect is imported or a run is created, when the server's answers can be read."""
    from regpatch.fleet.prefect_server import (  # only this command needs it (start-up)
        SQLITE_MAX_PARALLEL,
        check_parallel,
        server_database,
    )

    if max_parallel <= SQLITE_MAX_PARALLEL:
        return
    answers = prefect_server_answers(api)
    if answers is not None:
        check_parallel(max_parallel, server_database(*answers))


def run_status(args: argparse.Namespace) -> None:
    """Reads only: storages, registry APIs, the rollout state folder."""
    from regpatch.fleet import status  # only this command needs it (start-up)

    fleet = model_of(RolloutParams, ROLLOUT, args, only=("inventory", "only", "state_dir"))
    rows = status.status_rows(fleet.inventory, fleet.only, fleet.state_dir, args.repository, args.tag)
    sys.stdout.write(status.to_json(rows) + "\n" if args.json else status.render_table(rows))
    error = status.drift(rows)
    if error is not None:
        raise error

