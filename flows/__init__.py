"""Prefect's side of regpatch, the flows (installed as ``regpatch_flows``).

Each flow is a thin shell over one function of the core: ``patch`` (patch-registry),
``rollback`` (rollback-registry), ``history`` (registry-history), ``rollout``,
``make_bundle`` (make-bundle); ``deploy`` writes the per-registry deployments.
``entry`` is the one door the command line uses (``regpatch.cli.prefect_api.prefect_side``).
"""
