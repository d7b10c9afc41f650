"""All configuration, from the environment (NEXES_*), in one frozen object.

Starlette's `Config` does the parsing: it names the variable in every error and
keeps secrets out of reprs. No other module reads `os.environ`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

from starlette.config import Config
from starlette.datastructures import Secret

Env = Literal["development", "production"]
SqlTag = Literal["comment", "application_name", "both"]
ROLES = ("nexes_api", "nexes_worker", "nexes_analyst", "nexes_owner")
MONITOR_ROLE = "nexes_monitor"  # probes only: pg_monitor, LOGIN, CONNECTION LIMIT 5
# A request's deadline per caller role (nexes.auth.identity.Role), in seconds.
REQUEST_DEADLINES = {"viewer": 10.0, "operator": 10.0, "analyst": 30.0, "admin": 60.0}
# Per role: the most nodes one operation may ask for (nexes.execution.cost), and the rate
# limit's points an hour per subject (a query costs ceil(nodes / 100), at least 1).
MAX_COST = {"viewer": 50_000, "operator": 50_000, "analyst": 500_000, "admin": 1_000_000}
RATE_LIMITS = {"viewer": 5_000, "operator": 5_000, "analyst": 10_000, "admin": 20_000}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class RoleSettings:
    """Limits applied to one database role by `nexes migrate` (ALTER ROLE ... SET)."""

    name: str
    connection_limit: int
    statement_timeout: float  # seconds; 0 = none
    lock_timeout: float
    idle_in_transaction_timeout: float
    password: Secret = field(repr=False)


@dataclass(frozen=True)
class Settings:
    env: Env
    # URLs may carry passwords: kept out of repr.
    primary_url: str = field(repr=False)
    replica_urls: tuple[str, ...] = field(repr=False)
    # The owner (DDL: migrate, partitions, archive) and the replicas' superuser: only the
    # `nexes` commands and the ddl worker get them; the API runs without (owner_url()).
    admin_url: str = field(repr=False)
    replica_admin_urls: tuple[str, ...] = field(repr=False)
    redis_url: str = field(repr=False)
    typesense_url: str
    typesense_api_key: Secret = field(repr=False)
    roles: Mapping[str, RoleSettings] = field(repr=False, default_factory=dict)
    api_pool_size: int = 20
    worker_pool_size: int = 8
    analyst_pool_size: int = 4
    pool_timeout: float = 5.0
    partition_years_back: int = 5
    partitions_ahead: int = 4
    archive_after_years: int = 2
    # Reconciliation checks more quarters' lines only within this many seconds of its start.
    reconcile_line_seconds: float = 40.0
    log_level: str = "INFO"
    # json (one object per line) or console (one coloured line each); console in development.
    log_format: Literal["json", "console"] = "json"
    max_page_size: int = 100
    count_budget_ms: int = 100
    count_cap: int = 100_000
    # No default is committed: `infra/stack env` prints one generated per checkout, and
    # the API refuses to start without it (check_api).
    cursor_secret: Secret = field(repr=False, default=Secret(""))
    max_body_bytes: int = 1_000_000
    typesense_collection: str = "service_orders"
    typesense_timeout: float = 1.0
    # Typesense stops ranking a search's matches after this long and answers with what it
    # ranked (`foundExact: false`): a word in a million of 10M orders takes 320 ms to rank
    # in full on two cores, which a mix of many users' searches cannot afford.
    search_cutoff_ms: int = 60
    # A search that one Typesense node has not answered after this long is sent to the
    # next node as well, and the first answer wins (several nodes only).
    search_hedge_seconds: float = 0.3
    # With several Typesense nodes, a search no node has answered within the timeout waits
    # on for an answer up to this long from its start (every node slow at once: cores
    # starved), before the fallback; a node slower than another that answered in time is
    # the failing one. Half the viewer's request deadline: the fallback keeps the other half.
    search_patience_seconds: float = 5.0
    # Outbox rows a sync claims per transaction, and documents per Typesense import. A
    # 1M-row backlog drained in 75 s at 5,000 against 142 s at 1,000 (bench/README.md
    # "Search"); a quiet outbox makes small batches whatever this says.
    search_sync_batch: int = 5_000
    # Documents per bulk import of a reindex (one batch read ahead, one in flight).
    # Typesense pays per request: 20,000 a request made a 1M reindex 12% faster on
    # average than 5,000 on two cores (bench/README.md "Search").
    reindex_batch: int = 20_000
    search_sweep_seconds: float = 2.0
    search_breaker_failures: int = 3
    search_breaker_reset: float = 10.0
    search_concurrency: int = 8
    search_fallback_concurrency: int = 2
    search_queue_seconds: float = 2.0
    access_log: bool = True
    import_max_bytes: int = 1 << 30
    import_retention_days: int = 30
    import_lease_seconds: float = 20.0
    import_chunk_orders: int = 5_000
    import_apply_parallel: int = 2
    import_sweep_seconds: float = 10.0
    # Identity (nexes.auth): HS256 with the secret; RS256/ES256 from a JWKS (URL or file).
    jwt_secret: Secret = field(repr=False, default=Secret(""))
    jwks_url: str = ""
    jwks_file: str = ""
    jwt_issuer: str = "nexes"
    jwt_audience: str = "nexes-api"
    jwt_leeway: float = 30.0
    jwt_roles_claim: str = "roles"
    # The probing role (nexes_monitor), direct to the primary and to each replica.
    monitor_url: str = field(repr=False, default="")
    monitor_replica_urls: tuple[str, ...] = field(repr=False, default=())
    audit_retention_days: int = 400
    # /metrics and the detailed probes' listener, never the public port.
    ops_listen: str = "127.0.0.1:9464"
    # The workers' metrics on 127.0.0.1 (0: none), and their state (the multiprocess directory).
    worker_metrics_port: int = 0
    worker_state_dir: str = ""
    # The HTTP edge: a whole ordinary body must arrive within body_read_seconds; an upload
    # may take as long as it keeps sending, but no gap between chunks longer than this.
    body_read_seconds: float = 10.0
    upload_idle_seconds: float = 60.0
    # Uploads: files per multipart request; XLSX caps (uncompressed bytes, ratio of
    # uncompressed to compressed, shared strings); cells per row (CSV and XLSX).
    upload_max_files: int = 1
    xlsx_max_uncompressed_bytes: int = 2 << 30
    xlsx_max_ratio: int = 100
    xlsx_max_shared_strings: int = 2_000_000
    import_max_cells_per_row: int = 64
    # Seconds any one Redis call may take (connect and each command).
    redis_timeout: float = 2.0
    replica_max_lag: float = 5.0
    replica_probe_interval: float = 1.0
    replica_probe_timeout: float = 1.0
    cors_origins: tuple[str, ...] = ()
    # Whether the standard OTEL_* variables ask for traces to be exported; the OpenTelemetry
    # SDK reads the rest of them (endpoint, headers, sampler, service name) itself.
    otel_traces_export: bool = False
    # Issue 17's limits: a request's run time by the caller's most generous role (seconds);
    # a response's serialised size; requests one process runs at once (more get 503); the
    # query text the parse and validation caches may hold, summed.
    request_deadlines: Mapping[str, float] = field(default_factory=lambda: dict(REQUEST_DEADLINES))
    max_response_bytes: int = 10_000_000
    max_concurrent_requests: int = 200
    document_cache_bytes: int = 4_000_000
    max_cost: Mapping[str, int] = field(default_factory=lambda: dict(MAX_COST))
    rate_limits: Mapping[str, int] = field(default_factory=lambda: dict(RATE_LIMITS))
    # Trusted documents (nexes.execution.documents): allow-list mode for viewers and operators;
    # automatic persisted queries in Redis, bounded by count, per-document bytes and expiry;
    # how old the API's copy of the registered hashes may grow before it is read again.
    trusted_documents: bool = False
    apq_max_documents: int = 10_000
    apq_max_document_bytes: int = 16_384
    apq_ttl: float = 86_400.0
    trusted_documents_refresh: float = 5.0
    # Issue 20: every node of a Typesense cluster (NEXES_TYPESENSE_URLS; empty: the one node
    # of NEXES_TYPESENSE_URL); the Dramatiq broker (redis:// or amqp://; empty: Redis at
    # NEXES_REDIS_URL, which stays required for the scheduler lock, rate limits and
    # revocations); nexes_monitor's CONNECTION LIMIT on each server.
    typesense_cluster: tuple[str, ...] = ()
    broker_url: str = field(repr=False, default="")
    monitor_connection_limit: int = 5
    # Issue 21: the API's pools prepare their statements (psycopg's prepare_threshold) when
    # on: for direct connections, or a pooler that keeps prepared statements (PgBouncer
    # 1.21+); never behind PgBouncer 1.18 in transaction mode. How a statement carries its
    # request id (nexes.db.connect.session_tag): "comment" defeats preparing, so by default
    # it follows prepare: a comment when off, application_name when on.
    prepare: bool = False
    sql_tag: SqlTag = "comment"
    # Issue 21: pages of orders whose selection is plain columns have PostgreSQL build each
    # order's JSON (nexes.schema.rendered); off: Python builds every answer, as before.
    render_sql: bool = True
    # Issue 21: a read the same as one already in flight takes its answer (single flight,
    # nexes.db.connect.router.Router._shared); off: every request runs its own statements.
    share_reads: bool = True
    # GraphiQL (nexes.http.graphiql) in production: off by default; development always has it.
    graphiql: bool = False
    # The reference SPA's built files (examples/spa/dist), served at /app in development only.
    spa_dir: str = ""

    @property
    def development(self) -> bool:
        return self.env == "development"

    @property
    def typesense_urls(self) -> tuple[str, ...]:
        """Every Typesense node Nexes may ask."""
        return self.typesense_cluster or (self.typesense_url,)

    @property
    def dramatiq_url(self) -> str:
        """The Dramatiq broker's URL: NEXES_BROKER_URL, else Redis."""
        return self.broker_url or self.redis_url

    def owner_url(self) -> str:
        """NEXES_ADMIN_URL, for the commands and the ddl worker that need the owner."""
        if not self.admin_url:
            raise SettingsError(
                "NEXES_ADMIN_URL is not set: this command runs DDL as the owner "
                '(for the local stack: eval "$(infra/stack env)")'
            )
        return self.admin_url

    def check_api(self) -> None:
        """What the API cannot start without: a JWT key source and a cursor secret."""
        missing = []
        if not (str(self.jwt_secret) or self.jwks_url or self.jwks_file):
            missing.append("a JWT key source (NEXES_JWT_SECRET, NEXES_JWKS_URL or NEXES_JWKS_FILE)")
        if not str(self.cursor_secret):
            missing.append("NEXES_CURSOR_SECRET (the cursor-signing secret)")
        if missing:
            raise SettingsError("the API cannot start without " + " and ".join(missing))


def _positive(config: Config, key: str, default: float, cast: type[float] | type[int]) -> float:
    value = config(key, cast=cast, default=default)
    if value < 0:
        raise SettingsError(f"{key}={value}: must be zero or more")
    return value


def _role(config: Config, name: str, *, connection_limit: int, statement_timeout: float) -> RoleSettings:
    prefix = "NEXES_" + name.removeprefix("nexes_").upper()
    return RoleSettings(
        name=name,
        connection_limit=int(_positive(config, f"{prefix}_CONNECTION_LIMIT", connection_limit, int)),
        statement_timeout=_positive(config, f"{prefix}_STATEMENT_TIMEOUT", statement_timeout, float),
        lock_timeout=_positive(config, f"{prefix}_LOCK_TIMEOUT", 10.0 if statement_timeout else 0.0, float),
        idle_in_transaction_timeout=_positive(
            config, f"{prefix}_IDLE_IN_TRANSACTION_TIMEOUT", 60.0 if statement_timeout else 0.0, float
        ),
        password=Secret(config(f"{prefix}_PASSWORD", default="")),
    )


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from `environ` (default: the process environment)."""
    config = Config(environ=dict(os.environ if environ is None else environ))
    try:
        env = config("NEXES_ENV", default="production")
        if env not in ("development", "production"):
            raise SettingsError(f"NEXES_ENV={env!r}: must be 'development' or 'production'")
        statement_timeout = _positive(config, "NEXES_STATEMENT_TIMEOUT", 30.0, float)
        roles = {
            "nexes_api": _role(config, "nexes_api", connection_limit=80, statement_timeout=statement_timeout),
            "nexes_worker": _role(config, "nexes_worker", connection_limit=20, statement_timeout=statement_timeout),
            "nexes_analyst": _role(config, "nexes_analyst", connection_limit=15, statement_timeout=statement_timeout),
            # DDL and long maintenance must never be cut short by a timeout.
            "nexes_owner": _role(config, "nexes_owner", connection_limit=20, statement_timeout=0.0),
        }
        return Settings(
            env=cast(Env, env),
            primary_url=_required(config, "NEXES_PRIMARY_URL"),
            replica_urls=tuple(config("NEXES_REPLICA_URLS", default="").split()),
            admin_url=config("NEXES_ADMIN_URL", default=""),
            replica_admin_urls=tuple(config("NEXES_REPLICA_ADMIN_URLS", default="").split()),
            redis_url=config("NEXES_REDIS_URL", default="redis://127.0.0.1:6379/0"),
            typesense_url=config("NEXES_TYPESENSE_URL", default="http://127.0.0.1:8108"),
            typesense_api_key=Secret(config("NEXES_TYPESENSE_API_KEY", default="")),
            roles=roles,
            api_pool_size=int(_positive(config, "NEXES_API_POOL_SIZE", 20, int)),
            worker_pool_size=int(_positive(config, "NEXES_WORKER_POOL_SIZE", 8, int)),
            analyst_pool_size=int(_positive(config, "NEXES_ANALYST_POOL_SIZE", 4, int)),
            pool_timeout=_positive(config, "NEXES_POOL_TIMEOUT", 5.0, float),
            partition_years_back=int(_positive(config, "NEXES_PARTITION_YEARS_BACK", 5, int)),
            partitions_ahead=int(_positive(config, "NEXES_PARTITIONS_AHEAD", 4, int)),
            archive_after_years=int(_positive(config, "NEXES_ARCHIVE_AFTER_YEARS", 2, int)),
            reconcile_line_seconds=_positive(config, "NEXES_RECONCILE_LINE_SECONDS", 40.0, float),
            log_level=config("NEXES_LOG_LEVEL", default="INFO").upper(),
            log_format=_log_format(config, env),
            max_page_size=int(_positive(config, "NEXES_MAX_PAGE_SIZE", 100, int)),
            count_budget_ms=int(_positive(config, "NEXES_COUNT_BUDGET", 0.1, float) * 1000),
            count_cap=int(_positive(config, "NEXES_COUNT_CAP", 100_000, int)),
            cursor_secret=Secret(config("NEXES_CURSOR_SECRET", default="")),
            max_body_bytes=int(_positive(config, "NEXES_MAX_BODY_BYTES", 1_000_000, int)),
            typesense_collection=config("NEXES_TYPESENSE_COLLECTION", default="service_orders"),
            typesense_timeout=max(0.05, _positive(config, "NEXES_TYPESENSE_TIMEOUT", 1.0, float)),
            search_cutoff_ms=max(1, int(_positive(config, "NEXES_SEARCH_CUTOFF_MS", 60, int))),
            search_hedge_seconds=max(0.01, _positive(config, "NEXES_SEARCH_HEDGE_SECONDS", 0.3, float)),
            search_patience_seconds=_positive(config, "NEXES_SEARCH_PATIENCE_SECONDS", 5.0, float),
            search_sync_batch=max(1, int(_positive(config, "NEXES_SEARCH_SYNC_BATCH", 5_000, int))),
            reindex_batch=max(1, int(_positive(config, "NEXES_REINDEX_BATCH", 20_000, int))),
            search_sweep_seconds=max(0.1, _positive(config, "NEXES_SEARCH_SWEEP_SECONDS", 2.0, float)),
            search_breaker_failures=max(1, int(_positive(config, "NEXES_SEARCH_BREAKER_FAILURES", 3, int))),
            search_breaker_reset=max(0.1, _positive(config, "NEXES_SEARCH_BREAKER_RESET", 10.0, float)),
            search_concurrency=max(1, int(_positive(config, "NEXES_SEARCH_CONCURRENCY", 8, int))),
            search_fallback_concurrency=max(1, int(_positive(config, "NEXES_SEARCH_FALLBACK_CONCURRENCY", 2, int))),
            search_queue_seconds=_positive(config, "NEXES_SEARCH_QUEUE_SECONDS", 2.0, float),
            access_log=config("NEXES_ACCESS_LOG", cast=bool, default=True),
            import_max_bytes=int(_positive(config, "NEXES_IMPORT_MAX_BYTES", 1 << 30, int)),
            import_retention_days=int(_positive(config, "NEXES_IMPORT_RETENTION_DAYS", 30, int)),
            import_lease_seconds=_positive(config, "NEXES_IMPORT_LEASE_SECONDS", 20.0, float),
            import_chunk_orders=max(1, int(_positive(config, "NEXES_IMPORT_CHUNK_ORDERS", 5_000, int))),
            import_apply_parallel=max(1, int(_positive(config, "NEXES_IMPORT_APPLY_PARALLEL", 2, int))),
            import_sweep_seconds=_positive(config, "NEXES_IMPORT_SWEEP_SECONDS", 10.0, float),
            jwt_secret=Secret(config("NEXES_JWT_SECRET", default="")),
            jwks_url=config("NEXES_JWKS_URL", default=""),
            jwks_file=config("NEXES_JWKS_FILE", default=""),
            jwt_issuer=config("NEXES_JWT_ISSUER", default="nexes"),
            jwt_audience=config("NEXES_JWT_AUDIENCE", default="nexes-api"),
            jwt_leeway=_positive(config, "NEXES_JWT_LEEWAY", 30.0, float),
            jwt_roles_claim=config("NEXES_JWT_ROLES_CLAIM", default="roles") or "roles",
            monitor_url=config("NEXES_MONITOR_URL", default=""),
            monitor_replica_urls=tuple(config("NEXES_MONITOR_REPLICA_URLS", default="").split()),
            audit_retention_days=max(1, int(_positive(config, "NEXES_AUDIT_RETENTION_DAYS", 400, int))),
            ops_listen=config("NEXES_OPS_LISTEN", default="127.0.0.1:9464"),
            worker_metrics_port=_port(config, "NEXES_WORKER_METRICS_PORT"),
            worker_state_dir=_worker_state_dir(config),
            body_read_seconds=max(0.1, _positive(config, "NEXES_BODY_READ_SECONDS", 10.0, float)),
            upload_idle_seconds=max(0.1, _positive(config, "NEXES_UPLOAD_IDLE_SECONDS", 60.0, float)),
            upload_max_files=max(1, int(_positive(config, "NEXES_UPLOAD_MAX_FILES", 1, int))),
            xlsx_max_uncompressed_bytes=int(_positive(config, "NEXES_XLSX_MAX_UNCOMPRESSED_BYTES", 2 << 30, int)),
            xlsx_max_ratio=max(1, int(_positive(config, "NEXES_XLSX_MAX_RATIO", 100, int))),
            xlsx_max_shared_strings=int(_positive(config, "NEXES_XLSX_MAX_SHARED_STRINGS", 2_000_000, int)),
            import_max_cells_per_row=max(1, int(_positive(config, "NEXES_IMPORT_MAX_CELLS_PER_ROW", 64, int))),
            redis_timeout=max(0.05, _positive(config, "NEXES_REDIS_TIMEOUT", 2.0, float)),
            replica_max_lag=_positive(config, "NEXES_REPLICA_MAX_LAG", 5.0, float),
            replica_probe_interval=max(0.05, _positive(config, "NEXES_REPLICA_PROBE_INTERVAL", 1.0, float)),
            replica_probe_timeout=max(0.1, _positive(config, "NEXES_REPLICA_PROBE_TIMEOUT", 1.0, float)),
            cors_origins=tuple(config("NEXES_CORS_ORIGINS", default="").split()),
            otel_traces_export=_otel_traces_export(config),
            request_deadlines={
                role: max(0.1, _positive(config, f"NEXES_REQUEST_DEADLINE_{role.upper()}", default, float))
                for role, default in REQUEST_DEADLINES.items()
            },
            max_response_bytes=max(1024, int(_positive(config, "NEXES_MAX_RESPONSE_BYTES", 10_000_000, int))),
            max_concurrent_requests=max(1, int(_positive(config, "NEXES_MAX_CONCURRENT_REQUESTS", 200, int))),
            document_cache_bytes=int(_positive(config, "NEXES_DOCUMENT_CACHE_BYTES", 4_000_000, int)),
            max_cost={
                role: max(1, int(_positive(config, f"NEXES_MAX_COST_{role.upper()}", default, int)))
                for role, default in MAX_COST.items()
            },
            rate_limits={
                role: max(1, int(_positive(config, f"NEXES_RATE_LIMIT_{role.upper()}", default, int)))
                for role, default in RATE_LIMITS.items()
            },
            trusted_documents=_on_off(config, "NEXES_TRUSTED_DOCUMENTS"),
            apq_max_documents=int(_positive(config, "NEXES_APQ_MAX_DOCUMENTS", 10_000, int)),
            apq_max_document_bytes=max(1, int(_positive(config, "NEXES_APQ_MAX_DOCUMENT_BYTES", 16_384, int))),
            apq_ttl=max(1.0, _positive(config, "NEXES_APQ_TTL", 86_400.0, float)),
            trusted_documents_refresh=_positive(config, "NEXES_TRUSTED_DOCUMENTS_REFRESH", 5.0, float),
            typesense_cluster=tuple(config("NEXES_TYPESENSE_URLS", default="").split()),
            broker_url=_broker_url(config),
            monitor_connection_limit=max(1, int(_positive(config, "NEXES_MONITOR_CONNECTION_LIMIT", 5, int))),
            prepare=_on_off(config, "NEXES_PREPARE"),
            render_sql=_on_off(config, "NEXES_RENDER_SQL", default=True),
            share_reads=_on_off(config, "NEXES_SHARE_READS", default=True),
            sql_tag=_sql_tag(config),
            graphiql=_on_off(config, "NEXES_GRAPHIQL"),
            spa_dir=config("NEXES_SPA_DIR", default=""),
        )
    except (KeyError, ValueError) as exc:  # starlette raises these, naming the variable
        raise SettingsError(str(exc).strip("'\"")) from exc


BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")


def _broker_url(config: Config) -> str:
    """NEXES_BROKER_URL, checked by scheme only (the rest may hold a password)."""
    url: str = config("NEXES_BROKER_URL", default="").strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if url and scheme not in BROKER_SCHEMES:
        got = f"scheme {scheme!r}" if scheme else "no scheme"
        raise SettingsError(f"NEXES_BROKER_URL: must start with redis://, rediss://, amqp:// or amqps:// ({got})")
    return url


def _on_off(config: Config, key: str, default: bool = False) -> bool:
    value = config(key, default="on" if default else "off").strip().lower()
    if value not in ("on", "off"):
        raise SettingsError(f"{key}={value!r}: must be 'on' or 'off'")
    return value == "on"


def _worker_state_dir(config: Config) -> str:
    """NEXES_WORKER_STATE_DIR, else one per metrics port under the temporary directory."""
    port = _port(config, "NEXES_WORKER_METRICS_PORT")
    return config("NEXES_WORKER_STATE_DIR", default="") or os.path.join(tempfile.gettempdir(), f"nexes-worker-{port}")


def _port(config: Config, key: str) -> int:
    value = config(key, default="0").strip()
    if not value.isdigit() or int(value) > 65535:
        raise SettingsError(f"{key}={value!r}: must be a TCP port (0 turns it off)")
    return int(value)


def _log_format(config: Config, env: str) -> Literal["json", "console"]:
    value = config("NEXES_LOG_FORMAT", default="console" if env == "development" else "json").strip().lower()
    if value == "json":
        return "json"
    if value == "console":
        return "console"
    raise SettingsError(f"NEXES_LOG_FORMAT={value!r}: must be 'json' or 'console'")


def _sql_tag(config: Config) -> SqlTag:
    default = "application_name" if _on_off(config, "NEXES_PREPARE") else "comment"
    value = config("NEXES_SQL_TAG", default=default).strip().lower()
    if value not in ("comment", "application_name", "both"):
        raise SettingsError(f"NEXES_SQL_TAG={value!r}: must be 'comment', 'application_name' or 'both'")
    return cast(SqlTag, value)


def _otel_traces_export(config: Config) -> bool:
    """An OTLP endpoint is set, and neither OTEL_SDK_DISABLED nor OTEL_TRACES_EXPORTER=none turns it off."""
    if config("OTEL_SDK_DISABLED", default="").strip().lower() == "true":
        return False
    if config("OTEL_TRACES_EXPORTER", default="otlp").strip().lower() == "none":
        return False
    endpoints = (
        config("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", default=""),
        config("OTEL_EXPORTER_OTLP_ENDPOINT", default=""),
    )
    return any(endpoint.strip() for endpoint in endpoints)


def _required(config: Config, key: str) -> str:
    value: str = config(key, default="")
    if not value:
        raise SettingsError(f'{key} is not set (for the local stack: eval "$(infra/stack env)")')
    return value
