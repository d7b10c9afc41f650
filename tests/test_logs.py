"""The log format every process shares (nexes.observability): the JSON line's fields, the
development console's line, and the logging configuration's levels."""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Iterator

import orjson
import pytest

from nexes import observability
from nexes import settings as settings_module
from tests.support.databases import environ_for

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def in_a_job() -> Iterator[None]:
    """The context a worker's TraceContext middleware sets for a message."""
    tokens = (
        observability.request_id_var.set("req-logs-1"),
        observability.traceparent_var.set(TRACEPARENT),
        observability.job_var.set(("msg-123", "run_import")),
    )
    yield
    observability.request_id_var.reset(tokens[0])
    observability.traceparent_var.reset(tokens[1])
    observability.job_var.reset(tokens[2])


def record(message: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("nexes.jobs.imports_runner", level, __file__, 1, message, args, None)


def test_a_json_line_carries_the_request_trace_and_job_ids(in_a_job: None) -> None:
    entry = orjson.loads(observability.JsonFormatter().format(record("import %d: running", 7)))
    assert entry["level"] == "INFO" and entry["logger"] == "nexes.jobs.imports_runner"
    assert entry["msg"] == "import 7: running" and entry["ts"].endswith("Z")
    assert (entry["request_id"], entry["job_id"], entry["actor"]) == ("req-logs-1", "msg-123", "run_import")
    assert (entry["trace_id"], entry["span_id"]) == (TRACEPARENT[3:35], TRACEPARENT[36:52])


def test_a_json_line_outside_any_request_has_no_ids() -> None:
    entry = orjson.loads(observability.JsonFormatter().format(record("started")))
    assert set(entry) == {"ts", "level", "logger", "msg"}


def test_the_console_line_is_one_coloured_line_with_the_same_ids(in_a_job: None) -> None:
    line = observability.ConsoleFormatter().format(record("import %d: running", 7, level=logging.WARNING))
    assert "\n" not in line
    assert "\x1b[33mWARNING" in line  # yellow
    assert "import 7: running" in line and "nexes.jobs.imports_runner" in line
    assert "request_id=req-logs-1" in line and "job_id=msg-123" in line and "actor=run_import" in line
    assert f"trace_id={TRACEPARENT[3:11]}" in line


def test_one_handler_for_every_logger_and_apscheduler_and_httpx_only_from_warning_up() -> None:
    config = observability.logging_config("INFO", "console")
    assert config["handlers"]["default"]["formatter"] == "console"
    assert config["loggers"]["apscheduler"]["level"] == config["loggers"]["httpx"]["level"] == "WARNING"
    assert config["root"]["level"] == "INFO"
    assert all(logger.get("handlers", ["default"]) == ["default"] for logger in config["loggers"].values())


def test_the_log_format_is_json_in_production_console_in_development_and_checked() -> None:
    env = environ_for("nexes_test")
    assert settings_module.load({**env, "NEXES_ENV": "production"}).log_format == "json"
    development = {**env, "NEXES_ENV": "development", "NEXES_JWT_SECRET": "x" * 32, "NEXES_CURSOR_SECRET": "y" * 32}
    assert settings_module.load(development).log_format == "console"
    assert settings_module.load({**env, "NEXES_LOG_FORMAT": "console"}).log_format == "console"
    with pytest.raises(settings_module.SettingsError, match="NEXES_LOG_FORMAT='xml'"):
        settings_module.load({**env, "NEXES_LOG_FORMAT": "xml"})
