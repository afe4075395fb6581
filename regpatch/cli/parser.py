"""The command line's grammar: one subcommand per verb, their options made from the
parameter models (``regpatch.cli.options``) and, for the few that belong to one command
only, written here."""

from __future__ import annotations

import argparse
import sys

from regpatch.cli.options import add_options
from regpatch.options import CHANGE, MAINTENANCE, REGISTRY, RETENTION, ROLLOUT, S3, TRUST, VERIFY

# The six forms the bundle reader accepts (regpatch.bundle.open.FORMATS, a docker save archive also
# unpacked); the format is found from the content, never from the name.
BUNDLE_FORMATS = (
    "an OCI image layout folder",
    "an OCI archive (tar, plain or gzip/zstd/xz/bzip2 compressed)",
    "a skopeo dir: folder",
    "a docker save archive (converted: new digest)",
    "an unpacked docker save folder (converted)",
    "a staged folder (the seed's files and .digest sidecars)",
)
BUNDLE_HELP = "the patch bundle, one of: " + "; ".join(BUNDLE_FORMATS) + ". Local, or s3://bucket/prefix"
STATE_ONLY = ("storage", "registry_config", "state_dir")  # the commands that read the state folder only
CHANGE_TITLE = "the change (recorded in the registry's history)"
HARDENING = ("init", "ignore_url_policy", "allow_cross_repository")  # patch options a rollback has no use for


def _repository_tag(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--repository", required=required, metavar="NAME",
                   help="the repository, e.g. servercore or windows/servercore")
    p.add_argument("--tag", required=required, help="the tag, e.g. ltsc2019")


def _local(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true",
                   help="run here without Prefect even when a Prefect API is configured")


def installed_version() -> str:
    """regpatch's version from the installed package's metadata (what pip installed), else the
    source's own (a checkout run without installing)."""
    from importlib import metadata  # only for --version (start-up)

    try:
        return metadata.version("regpatch")
    except metadata.PackageNotFoundError:
        from regpatch import __version__  # a checkout without metadata: the source's own version
        return __version__


class _VersionAction(argparse.Action):
    """--version: read the metadata only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(f"regpatch {installed_version()}\n", sys.stdout)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regpatch",
        description="Patch container images inside a distribution registry's storage and verify by pulling.")
    parser.add_argument("--version", action=_VersionAction, help="print regpatch's version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _patch(sub)
    _rollback(sub)
    _history(sub)
    _rollout(sub)
    _deployments(sub)
    _status(sub)
    _prune(sub)
    _gc(sub)
    _contents(sub)
    _bundle(sub)
    _keygen(sub)
    _check_bundle(sub)
    _inspect(sub)
    return parser


def _patch(sub) -> None:
    p = sub.add_parser("patch", help="apply a patch bundle to one registry",
                       description="Apply BUNDLE to REPOSITORY:TAG in a registry's storage: verify every "
                                   "byte, copy blobs, write links, restart if asked, pull the new image by "
                                   "digest, and only then move the tag.")
    p.add_argument("bundle", metavar="BUNDLE", help=BUNDLE_HELP)
    _repository_tag(p)
    p.add_argument("--image", metavar="NAME",
                   help="the image of a bundle holding several: its ref.name annotation (OCI) or RepoTag "
                        "(docker save)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, verify the bundle, write nothing")
    p.add_argument("--consume", action="store_true",
                   help="take the bundle's layer files instead of copying them: each is renamed into the "
                        "storage (same filesystem only) and verified there; the bundle folder keeps a note "
                        "(regpatch-consumed.jsonl) of what was taken")
    _local(p)
    add_options(p, REGISTRY, title="the registry")
    add_options(p, VERIFY, title="verification")
    add_options(p, TRUST, title="signatures (bundles made by regpatch bundle --sign-key)")
    add_options(p, S3, title="S3 bundles (BUNDLE = s3://bucket/prefix)")
    add_options(p, CHANGE, title=CHANGE_TITLE)


def _rollback(sub) -> None:
    r = sub.add_parser("rollback", help="point a tag back at its previous image",
                       description="Point REPOSITORY:TAG at the digest it had before the last change "
                                   "(from history) or at --to DIGEST, after checking that image is complete; "
                                   "then verify by pulling.")
    _repository_tag(r)
    r.add_argument("--to", metavar="DIGEST", help="sha256:... of an image of the repository")
    _local(r)
    add_options(r, REGISTRY, exclude=HARDENING, title="the registry")
    add_options(r, VERIFY, only=("command",), title="verification")
    add_options(r, CHANGE, title=CHANGE_TITLE)


def _history(sub) -> None:
    h = sub.add_parser("history", help="print every recorded tag change",
                       description="Print the tag changes regpatch recorded in a registry's storage.")
    _repository_tag(h, required=False)
    h.add_argument("--json", action="store_true", help="one JSON object per line")
    add_options(h, REGISTRY, only=STATE_ONLY)


def _rollout(sub) -> None:
    p = sub.add_parser("rollout", help="apply a patch bundle to every registry of an inventory",
                       description="Roll BUNDLE out to REPOSITORY:TAG on the registries of an inventory: "
                                   "groups run as waves, registries of a wave in parallel; registries "
                                   "are checked again on a re-run (nothing is written where the bundle is "
                                   "complete), except those rolled back since.")
    p.add_argument("bundle", metavar="BUNDLE", nargs="?",
                   help=BUNDLE_HELP + " (the same path on every host); or leave it out and give --drop")
    _repository_tag(p)
    p.add_argument("--image", metavar="NAME", help="the image of a bundle holding several, as for patch")
    p.add_argument("--dry-run", action="store_true", help="plan and verify everywhere, write nothing")
    _local(p)
    add_options(p, ROLLOUT)
    add_options(p, VERIFY, only=("command",))
    add_options(p, CHANGE, title=CHANGE_TITLE)


def _deployments(sub) -> None:
    p = sub.add_parser("deployments", help="per-registry Prefect deployments from an inventory",
                       description="For every registry of the inventory, the deployments patch-registry/patch-NAME, "
                                   "rollback-registry/rollback-NAME, registry-history/history-NAME and "
                                   "registry-maintenance/maintenance-NAME on its work pool, with the "
                                   "registry (storage, config, URL, restart...) as their parameter (with --apply: "
                                   "its regpatch-registry block): a run "
                                   "from the UI needs only the bundle, the repository and the tag. Prints them "
                                   "as a prefect.yaml; --apply creates or updates them on the Prefect API (and "
                                   "deletes those an older regpatch named NAME alone).")
    add_options(p, ROLLOUT, only=("inventory", "only", "drop", "max_bundle_age_days"), required=("inventory",))
    p.add_argument("--repository", metavar="NAME", help="prefill the repository of the patch and rollback forms")
    p.add_argument("--tag", metavar="TAG", help="with --check: the tag the scheduled rollout patches")
    p.add_argument("--check", action="store_true",
                   help="say which bundle of --drop the next scheduled rollout of --repository:--tag would take "
                        "(or why it would refuse), reading the inventory's storages; changes nothing")
    p.add_argument("--default-pool", default="regpatch", metavar="POOL",
                   help="work pool of registries without a work_pool (default regpatch: where the rollout runs)")
    p.add_argument("--output", metavar="FILE", help="write the prefect.yaml here instead of printing it")
    p.add_argument("--apply", action="store_true",
                   help="create or update the deployments (and missing process work pools) on the Prefect API")
    p.add_argument("--notify", metavar="TYPE/NAME",
                   help="with --apply: create or update the automation that sends a message through this "
                        "notification block (e.g. custom-webhook/oncall) for every failed or crashed patch, "
                        "rollback or rollout run (see docs/operators.md)")


def _status(sub) -> None:
    p = sub.add_parser("status", help="is every registry of an inventory on the latest rollout's image?",
                       description="One row per registry of the inventory: the digest the tag has in the storage "
                                   "and the one the API serves, the latest rollout's, the last change recorded, "
                                   "verified or not, disk used and free. Exit 7 when a registry is behind, "
                                   "drifts or cannot be read. Reads only.")
    add_options(p, ROLLOUT, only=("inventory", "only", "state_dir"), required=("inventory",))
    p.add_argument("--repository", metavar="NAME",
                   help="the repository (default: every repository:tag the inventory's rollouts wrote state for)")
    p.add_argument("--tag", help="the tag (with --repository)")
    p.add_argument("--json", action="store_true", help="the rows as one JSON document")


def _prune(sub) -> None:
    p = sub.add_parser("prune", help="unlink the old images regpatch put in a registry (a retention policy)",
                       description="Keep every image a tag points at, the --keep images each tag pointed at "
                                   "before (from the history), images younger than --keep-days and the children "
                                   "of kept indexes; unlink the other images regpatch wrote (their revision link "
                                   "and tag index entries, recorded in the history as 'pruned'). Blobs are freed "
                                   "by the registry's garbage collection afterwards. Prints what would go and the "
                                   "bytes the garbage collection would free; writes only with --apply.")
    p.add_argument("--repository", metavar="NAME", help="only this repository (default: every repository)")
    add_options(p, RETENTION, title="what is kept")
    p.add_argument("--apply", action="store_true", help="unlink (default: print the plan, write nothing)")
    p.add_argument("--json", action="store_true", help="the plan (or what was done) as one JSON document")
    add_options(p, REGISTRY, only=STATE_ONLY + ("lock_timeout",), title="the registry")
    add_options(p, CHANGE, title="the change (recorded in each pruned image's history line)")


GC_REGISTRY = ("storage", "registry_config", "registry_url", "restart", "registry_auth_file", "registry_ca", "insecure",
               "state_dir", "lock_timeout")


def _gc(sub) -> None:
    p = sub.add_parser("gc", help="the registry's own garbage collection, in a maintenance window, proven",
                       description="Check the registry's garbage-collect --dry-run against what regpatch keeps "
                                   "(every tag, every linked manifest, every child of a kept index) and print "
                                   "what it would delete. With --apply: hold the storage's maintenance gate (no "
                                   "patch, rollback or prune runs meanwhile), stop the registry through --restart "
                                   "(process: or service:), check the dry run again, run garbage-collect (never "
                                   "--delete-untagged), start the registry, pull every tag and every kept digest "
                                   "by the API and report the bytes freed. A killed run is finished by the next.")
    add_options(p, REGISTRY, only=GC_REGISTRY, title="the registry")
    add_options(p, MAINTENANCE, title="the maintenance window")
    add_options(p, CHANGE, title="the change (recorded in the gc's journal and report)")
    p.add_argument("--apply", action="store_true",
                   help="stop the registry, collect, start it, prove (default: the dry run only, nothing stopped)")
    p.add_argument("--json", action="store_true", help="the report as one JSON document")


def _contents(sub) -> None:
    c = sub.add_parser("contents", help="write what a registry's storage holds, for 'bundle --have'",
                       description="Write a small deterministic JSON of the blobs (digest, size) and, per "
                                   "repository, the tags and manifest revisions of a registry's storage. "
                                   "Reads only.")
    add_options(c, REGISTRY, only=("storage", "registry_config"))
    c.add_argument("--repository", action="append", metavar="NAME",
                   help="only these repositories' tags and revisions (repeatable); blobs are always all")
    c.add_argument("--out", required=True, metavar="FILE", help="the contents file to write ('-': stdout)")


def _bundle(sub) -> None:
    b = sub.add_parser("bundle", help="make a (delta, signed) bundle of an image",
                       description="Write SOURCE's image as an OCI image layout to DEST, leaving out the "
                                   "configs and layers the --have contents files list, with "
                                   "regpatch-bundle.json and, with --sign-key, its signature.")
    b.add_argument("source", metavar="SOURCE",
                   help="docker://HOST[:PORT]/REPO:TAG (or @sha256:...), an OCI layout folder (oci:PATH), "
                        "or a dir: / staged folder")
    b.add_argument("--out", required=True, metavar="DEST", help="a new or empty folder, or s3://bucket/prefix")
    b.add_argument("--have", action="append", default=[], metavar="FILE",
                   help="a contents file of the target site (repeatable): its blobs are not carried")
    b.add_argument("--sign-key", metavar="KEY",
                   help="PEM private key (Ed25519 or P-256) to sign regpatch-bundle.json; an encrypted "
                        "key is opened with $REGPATCH_SIGN_KEY_PASSWORD")
    b.add_argument("--image", metavar="NAME", help="image of an OCI layout SOURCE, by its ref.name")
    b.add_argument("--platform", metavar="OS/ARCH[/VARIANT][:OSVERSION]",
                   help="take only this platform's manifest of a multi-platform index (default: the "
                        "whole index)")
    b.add_argument("--repository", metavar="NAME",
                   help="repository the bundle is meant for (default: that of a docker:// SOURCE)")
    b.add_argument("--tag", help="tag the bundle is meant for (default: that of a docker:// SOURCE)")
    add_options(b, REGISTRY, only=("registry_auth_file", "registry_ca", "insecure"),
                title="the source registry (SOURCE = docker://...)")
    add_options(b, S3, only=("endpoint_url", "region", "retries", "part_size_mib"),
                title="S3 destination (DEST = s3://bucket/prefix; parts of at least 5 MiB)")


def _keygen(sub) -> None:
    k = sub.add_parser("keygen", help="make a key pair to sign bundles",
                       description="Write PREFIX.key (PKCS#8 PEM, owner-only; encrypted when "
                                   "$REGPATCH_SIGN_KEY_PASSWORD is set) and PREFIX.pub. Never overwrites.")
    k.add_argument("--out", required=True, metavar="PREFIX", help="where the two files go: PREFIX.key, PREFIX.pub")
    k.add_argument("--algorithm", choices=("ed25519", "p256"), default="ed25519",
                   help="ed25519 (default) or p256 (ECDSA P-256)")


def _check_bundle(sub) -> None:
    v = sub.add_parser("check-bundle", help="check a bundle's signature, listing and base before a patch",
                       description="What 'patch --trust-key' checks before anything is staged: the "
                                   "signature, that regpatch-bundle.json describes the bundle, and that "
                                   "the blobs it assumes present are in the registry storage. Reads only.")
    v.add_argument("bundle", metavar="BUNDLE", help="bundle folder or s3://bucket/prefix")
    add_options(v, REGISTRY, only=STATE_ONLY)
    add_options(v, TRUST)
    add_options(v, S3, only=("endpoint_url", "region"))


def _inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show what a bundle holds (format, images, platforms, blobs)",
                       description="Show what BUNDLE holds: its format, images and platforms (with "
                                   "os.version), manifest digests, blobs with sizes and which are foreign, "
                                   "total bytes. Reads names, manifests and configs only; --verify hashes "
                                   "every blob. Writes nothing.")
    p.add_argument("bundle", metavar="BUNDLE", help=BUNDLE_HELP)
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--verify", action="store_true", help="hash every blob of the bundle")
    p.add_argument("--image", metavar="NAME",
                   help="only this image (OCI ref name, or a RepoTag of a docker save archive)")
    add_options(p, S3, title="S3 bundles (BUNDLE = s3://bucket/prefix)")


def commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every parser under ``parser``, itself first, as ("regpatch patch", its parser), in the order
    the commands were added: for the help test and the generated CLI reference (docs/hooks)."""
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += commands(child)
    return found


def options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """"COMMAND OPTION" for every option or argument of every command that has no help line."""
    return [f"{path} {'/'.join(a.option_strings) or a.dest}"
            for path, p in commands(parser) for a in p._actions
            if not isinstance(a, argparse._SubParsersAction) and (not a.help or a.help == argparse.SUPPRESS)]
