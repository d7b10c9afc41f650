"""Settings: one object from the environment; a bad value names its variable."""

from __future__ import annotations

import pytest

from nexes.settings import SettingsError, load

BASE = {"NEXES_PRIMARY_URL": "postgresql://h/db", "NEXES_ADMIN_URL": "postgresql://h/db"}


def test_defaults_match_the_readme() -> None:
    s = load(BASE)
    assert s.env == "production"
    assert s.roles["nexes_api"].statement_timeout == 30.0
    assert s.roles["nexes_owner"].statement_timeout == 0.0
    assert s.archive_after_years == 2
    assert s.replica_urls == ()


def test_missing_required_url_names_itself() -> None:
    with pytest.raises(SettingsError, match="NEXES_PRIMARY_URL is not set"):
        load({"NEXES_ADMIN_URL": "postgresql://h/db"})


@pytest.mark.parametrize(
    ("key", "value"),
    [("NEXES_API_POOL_SIZE", "many"), ("NEXES_STATEMENT_TIMEOUT", "-1"), ("NEXES_ENV", "staging")],
)
def test_malformed_setting_names_itself(key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=key):
        load({**BASE, key: value})


def test_secrets_stay_out_of_repr() -> None:
    s = load({**BASE, "NEXES_TYPESENSE_API_KEY": "hunter2", "NEXES_API_PASSWORD": "sekrit"})
    assert "hunter2" not in repr(s)
    assert "sekrit" not in repr(s.roles["nexes_api"])
    assert str(s.roles["nexes_api"].password) == "sekrit"
