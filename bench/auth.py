"""What identity, permissions, cost analysis and rate limits cost per request, in process
(`python -m bench.run auth`).

- token: `Authenticator.viewer` on the Authorization header, as the HTTP edge calls it, for
  a token it has seen (the SPA's case: one token, many requests; the revocation answer
  cached too) and for a new HS256 and a new RS256 token each time (JWKS key cache warm);
- permissions: the 50-order page through the app's pipeline with the permission hooks
  and without them, alternated; the difference is the operation guard (root fields
  through fragments) plus the field guards' per-field lookup on the fast executor.

Microseconds per request, medians of rounds. Needs the seeded `nexes_bench` for the page.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bench.run import bench_env, report
from nexes import settings as settings_module
from nexes.auth.identity import Viewer
from nexes.auth.revocation import Revocations
from nexes.auth.tokens import TokenVerifier, mint
from nexes.http.auth import Authenticator

ROUNDS = 7
PAGE = (
    "query($a: String) { serviceOrders(first: 50, after: $a) { edges { node { id sodNumber status createdAt "
    "totalAmount customer { name } } } } }"
)


def _per_call_us(samples: list[float], calls: int) -> float:
    return round(statistics.median(samples) / calls * 1e6, 2)


async def bench_tokens(calls: int = 20_000) -> dict[str, float]:
    settings = settings_module.load(bench_env())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with tempfile.TemporaryDirectory() as tmp:
        jwks = Path(tmp) / "jwks.json"
        jwks.write_text(json.dumps({"keys": [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}]}))
        rs_settings = dataclasses.replace(settings, jwks_file=str(jwks))
        revocations = Revocations(settings.redis_url, settings.redis_timeout)
        seen = Authenticator(TokenVerifier(settings), revocations)
        header = f"Bearer {mint(settings, ['viewer'], subject='bench')}"
        await seen.viewer(header)
        hs_fresh = [f"Bearer {mint(settings, ['viewer'], subject=f'u{i}')}" for i in range(calls // 10)]
        now = int(time.time())
        rs_fresh = [
            "Bearer "
            + jwt.encode(
                {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": f"r{i}", "exp": now + 600},
                key,
                algorithm="RS256",
                headers={"kid": "k1"},
            )
            for i in range(calls // 100)
        ]
        timings: dict[str, list[float]] = {"seen": [], "hs256_new": [], "rs256_new": []}
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(calls):
                await seen.viewer(header)
            timings["seen"].append(time.perf_counter() - started)
            verifier = TokenVerifier(settings)  # a new verifier: nothing remembered
            started = time.perf_counter()
            for token in hs_fresh:
                await verifier.verify(token.removeprefix("Bearer "))
            timings["hs256_new"].append(time.perf_counter() - started)
            verifier = TokenVerifier(rs_settings)
            started = time.perf_counter()
            for token in rs_fresh:
                await verifier.verify(token.removeprefix("Bearer "))
            timings["rs256_new"].append(time.perf_counter() - started)
        await revocations.close()
    return {
        "token_seen_us": _per_call_us(timings["seen"], calls),
        "token_new_hs256_us": _per_call_us(timings["hs256_new"], len(hs_fresh)),
        "token_new_rs256_us": _per_call_us(timings["rs256_new"], len(rs_fresh)),
    }


async def bench_permissions(requests: int = 300) -> dict[str, float]:
    from nexes.execution.hooks import Hooks
    from nexes.execution.pipeline import DEFAULT_HOOKS, Pipeline
    from nexes.execution.schema import schema
    from nexes.http.app import create_app
    from nexes.resolvers.context import Context

    settings = settings_module.load(bench_env())
    app = create_app(settings)
    bare = Pipeline(schema, Hooks(document_rules=DEFAULT_HOOKS.document_rules))
    guarded = Pipeline(schema, dataclasses.replace(DEFAULT_HOOKS, budget=None))  # permissions, no cost
    viewer = Viewer(subject="bench", roles=frozenset({"viewer"}))
    async with app.router.lifespan_context(app):
        state: Any = app.state

        def context() -> Context:
            return Context(
                request_id="bench", settings=state.settings, router=state.router, cursors=state.cursors, viewer=viewer
            )

        async def run(pipeline: Pipeline) -> float:
            started = time.perf_counter()
            for _ in range(requests):
                result = await pipeline.run(PAGE, {"a": None}, None, context(), queries_only=True)
                assert result.errors is None
            return time.perf_counter() - started

        await run(guarded)  # warm: parse caches, plans, pools
        await run(bare)
        with_guards, without = [], []
        for _ in range(ROUNDS):
            with_guards.append(await run(guarded))
            without.append(await run(bare))
        operation_guard: list[float] = []
        from graphql import OperationDefinitionNode, parse

        from nexes.execution.permissions import require_roles

        document = parse(PAGE)
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        ctx = context()
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(10_000):
                require_roles(document, operation, ctx)
            operation_guard.append(time.perf_counter() - started)
    return {
        "page_with_permissions_us": _per_call_us(with_guards, requests),
        "page_without_permissions_us": _per_call_us(without, requests),
        "permissions_delta_us": round(
            _per_call_us(with_guards, requests) - _per_call_us(without, requests),
            2,
        ),
        "operation_guard_us": _per_call_us(operation_guard, 10_000),
    }


FAN_OUT = (
    "{ customers(first: 100) { edges { node { name serviceOrders(first: 100) { totalCount edges { node { "
    "sodNumber lines { quantity } customer { serviceOrders(first: 100) { edges { node { sodNumber } } } } } } } } } } }"
)


async def bench_cost(calls: int = 5_000) -> dict[str, float]:
    """The cost analysis on the page and the fan-out query; the rate limiter's charge (Redis);
    the fan-out's refusal through the whole app."""
    import httpx
    from graphql import OperationDefinitionNode, parse

    from nexes.auth.ratelimit import RateLimiter
    from nexes.execution.cost import operation_cost
    from nexes.execution.schema import schema
    from nexes.http.app import create_app

    figures: dict[str, float] = {}
    for name, query in (("page", PAGE), ("fan_out", FAN_OUT)):
        document = parse(query)
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        samples = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            for _ in range(calls):
                operation_cost(schema._schema, document, operation, {"a": None})
            samples.append(time.perf_counter() - started)
        figures[f"cost_{name}_us"] = _per_call_us(samples, calls)
        figures[f"cost_{name}_nodes"] = operation_cost(schema._schema, document, operation, None)
    settings = settings_module.load(bench_env())
    limiter = RateLimiter(settings.redis_url, settings.redis_timeout)
    samples = []
    for n in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(calls // 5):
            await limiter.charge(f"bench-limiter-{n}", 10**9, 1)
        samples.append(time.perf_counter() - started)
    figures["rate_limiter_us"] = _per_call_us(samples, calls // 5)
    await limiter.close()
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {mint(settings, ['viewer'], subject='bench-fan-out')}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as client:
            samples = []
            for _ in range(ROUNDS * 20):
                started = time.perf_counter()
                answer = await client.post("/graphql", json={"query": FAN_OUT})
                samples.append(time.perf_counter() - started)
                assert answer.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    figures["fan_out_refusal_ms"] = round(statistics.median(samples) * 1000, 2)
    return figures


def main() -> None:
    figures = asyncio.run(bench_tokens())
    figures.update(asyncio.run(bench_permissions()))
    figures.update(asyncio.run(bench_cost()))
    report(bench="auth-cost", rounds=ROUNDS, **figures)
