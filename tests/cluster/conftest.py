"""The cluster tests need a stack with more than one of each: `make test-cluster` starts it
(NEXES_STACK_REPLICAS=2, NEXES_STACK_TYPESENSE_NODES=3, NEXES_STACK_BROKER=rabbitmq) and
runs them; `make test` leaves this folder out. A module run on a smaller stack fails at
once, saying what it needs, rather than passing on less than it claims."""

from __future__ import annotations

import os

import pytest


def need(what: str, holds: bool) -> None:
    """Fail the module unless the stack has `what`."""
    if not holds:
        pytest.fail(f"this test needs a stack with {what}: run `make test-cluster`", pytrace=False)


@pytest.fixture(scope="module")
def two_replicas() -> None:
    need("two replicas (NEXES_STACK_REPLICAS=2)", len(os.environ.get("NEXES_REPLICA_URLS", "").split()) >= 2)


@pytest.fixture(scope="module")
def three_typesense_nodes() -> None:
    need(
        "three Typesense nodes (NEXES_STACK_TYPESENSE_NODES=3)",
        len(os.environ.get("NEXES_TYPESENSE_URLS", "").split()) == 3,
    )


@pytest.fixture(scope="module")
def rabbitmq() -> str:
    url = os.environ.get("NEXES_RABBITMQ_URL", "")
    need("RabbitMQ (NEXES_STACK_BROKER=rabbitmq)", bool(url))
    return url
