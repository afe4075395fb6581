"""The registry's storage: its paths, atomic reads and writes, and regpatch's own state beside it."""
