"""Fast layer: real files in tmp folders; no registry process, no skopeo, no Prefect."""
