"""Every option of regpatch, once, as plain data; and how a message names one.

The table below is the one definition of each option a caller can give: its name, its
title and description, its default and bounds, its command-line flag and metavar. From
it come the command line's flags (``regpatch.cli.options``: argparse, no pydantic, so
that a bad argument is answered at once), the parameter models (``regpatch.params``:
pydantic, the one validation; the Prefect run forms and the inventory's schema are
those models) and the wording of messages.

A message of the core names an option through ``opt``::

    raise UsageError(f"... give {opt.registry_config} ...")

and the caller decides the wording for the whole run (``wording``): a flag on the
command line (the default), a form field in a flow (``form_namer``), an inventory key in
a rollout (``inventory_namer``). The key is the flag's name with ``_`` for ``-``.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

Namer = Callable[[str], Optional[str]]


@dataclass(frozen=True)
class Option:
    """One option: a field of a parameter model, a flag of the command line."""

    name: str                        # the model's field name (and the inventory's key)
    title: str                       # the run form's label
    description: str                 # the form's and the command line's help
    kind: type = str                 # str, bool, int, float, list (of str)
    default: Any = None
    required: bool = False
    flag: Optional[str] = None       # default --name-with-dashes
    metavar: Optional[str] = None
    help: Optional[str] = None       # the command line's help, when shorter than the description
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    alias: Optional[str] = None      # the inventory's other name for it

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        """How the core's messages name it: ``opt.<key>``."""
        return self.cli_flag[2:].replace("-", "_")


def _group(*options: Option) -> dict[str, Option]:
    return {o.name: o for o in options}


REGISTRY = _group(
    Option("name", "Registry name", flag="--registry-name", metavar="NAME",
           description="Short name of this registry, e.g. site-a (letters, digits, '.', '_', '-'). Runs are named "
                       "NAME-REPOSITORY-TAG and tagged registry:NAME; the summary artifact is keyed the same way. "
                       "Default: the host name and the storage folder."),
    Option("storage", "Storage folder (rootdirectory)", metavar="ROOT",
           description="Required unless the registry's config.yml is given. The registry's rootdirectory: the "
                       "folder that holds docker/registry/v2, on the host that runs the patch."),
    Option("registry_config", "Registry config.yml", metavar="CONFIG_YML",
           description="The registry's config.yml on the host that runs the patch: the storage folder and the "
                       "API URL are read from it (the storage folder and the API URL, when given, win)."),
    Option("registry_url", "Registry API URL", metavar="URL", alias="url",
           description="For the verification pull, e.g. http://127.0.0.1:5000. Without any URL the new image "
                       "is checked in the storage only, not pulled."),
    Option("restart", "Restart", default="none", metavar="SPEC",
           description="How to restart the registry before the verification pull: none (a patch needs none), "
                       "command:COMMAND (a shell command), process:pidfile=PATH[,config=PATH][,binary=PATH]"
                       "[,log=PATH][,pass_env=NAME+NAME], or service:NAME[,timeout=SECONDS] (a Windows service "
                       "or a systemd unit: stopped, started, and the new process proven to answer)."),
    Option("registry_auth_file", "Auth file", metavar="FILE",
           description="Optional. A docker config.json holding credentials for the registry (read on the host "
                       "that runs the patch; never copied into the run). Default: REGPATCH_REGISTRY_USERNAME/"
                       "_PASSWORD, then the usual docker and podman auth files."),
    Option("registry_ca", "CA bundle", metavar="PEM",
           description="Optional. CA bundle (PEM) for the registry's TLS certificate."),
    Option("insecure", "Insecure", kind=bool, default=False,
           description="Allow plain HTTP and skip TLS verification."),
    Option("state_dir", "State folder", metavar="DIR",
           description="Optional. regpatch's journal, history and reports (default: .regpatch in the storage "
                       "folder, outside docker/)."),
    Option("lock_timeout", "Lock timeout (s)", kind=float, default=300.0, ge=0, metavar="SECONDS",
           description="Seconds to wait for another patch of the same repository (default 300)."),
    Option("init", "Create a new storage", kind=bool, default=False,
           description="Create docker/registry/v2 when the storage has none (a new, empty registry); without "
                       "it such a storage is refused as a typo."),
    Option("ignore_url_policy", "Ignore the URL policy", kind=bool, default=False,
           description="Patch a manifest whose foreign-layer URLs the registry's own rules "
                       "(validation.manifests.urls in its config.yml) would refuse on a push; each refusal "
                       "becomes a warning."),
    Option("allow_cross_repository", "Allow other repositories' blobs", kind=bool, default=False,
           description="Let the image link blobs that other repositories of this registry hold but the bundle "
                       "does not carry (by default only a bundle that carries the bytes, or a signed bundle that "
                       "lists them as assumed present, may do so)."),
)

VERIFY = _group(
    Option("command", "Verify command", flag="--verify-command", metavar="CMD",
           description="Optional. An external puller run after the API pull, with {ref} replaced by "
                       "host/repository@digest, e.g. skopeo inspect --tls-verify=false docker://{ref}. "
                       "Credentials go in environment variables ($VAR), never inline."),
    Option("always", "Always pull", kind=bool, default=False, flag="--always-verify",
           description="Pull again even when the storage already holds the whole patch and a pull through the "
                       "same URL proved it."),
)

S3 = _group(
    Option("endpoint_url", "Endpoint URL", flag="--s3-endpoint-url", metavar="URL",
           description="S3 endpoint (MinIO, Ceph...); default $AWS_ENDPOINT_URL, else AWS."),
    Option("region", "Region", flag="--s3-region", metavar="REGION",
           description="Default: boto3's, else us-east-1."),
    Option("aws_credentials_block", "AwsCredentials block", metavar="NAME",
           description="A prefect-aws AwsCredentials block holding the credentials (needs a Prefect API; "
                       "default: boto3's chain: environment, profile, instance role)."),
    Option("cache_dir", "Cache folder", metavar="DIR",
           description="Keep fetched blobs here by digest for later patches."),
    Option("retries", "Retries", kind=int, default=5, ge=0, le=100, flag="--s3-retries", metavar="N",
           description="Retries of each S3 call on transient faults (default 5)."),
    Option("wait_initial", "First back-off (s)", kind=float, default=0.5, ge=0, flag="--s3-wait-initial",
           metavar="SECONDS", description="First back-off between retries, doubled each time, with jitter "
                                          "(default 0.5)."),
    Option("wait_max", "Longest back-off (s)", kind=float, default=20.0, ge=0, flag="--s3-wait-max",
           metavar="SECONDS", description="Longest back-off between retries (default 20)."),
    Option("concurrency", "Parallel GETs", kind=int, default=4, ge=1, le=64, flag="--s3-concurrency", metavar="N",
           description="Ranged GETs at once for a large blob (default 4; 1: one streaming GET per blob)."),
    Option("part_size_mib", "Part size (MiB)", kind=int, default=8, ge=1, le=5120, flag="--s3-part-size",
           metavar="MIB", description="Size of one ranged GET in MiB (default 8); blobs up to two parts are one GET."),
)

TRUST = _group(
    Option("trust_keys", "Trust keys", kind=list, default=(), flag="--trust-key", metavar="PUB",
           description="PEM public keys (Ed25519 or ECDSA P-256) on the host that runs the patch: the bundle's "
                       "regpatch-bundle.json must be signed by one of them, its listing must match and the blobs "
                       "it assumes present must be in the storage, before anything is staged (repeatable)."),
    Option("allow_unsigned", "Allow unsigned", kind=bool, default=False,
           description="With trust keys: accept a bundle that carries no signature (a signature that no trust "
                       "key verifies is refused all the same)."),
    Option("allow_downgrade", "Allow an older bundle", kind=bool, default=False,
           description="Accept a signed bundle made before the image the tag serves now (a deliberate "
                       "rollback by bundle; regpatch rollback is the usual way back)."),
)

MAX_PARALLEL = 32

ROLLOUT = _group(
    Option("inventory", "Inventory", metavar="FILE",
           description="The inventory YAML file, a path on the host that runs the rollout "
                       "(see deployments/inventory.example.yml); or leave it empty and give registry blocks."),
    Option("registry_blocks", "Registry blocks (groups)", kind=list, metavar="GROUPS",
           help="instead of --inventory: the registries of the regpatch-registry blocks on the Prefect API "
                "whose group is one of these (comma-separated; repeatable; '*': every block); needs "
                "--state-dir",
           description="Instead of the inventory file: the registries of the Prefect blocks of type "
                       "regpatch-registry (regpatch deployments --apply writes one per registry of the "
                       "inventory) whose group is one of these; '*' takes every block, a block without a "
                       "group is in 'default'. Needs the rollout state folder."),
    Option("only", "Only these registries", kind=list, metavar="NAMES",
           help="only these registries (comma-separated; repeatable)",
           description="Patch only these registries (names of the inventory); all when empty."),
    Option("max_parallel", "Registries at once", kind=int, default=4, ge=1, le=MAX_PARALLEL, metavar="N",
           description=f"Registries patched at once within a wave (1 to {MAX_PARALLEL}; default 4)."),
    Option("state_dir", "Rollout state folder", metavar="DIR",
           description="Folder of the rollout state file (default: .regpatch-rollouts beside the inventory)."),
    Option("patch_timeout", "Patch timeout (s)", kind=float, default=6 * 3600, gt=0, metavar="SECONDS",
           description="Seconds to wait for one registry's run on another host's work pool."),
    Option("drop", "Drop location", metavar="DIR",
           description="Instead of a bundle: the folder (or s3://bucket/prefix) where the shuttle side lands "
                       "bundles, one per subfolder; the rollout takes the newest by the signed created time of "
                       "its regpatch-bundle.json, and refuses one every registry already serves, one older than "
                       "the maximum age, or an unsigned one when the inventory has trust keys."),
    Option("max_bundle_age_days", "Maximum bundle age (days)", kind=float, default=35.0, gt=0, metavar="DAYS",
           description="With a drop location: refuse a newest bundle created more than this many days ago "
                       "(default 35: last month's bundle is refused)."),
)

# who asked for a change and why: recorded in the registry's history and shown in the artifacts
CHANGE = _group(
    Option("requested_by", "Requested by", metavar="WHO",
           description="Required in the run form: who asked for this change (a name or an e-mail address), "
                       "recorded in the registry's history and shown in the summary. The command line "
                       "fills in user@host when it is not given."),
    Option("reason", "Reason (change ticket)", metavar="TEXT",
           description="Required in the run form: why, e.g. the change ticket CHG-1234, recorded in the "
                       "registry's history and shown in the summary. Optional on the command line."),
)

MAX_KEEP = 1000

RETENTION = _group(
    Option("keep", "Previous images kept per tag", kind=int, default=2, ge=0, le=MAX_KEEP, metavar="K",
           description="For each tag, the images it pointed at before its current one that stay (the rollback "
                       "depth; default 2). The image a tag points at is always kept."),
    Option("keep_days", "Keep images younger than (days)", kind=float, ge=0, metavar="DAYS",
           description="Also keep every image regpatch put in the storage less than this many days ago "
                       "(default: no age rule)."),
    Option("also_unrecorded", "Also images regpatch did not write", kind=bool, default=False,
           description="Also unlink untagged images regpatch's history does not say it wrote (pushed by "
                       "someone else, or written before the history began); default: they stay."),
)

MAINTENANCE = _group(
    Option("registry_binary", "Registry binary", metavar="PATH",
           description="The registry's program, whose own garbage-collect runs in the maintenance window "
                       "(default: the binary= of a process: restart, else docker-registry on Debian, "
                       "registry.exe on Windows)."),
)

GROUPS: dict[str, dict[str, Option]] = {"registry": REGISTRY, "verify": VERIFY, "s3": S3, "trust": TRUST,
                                        "rollout": ROLLOUT, "retention": RETENTION, "maintenance": MAINTENANCE,
                                        "change": CHANGE}
# options of the flows that are not fields of a model (the flows' own parameters)
FLOW_FIELDS = ("image", "dry_run", "to", "consume", "bundle")


# --------------------------------------------------------------------------- how a message names one

_NAMER: ContextVar[Optional[Namer]] = ContextVar("regpatch_option_namer", default=None)


def flag_of(key: str) -> str:
    return "--" + key.replace("_", "-")


def name_of(key: str) -> str:
    """``key`` as the current caller names it (a flag when no caller set a wording)."""
    namer = _NAMER.get()
    named = namer(key) if namer is not None else None
    return named or flag_of(key)


class _Options:
    """``opt.storage`` -> ``--storage``, or the caller's name for it."""

    def __getattr__(self, key: str) -> str:
        if key.startswith("__"):
            raise AttributeError(key)
        return name_of(key)


opt = _Options()


@contextmanager
def wording(namer: Optional[Namer]) -> Iterator[None]:
    """Within the block (and the threads started with its context), messages name options
    through ``namer`` (None: as flags)."""
    token = _NAMER.set(namer)
    try:
        yield
    finally:
        _NAMER.reset(token)


def _index(groups: tuple[str, ...]) -> dict[str, tuple[str, Option]]:
    """message key -> (group, option) over ``groups``, the first group winning a key two
    share (``state_dir`` of the registry and of the rollout)."""
    out: dict[str, tuple[str, Option]] = {}
    for group in groups:
        for o in GROUPS[group].values():
            out.setdefault(o.key, (group, o))
    return out


FORM_GROUPS = ("registry", "verify", "s3", "trust", "rollout", "retention", "maintenance", "change")


def form_namer(groups: tuple[str, ...] = FORM_GROUPS) -> Namer:
    """Options named as a run form shows them: ``"Storage folder (rootdirectory)" (registry.storage)``."""
    index = _index(groups)

    def name(key: str) -> Optional[str]:
        if key in index:
            group, o = index[key]
            return f'"{o.title}" ({group}.{o.name})'
        if key in FLOW_FIELDS:
            return f"the field {key!r}"
        return None

    return name


def inventory_namer(entry: str) -> Namer:
    """Options named as the inventory writes them: ``'url' of inventory entry site-a``."""
    index = _index(("registry", "trust"))
    index["verify_command"] = ("verify", VERIFY["command"])

    def name(key: str) -> Optional[str]:
        if key not in index:
            return None
        group, o = index[key]
        written = "verify_command" if group == "verify" else (o.alias or o.name)
        return f"{written!r} of inventory entry {entry}"

    return name
