"""The registry as a service: its config.yml, credentials, HTTP API, restart and processes."""
