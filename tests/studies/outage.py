"""A real database outage for tests: the test database refuses connections for a while.

No mock: every connection to the test database is ended and new ones are refused
(`ALLOW_CONNECTIONS false`), as PostgreSQL does when it is down, from a connection
to the `postgres` maintenance database.
"""

import contextlib

import psycopg2
from django.db import connection


def admin_connection_kwargs() -> dict:
    """How to reach the `postgres` maintenance database of the test database's server."""
    db = connection.settings_dict
    return {
        "host": db["HOST"] or "127.0.0.1",
        "port": db["PORT"] or 5432,
        "user": db["USER"],
        "password": db["PASSWORD"] or None,
        "dbname": "postgres",
    }


def _admin():
    admin = psycopg2.connect(**admin_connection_kwargs())
    admin.autocommit = True
    return admin


@contextlib.contextmanager
def database_outage():
    """Inside the block, the test database cannot be reached by anyone."""
    name = connection.settings_dict["NAME"]
    connection.close()  # the test's own connection, closed cleanly rather than cut
    admin = _admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
        yield
    finally:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.close()
