"""The Prefect server a rollout runs on: which database it writes, and how many registries
at once that database takes. Plain data in, no Prefect import: the caller reads the
server's answers (``GET /admin/settings``, ``POST /block_schemas/filter``) with its client.

Prefect's default database, SQLite, takes one write at a time: with more than
``SQLITE_MAX_PARALLEL`` registries patched at once (each a task run, its steps, its
artifact, its logs, all written by the server as they come) writes meet and the server
answers ``503 database is locked``, which Prefect's client waits out for 2 s or more.
A rollout asks for more only on PostgreSQL.

How to tell: the server's settings hide its connection URL (``**********`` whatever it
is) and ``/health`` says ``true`` on both, so the server is read twice over:
- ``server.database.driver`` of ``/admin/settings``, when set (the production recipe, docs/fleet/production.md, sets
  ``PREFECT_SERVER_DATABASE_DRIVER=postgresql+asyncpg`` beside the URL; Prefect uses the
  driver only when no URL is given, so it is a statement, never a change);
- else the block schemas the server registers at its start, read back: PostgreSQL keeps
  JSON as ``jsonb``, whose objects come back with their keys ordered by length, then
  bytes; SQLite keeps the text, so the keys come back in the order Prefect wrote them
  (``title`` first, before ``type``). Most schemas in that order: PostgreSQL (the server
  adds a key after reading to a schema that refers to others); none: SQLite; else the
  answer is "unknown".
The URL this process was given (``PREFECT_API_DATABASE_CONNECTION_URL``) is not read: it
describes a server this process would start, not the one at ``PREFECT_API_URL``.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from regpatch.errors import UsageError
from regpatch.options import opt

SQLITE_MAX_PARALLEL = 4
POSTGRESQL, SQLITE = "postgresql", "sqlite"
RECIPE = "docs/fleet/production.md, the production recipe"


def jsonb_order(keys: Iterable[str]) -> list[str]:
    """The order PostgreSQL's ``jsonb`` gives an object's keys: shorter first, then bytewise."""
    return sorted(keys, key=lambda k: (len(k.encode()), k.encode()))


def server_database(settings: Any, block_schemas: Any) -> Optional[str]:
    """``"postgresql"``, ``"sqlite"`` or None (cannot tell) from the server's answers."""
    database = settings.get("server", {}).get("database", {}) if isinstance(settings, dict) else {}
    driver = database.get("driver") if isinstance(database, dict) else None
    if isinstance(driver, str) and driver:
        return POSTGRESQL if driver.startswith("postgresql") else SQLITE if driver.startswith("sqlite") else None
    orders = [list(s["fields"]) for s in block_schemas or [] if isinstance(s, dict)
              and isinstance(s.get("fields"), dict) and len(s["fields"]) >= 3]
    in_order = sum(keys == jsonb_order(keys) for keys in orders)
    if orders and 2 * in_order > len(orders):
        return POSTGRESQL
    if orders and in_order == 0:
        return SQLITE
    return None


def check_parallel(max_parallel: int, database: Optional[str]) -> None:
    """Refuse, before anything is touched, more registries at once than the database takes."""
    if max_parallel <= SQLITE_MAX_PARALLEL or database == POSTGRESQL:
        return
    which = ("runs on SQLite, Prefect's default database" if database == SQLITE else
             "does not show that it runs on PostgreSQL (if it does, set "
             "PREFECT_SERVER_DATABASE_DRIVER=postgresql+asyncpg in the server's environment)")
    raise UsageError(f"{opt.max_parallel} {max_parallel} needs a Prefect server on PostgreSQL: this one {which}, "
                     "which takes one write at a time and answers 'database is locked' to more; give "
                     f"{opt.max_parallel} {SQLITE_MAX_PARALLEL} or less, or move the server to PostgreSQL ({RECIPE})")
