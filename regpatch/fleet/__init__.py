"""Many registries: the inventory, rollouts in waves, per-registry deployments (as data)."""
