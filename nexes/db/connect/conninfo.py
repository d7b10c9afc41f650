"""Connection strings per role: the role replaces the user named in the URL."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from nexes.settings import Settings


def for_role(url: str, settings: Settings, role: str, *, application_name: str = "nexes") -> str:
    """`url` with its user replaced by `role` (and its password, when one is configured)."""
    params = conninfo_to_dict(url)
    params["user"] = role
    password = str(settings.roles[role].password) if role in settings.roles else ""
    if password:
        params["password"] = password
    params.setdefault("application_name", application_name)
    params.setdefault("connect_timeout", 5)
    return make_conninfo("", **params)


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at another database on the same server (tests use this).

    A URL stays a URL: NEXES_REPLICA_URLS is space-separated, and a key=value
    conninfo would fall apart there.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return urlsplit(url)._replace(path="/" + quote(dbname)).geturl()
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


URL_VARIABLES = ("NEXES_PRIMARY_URL", "NEXES_ADMIN_URL", "NEXES_MONITOR_URL")
URL_LIST_VARIABLES = ("NEXES_REPLICA_URLS", "NEXES_REPLICA_ADMIN_URLS", "NEXES_MONITOR_REPLICA_URLS")


def environ_for_database(environ: Mapping[str, str], dbname: str) -> dict[str, str]:
    """A copy of `environ` whose database URLs all name `dbname` (tests and benchmarks)."""
    env = dict(environ)
    for key in URL_VARIABLES:
        if env.get(key):
            env[key] = with_database(env[key], dbname)
    for key in URL_LIST_VARIABLES:
        env[key] = " ".join(with_database(u, dbname) for u in env.get(key, "").split())
    return env
