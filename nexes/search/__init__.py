"""Global search: the Typesense collection behind an alias, the outbox sync, the alias
reindex, queries with a pg_trgm fallback behind a circuit breaker, and the drift check."""
