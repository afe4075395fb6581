"""regpatch: patch container images inside a distribution registry's storage."""

__version__ = "0.2.0"

from regpatch.sanitize import install_log_escaping as _install_log_escaping

# Names from bundles and storages reach log lines: every record of the
# ``regpatch`` logger tree is escaped when it is made (see regpatch.sanitize).
_install_log_escaping()
