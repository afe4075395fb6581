"""regpatch.cli.parser"""

from __future__ import annotations

import argparse
from typing import Optional

from regpatch.errors import UsageError


def _add_target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="ROOT",
                   help="the registry's rootdirectory (the folder that holds docker/registry/v2)")
    p.add_argument("--registry-config", metavar="CONFIG_YML",
                   help="the registry's config.yml: storage root and URL are read from it")
    p.add_argument("--registry-url", metavar="URL",
                   help="registry API for the verification pull, e.g. https://registry.local:5000")
    p.add_argument("--registry-auth-file", metavar="FILE",
                   help="docker config.json with credentials (default: REGPATCH_REGISTRY_USERNAME/"
                        "REGPATCH_REGISTRY_PASSWORD, then the usual docker/podman auth files)")
    p.add_argument("--registry-ca", metavar="PEM", help="CA bundle to verify the registry's TLS certificate")
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP / skip TLS verification of the registry")
    p.add_argument("--registry-name", metavar="NAME",
                   help="short name of the registry (e.g. site-a) for Prefect run names, tags and artifact "
                        "keys; default: the host name and the storage folder")



def _add_state_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", metavar="DIR",
                   help="regpatch's journal, history and locks (default ROOT/.regpatch, outside docker/)")
    p.add_argument("--lock-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="wait this long for another patch of the same repository (default 300)")



def _add_s3_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("S3 bundles (BUNDLE = s3://bucket/prefix)")
    g.add_argument("--s3-endpoint-url", metavar="URL",
                   help="S3-compatible endpoint (MinIO, Ceph, ...); default $AWS_ENDPOINT_URL, else AWS")
    g.add_argument("--s3-region", metavar="REGION", help="region (default: boto3's, else us-east-1)")
    g.add_argument("--aws-credentials-block", metavar="NAME",
                   help="Prefect AwsCredentials block (prefect-aws) holding the credentials; default: "
                        "boto3's chain (environment, profile, instance role)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="keep fetched blobs here by digest; later patches take them from here")
    g.add_argument("--s3-retries", type=int, default=5, metavar="N",
                   help="retries of each S3 call on transient faults (default 5)")
    g.add_argument("--s3-wait-initial", type=float, default=0.5, metavar="SECONDS",
                   help="first backoff between retries, doubled each time, with jitter (default 0.5)")
    g.add_argument("--s3-wait-max", type=float, default=20.0, metavar="SECONDS",
                   help="longest backoff between retries (default 20)")
    g.add_argument("--s3-concurrency", type=int, default=4, metavar="N",
                   help="ranged GETs at once for a large blob (default 4; 1: one streaming GET per blob)")
    g.add_argument("--s3-part-size", type=int, default=8, metavar="MIB",
                   help="size of one ranged GET in MiB (default 8); blobs up to two parts are one GET")



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regpatch",
        description="Patch container images inside a distribution registry's storage and verify by pulling.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("patch", help="apply a patch bundle to one registry",
                       description="Apply BUNDLE to REPOSITORY:TAG in a registry's storage: verify every "
                                   "byte, copy blobs, write links (tag last), restart if asked, verify by pulling.")
    p.add_argument("bundle", metavar="BUNDLE",
                   help="staged folder or OCI layout folder, local or s3://bucket/prefix")
    p.add_argument("--repository", required=True, metavar="NAME")
    p.add_argument("--tag", required=True)
    _add_target_options(p)
    p.add_argument("--restart", default="none", metavar="SPEC",
                   help="none (default) | command:<shell command> | "
                        "process:pidfile=PATH[,config=PATH][,binary=PATH][,log=PATH]")
    p.add_argument("--image", metavar="NAME", help="image of an OCI layout, by its ref.name annotation")
    p.add_argument("--verify-command", metavar="CMD",
                   help="external puller run after the API pull, {ref} is replaced, e.g. "
                        "'skopeo inspect --tls-verify=false docker://{ref}'")
    p.add_argument("--dry-run", action="store_true", help="print the plan, verify the bundle, write nothing")
    p.add_argument("--always-verify", action="store_true",
                   help="pull and verify even when nothing changed since a verified patch of the tag")
    p.add_argument("--local", action="store_true",
                   help="run here without Prefect even when a Prefect API is configured")
    p.add_argument("--consume", action="store_true",
                   help="take the bundle's layer files instead of copying them: each is renamed into the "
                        "storage (same filesystem only) and verified there; the bundle folder keeps a note "
                        "(regpatch-consumed.jsonl) of what was taken")
    p.add_argument("--trust-key", action="append", default=[], metavar="PUB",
                   help="PEM public key (Ed25519 / P-256; repeatable): the bundle must be signed by one of "
                        "them, match its regpatch-bundle.json and find its base blobs in the storage, "
                        "checked before anything is staged")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="with --trust-key: accept a bundle without signature (a wrong one is refused)")
    p.add_argument("--ignore-url-policy", action="store_true",
                   help="patch even when the registry's own rules (validation.manifests.urls of its "
                        "config.yml) would refuse the manifest's foreign-layer URLs on a push")
    p.add_argument("--allow-cross-repository", action="store_true",
                   help="let the image link blobs that other repositories hold but the bundle does not "
                        "carry (by default refused: it would expose another repository's layers)")
    p.add_argument("--init", action="store_true",
                   help="create docker/registry/v2 if the storage has none (a new registry); "
                        "without it such a storage is refused as a likely typo")
    _add_state_options(p)
    _add_s3_options(p)

    r = sub.add_parser("rollback", help="point a tag back at its previous image",
                       description="Point REPOSITORY:TAG at the digest it had before the last change "
                                   "(from history) or at --to DIGEST, after checking that image is complete; "
                                   "then verify by pulling.")
    r.add_argument("--repository", required=True, metavar="NAME")
    r.add_argument("--tag", required=True)
    r.add_argument("--to", metavar="DIGEST", help="sha256:... of an image of the repository")
    _add_target_options(r)
    r.add_argument("--restart", default="none", metavar="SPEC", help="as for patch")
    r.add_argument("--verify-command", metavar="CMD", help="as for patch")
    r.add_argument("--local", action="store_true", help="as for patch")
    _add_state_options(r)

    h = sub.add_parser("history", help="print every recorded tag change",
                       description="Print the tag changes regpatch recorded in a registry's storage.")
    h.add_argument("--storage", metavar="ROOT", help="the registry's rootdirectory")
    h.add_argument("--registry-config", metavar="CONFIG_YML", help="or the registry's config.yml")
    h.add_argument("--repository", metavar="NAME")
    h.add_argument("--tag")
    h.add_argument("--json", action="store_true", help="one JSON object per line")
    h.add_argument("--state-dir", metavar="DIR", help="regpatch's state folder (default ROOT/.regpatch)")
    _add_rollout_parser(sub)
    _add_deployments_parser(sub)
    _add_shuttle_parsers(sub)
    _add_inspect_parser(sub)
    return parser



def _add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show what a bundle holds (format, images, platforms, blobs)",
                       description="Show what BUNDLE holds: its format, images and platforms (with "
                                   "os.version), manifest digests, blobs with sizes and which are foreign, "
                                   "total bytes. Reads names, manifests and configs only; --verify hashes "
                                   "every blob. Writes nothing.")
    p.add_argument("bundle", metavar="BUNDLE",
                   help="a folder, an archive (.tar, .tar.gz, .tar.zst, ...), or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--verify", action="store_true", help="hash every blob of the bundle")
    p.add_argument("--image", metavar="NAME",
                   help="only this image (OCI ref name, or a RepoTag of a docker save archive)")
    _add_s3_options(p)



def _add_rollout_parser(sub) -> None:
    p = sub.add_parser("rollout", help="apply a patch bundle to every registry of an inventory",
                       description="Roll BUNDLE out to REPOSITORY:TAG on the registries of an inventory: "
                                   "groups run as waves, registries of a wave in parallel; registries "
                                   "are checked again on a re-run (nothing is written where the bundle is complete), "
                                   "except those rolled back since.")
    p.add_argument("bundle", metavar="BUNDLE", help="staged folder or OCI layout folder")
    p.add_argument("--inventory", required=True, metavar="FILE", help="inventory YAML file")
    p.add_argument("--repository", required=True, metavar="NAME")
    p.add_argument("--tag", required=True)
    p.add_argument("--only", action="append", metavar="NAMES",
                   help="only these registries (comma-separated; may be repeated)")
    p.add_argument("--max-parallel", type=int, default=4, metavar="N",
                   help="registries patched at once within a wave (default 4)")
    p.add_argument("--dry-run", action="store_true", help="plan and verify everywhere, write nothing")
    p.add_argument("--state-dir", metavar="DIR",
                   help="folder of the rollout state file (default: .regpatch-rollouts beside the inventory)")
    p.add_argument("--image", metavar="NAME", help="image of an OCI layout, by its ref.name annotation")
    p.add_argument("--verify-command", metavar="CMD",
                   help="external puller run after each patch, {ref} is replaced")
    p.add_argument("--local", action="store_true",
                   help="run here without Prefect even when a Prefect API is configured")



def _add_deployments_parser(sub) -> None:
    p = sub.add_parser("deployments", help="per-registry Prefect deployments from an inventory",
                       description="For every registry of the inventory, the deployments patch-registry/NAME, "
                                   "rollback-registry/NAME and registry-history/NAME on its work pool, with the "
                                   "registry (storage, config, URL, restart...) stored as their parameters: a run "
                                   "from the UI needs only the bundle, the repository and the tag. Prints them "
                                   "as a prefect.yaml; --apply creates or updates them on the Prefect API.")
    p.add_argument("--inventory", required=True, metavar="FILE", help="inventory YAML file")
    p.add_argument("--only", action="append", metavar="NAMES",
                   help="only these registries (comma-separated; may be repeated)")
    p.add_argument("--repository", metavar="NAME", help="prefill the repository of the patch and rollback forms")
    p.add_argument("--default-pool", default="regpatch", metavar="POOL",
                   help="work pool of registries without a work_pool (default regpatch: where the rollout runs)")
    p.add_argument("--output", metavar="FILE", help="write the prefect.yaml here instead of printing it")
    p.add_argument("--apply", action="store_true",
                   help="create or update the deployments (and missing process work pools) on the Prefect API")



def _only_names(args: argparse.Namespace) -> Optional[list[str]]:
    """The registry names of ``--only`` (comma-separated, repeatable; spaces around a name
    are dropped, nothing else is); None when ``--only`` is not given. Given, it must name
    at least one registry: an empty ``--only ""`` never means the whole fleet."""
    if args.only is None:
        return None
    names = [n.strip(" ") for v in args.only for n in v.split(",") if n.strip(" ")]
    if not names:
        raise UsageError("--only names no registry; give the names of the registries to patch, "
                         "or leave --only out for all of them")
    return names



def _add_shuttle_parsers(sub) -> None:
    c = sub.add_parser("contents", help="write what a registry's storage holds, for 'bundle --have'",
                       description="Write a small deterministic JSON of the blobs (digest, size) and, per "
                                   "repository, the tags and manifest revisions of a registry's storage. "
                                   "Reads only.")
    c.add_argument("--storage", metavar="ROOT", help="the registry's rootdirectory")
    c.add_argument("--registry-config", metavar="CONFIG_YML", help="or the registry's config.yml")
    c.add_argument("--repository", action="append", metavar="NAME",
                   help="only these repositories' tags and revisions (repeatable); blobs are always all")
    c.add_argument("--out", required=True, metavar="FILE", help="the contents file to write ('-': stdout)")

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
    b.add_argument("--registry-auth-file", metavar="FILE",
                   help="docker config.json with credentials for the source registry")
    b.add_argument("--registry-ca", metavar="PEM", help="CA bundle for the source registry's TLS certificate")
    b.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP / skip TLS verification of the source registry")
    g = b.add_argument_group("S3 destination (DEST = s3://bucket/prefix)")
    g.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint; default $AWS_ENDPOINT_URL")
    g.add_argument("--s3-region", metavar="REGION", help="region (default: boto3's, else us-east-1)")
    g.add_argument("--s3-retries", type=int, default=5, metavar="N",
                   help="retries of each S3 call on transient faults (default 5)")
    g.add_argument("--s3-part-size", type=int, default=8, metavar="MIB",
                   help="multipart upload part size in MiB (default 8, at least 5)")

    k = sub.add_parser("keygen", help="make a key pair to sign bundles",
                       description="Write PREFIX.key (PKCS#8 PEM, mode 0600; encrypted when "
                                   "$REGPATCH_SIGN_KEY_PASSWORD is set) and PREFIX.pub. Never overwrites.")
    k.add_argument("--out", required=True, metavar="PREFIX")
    k.add_argument("--algorithm", choices=("ed25519", "p256"), default="ed25519",
                   help="ed25519 (default) or p256 (ECDSA P-256)")

    v = sub.add_parser("check-bundle", help="check a bundle's signature, listing and base before a patch",
                       description="What 'patch --trust-key' checks before anything is staged: the "
                                   "signature, that regpatch-bundle.json describes the bundle, and that "
                                   "the blobs it assumes present are in the registry storage. Reads only.")
    v.add_argument("bundle", metavar="BUNDLE", help="bundle folder or s3://bucket/prefix")
    v.add_argument("--storage", metavar="ROOT", help="the registry's rootdirectory")
    v.add_argument("--registry-config", metavar="CONFIG_YML", help="or the registry's config.yml")
    v.add_argument("--trust-key", action="append", default=[], metavar="PUB",
                   help="PEM public key whose signatures are trusted (repeatable)")
    v.add_argument("--allow-unsigned", action="store_true",
                   help="accept a bundle without signature even though trust keys are given")
    v.add_argument("--state-dir", metavar="DIR", help="regpatch's state folder (default ROOT/.regpatch)")
    v.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint; default $AWS_ENDPOINT_URL")
    v.add_argument("--s3-region", metavar="REGION", help="region (default: boto3's, else us-east-1)")

