"""Settings: one object from the environment; a bad value names its variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nexes.settings import SettingsError, load

README = Path(__file__).resolve().parent.parent / "README.md"
BASE = {"NEXES_PRIMARY_URL": "postgresql://h/db", "NEXES_ADMIN_URL": "postgresql://h/db"}


def readme_default(variable: str) -> str:
    """The default the README's settings table gives for `variable`."""
    match = re.search(rf"^\| `{variable}` \| `([^`]*)` \|", README.read_text(), re.MULTILINE)
    assert match, f"{variable} is missing from the README's table"
    return match[1]


def test_defaults_match_the_readme() -> None:
    s = load(BASE)
    assert s.env == readme_default("NEXES_ENV")
    assert s.roles["nexes_api"].statement_timeout == float(readme_default("NEXES_STATEMENT_TIMEOUT"))
    assert s.roles["nexes_owner"].statement_timeout == float(readme_default("NEXES_OWNER_STATEMENT_TIMEOUT"))
    assert s.roles["nexes_worker"].connection_limit == int(readme_default("NEXES_WORKER_CONNECTION_LIMIT"))
    assert s.archive_after_years == int(readme_default("NEXES_ARCHIVE_AFTER_YEARS"))
    assert s.max_page_size == int(readme_default("NEXES_MAX_PAGE_SIZE"))
    assert s.pool_timeout == float(readme_default("NEXES_POOL_TIMEOUT"))
    assert s.audit_retention_days == int(readme_default("NEXES_AUDIT_RETENTION_DAYS"))
    assert s.replica_urls == ()
    for role in ("viewer", "operator", "analyst", "admin"):
        assert s.request_deadlines[role] == float(_per_role_default("NEXES_REQUEST_DEADLINE", role))
        assert s.max_cost[role] == int(_per_role_default("NEXES_MAX_COST", role))
        assert s.rate_limits[role] == int(_per_role_default("NEXES_RATE_LIMIT", role))
    assert s.max_response_bytes == int(readme_default("NEXES_MAX_RESPONSE_BYTES"))
    assert s.max_concurrent_requests == int(readme_default("NEXES_MAX_CONCURRENT_REQUESTS"))
    assert s.document_cache_bytes == int(readme_default("NEXES_DOCUMENT_CACHE_BYTES"))
    assert s.trusted_documents is (readme_default("NEXES_TRUSTED_DOCUMENTS") == "on")
    assert s.apq_max_documents == int(readme_default("NEXES_APQ_MAX_DOCUMENTS"))
    assert s.apq_max_document_bytes == int(readme_default("NEXES_APQ_MAX_DOCUMENT_BYTES"))
    assert s.apq_ttl == float(readme_default("NEXES_APQ_TTL"))
    assert s.trusted_documents_refresh == float(readme_default("NEXES_TRUSTED_DOCUMENTS_REFRESH"))
    assert s.share_reads is (readme_default("NEXES_SHARE_READS") == "on")


def _per_role_default(prefix: str, role: str) -> str:
    """A per-role setting: the README gives the viewer's default in its column and the
    others' in its text."""
    if role == "viewer":
        return readme_default(f"{prefix}_VIEWER")
    match = re.search(rf"`{prefix}_{role.upper()}` \(`([^`]*)`\)", README.read_text())
    assert match, f"{prefix}_{role.upper()} is missing from the README"
    return match[1]


def test_missing_required_url_names_itself() -> None:
    with pytest.raises(SettingsError, match="NEXES_PRIMARY_URL is not set"):
        load({"NEXES_ADMIN_URL": "postgresql://h/db"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NEXES_API_POOL_SIZE", "many"),
        ("NEXES_STATEMENT_TIMEOUT", "-1"),
        ("NEXES_ENV", "staging"),
        ("NEXES_LOG_FORMAT", "xml"),
        ("NEXES_WORKER_METRICS_PORT", "70000"),
        ("NEXES_SHARE_READS", "sometimes"),
    ],
)
def test_malformed_setting_names_itself(key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=key):
        load({**BASE, key: value})


def test_secrets_stay_out_of_repr() -> None:
    s = load({**BASE, "NEXES_TYPESENSE_API_KEY": "hunter2", "NEXES_API_PASSWORD": "sekrit"})
    assert "hunter2" not in repr(s)
    assert "sekrit" not in repr(s.roles["nexes_api"])
    assert str(s.roles["nexes_api"].password) == "sekrit"
