"""``regpatch prune`` (retention) and ``regpatch gc`` (the registry's garbage collection), one registry."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from regpatch.cli.options import change_of, model_of
from regpatch.cli.parser import GC_REGISTRY
from regpatch.cli.registry_commands import storage_root
from regpatch.options import MAINTENANCE, REGISTRY, RETENTION
from regpatch.params import MaintenanceParams, RegistryParams, RetentionParams
from regpatch.reference import Repository


def run_prune(args: argparse.Namespace) -> None:
    """Plan (reads only), then with --apply unlink under each repository's lock."""
    repos = [Repository.parse(args.repository)] if args.repository else None
    policy = model_of(RetentionParams, RETENTION, args)
    change = change_of(args)
    registry = model_of(RegistryParams, REGISTRY, args, only=("storage", "registry_config", "state_dir",
                                                               "lock_timeout"))
    from regpatch.engine.prune import apply_prune, plan_prune  # only this command needs it (start-up)
    from regpatch.storage.store import RegistryStore  # only this command needs it (start-up)

    store = RegistryStore(Path(storage_root(args)), state_dir=registry.state_dir)
    plan = plan_prune(store, policy, repos)
    if args.apply and plan.images:
        plan = apply_prune(store, plan, policy, lock_timeout=registry.lock_timeout, change=change)
    elif args.apply:
        plan.applied = True
    if args.json:
        sys.stdout.write(json.dumps(asdict(plan), indent=2) + "\n")
    else:
        sys.stdout.write(plan.render() + "\n")


def run_gc(args: argparse.Namespace) -> None:
    """The dry run against the running registry; with --apply the maintenance window."""
    registry = model_of(RegistryParams, REGISTRY, args, only=GC_REGISTRY)
    maintenance = model_of(MaintenanceParams, MAINTENANCE, args)
    change = change_of(args)
    from regpatch.fleet.maintenance import gc_setup  # only this command needs it (start-up)

    report = gc_setup(registry, maintenance).collect(apply=args.apply, lock_timeout=registry.lock_timeout,
                                                     change=change)
    if args.json:
        sys.stdout.write(json.dumps(asdict(report), indent=2) + "\n")
    else:
        sys.stdout.write(report.render() + "\n")
