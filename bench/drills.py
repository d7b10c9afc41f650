"""Issue 20's failure drills: a fault under a steady load, with the figures read back.

    python -m bench.drills DRILL [--orders 1000000] [--seconds 90] [--fault-at 30]
                                 [--clients N] [--share 0.7] [--port 18070] [--ops-port 19474]

DRILL is one of:
    typesense   SIGKILL the Typesense leader of a 3-node cluster, start it again (at
                --rejoin-nice); the load goes on until it has caught up, and 30 s more
    replica     SIGKILL one of 2 replicas, start it again
    switchover  `infra/stack switchover` while mutations run (each mutation's id checked after)
    api-kill    SIGKILL one API worker process; uvicorn's supervisor replaces it
    rolling     a rolling restart: SIGHUP to `nexes serve`, which SIGTERMs each worker in turn
                once its replacement serves

Each drill runs against the stack `infra/stack env` describes (make drill-NAME starts one
with only the parts its fault needs), on a database of its own (`nexes_drill`, seeded once
with --orders), through `nexes serve --workers 2`. Before anything it logs `free -m`, `uptime` and
`df -h`, and stops when less than 2 GiB of memory is available.

The load: first the mix's capacity is measured (closed loop, no think time, 15 s), then the
drill offers `--share` (70%) of it, paced: each client sends at a fixed interval. Every
request is timed and classed (ok, or its error: HTTP status, GraphQL code, exception).
The report (JSON lines, copied into bench/README.md) gives requests and errors by kind;
p50/p95/p99 before, during and after the fault; the recovery time; the API's /metrics
counters (routes, searches by engine) over the run; and the invariants afterwards
(`nexes reconcile` drift, every order's key, stock against the ledger).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.mix import Closed, Conn, choose, read_body, remember_page
from nexes import settings as settings_module
from nexes.auth.tokens import mint
from nexes.db.connect.conninfo import environ_for_database
from nexes.db.invariants import STOCK_LEDGER, check_stock_ledger
from nexes.search.collection import QUERY_BY

ROOT = Path(__file__).resolve().parent.parent
NEXES = str(ROOT / ".venv" / "bin" / "nexes")
STACK = str(ROOT / "infra" / "stack")
DB = "nexes_drill"
NODE = "query($id: ID!) { node(id: $id) { id ... on ServiceOrder { sodNumber status totalAmount lines { lineNo } } } }"
SEARCH = "query($q: String!) { search(query: $q, first: 20) { engine found edges { node { sodNumber } } } }"
CREATE = (
    "mutation($i: CreateServiceOrderInput!) { createServiceOrder(input: $i) { "
    "serviceOrder { id sodNumber } errors { code message } } }"
)
WORDS = ("boiler", "generator", "elevator", "ventilation", "warehouse", "kitchen", "inspection")
READS = (("first_page", 0.2), ("next_page", 0.5), ("node", 0.8), ("search", 1.0))
MIN_AVAILABLE_MIB = 2048
CATCH_UP_LIMIT = 600.0  # seconds the Typesense drill's load waits for the restarted node


ops_listen = "127.0.0.1:19474"  # where `nexes serve` serves /metrics (--ops-port)


def report(**figures: object) -> None:
    print(json.dumps(figures, default=str), flush=True)


def drill_env() -> dict[str, str]:
    return {**environ_for_database(os.environ, DB), "NEXES_TYPESENSE_COLLECTION": f"{DB}_service_orders"}


def preflight() -> None:
    """free -m, df -h and uptime (the load average) in the report; stop below 2 GiB of
    available memory."""
    free = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout
    disk = subprocess.run(["df", "-h", "/tmp", str(ROOT)], capture_output=True, text=True).stdout
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report(step="preflight", free_m=free.splitlines(), df_h=disk.splitlines(), uptime=up)
    available = int(free.splitlines()[1].split()[6])
    if available < MIN_AVAILABLE_MIB:
        sys.exit(f"drills: only {available} MiB of memory available (at least {MIN_AVAILABLE_MIB} needed)")


def superuser(url: str, db: str = "postgres") -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params.update(user="postgres", dbname=db)
    return make_conninfo("", **params)


def ensure_database(orders: int) -> None:
    """nexes_drill, migrated and seeded with `orders` once; its search index rebuilt (the
    mix searches, and the fallback is no place to measure a drill from)."""
    env = drill_env()
    with psycopg.connect(superuser(os.environ["NEXES_ADMIN_URL"]), autocommit=True) as conn:
        created = not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone()
        if created:
            conn.execute(f"CREATE DATABASE {DB} OWNER nexes_owner")
    steps = [("migrate", [NEXES, "migrate"]), ("seed", [NEXES, "seed", "--orders", str(orders), "--if-empty"])]
    if created:
        steps.append(("reindex", [NEXES, "reindex"]))
    for name, cmd in steps:
        started = time.monotonic()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        report(step=name, seconds=round(time.monotonic() - started, 1))


def token(env: dict[str, str], roles: tuple[str, ...]) -> str:
    settings = settings_module.load(env)
    return "Bearer " + mint(settings, roles, subject="drill", ttl=6 * 3600.0)


# ---------------------------------------------------------------- the API


@dataclass
class Api:
    port: int
    proc: subprocess.Popen[bytes]

    def workers(self) -> list[int]:
        """uvicorn's worker processes (children of `nexes serve`)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            return []
        return [p for p in pids if b"spawn_main" in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@contextmanager
def api_server(port: int, env: dict[str, str]) -> Iterator[Api]:
    """`nexes serve --workers 2` on `port`, stopped by its process group."""
    env = {**env, "NEXES_ACCESS_LOG": "false", "NEXES_OPS_LISTEN": ops_listen}
    log = open(f"/tmp/drill-api-{port}.log", "wb")  # noqa: SIM115  # lives as long as the server
    cmd = [NEXES, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    api = Api(port, proc)
    try:
        deadline = time.monotonic() + 120
        while not (live(port) and len(api.workers()) == 2):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the API did not start; see {log.name}")
            time.sleep(0.5)
        time.sleep(3)  # each worker's monitor: a first verdict on every server
        yield api
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def metrics() -> dict[str, float]:
    """The API's counters, every worker's summed (`nexes serve`'s ops listener)."""
    out: dict[str, float] = {}
    text = httpx.get(f"http://{ops_listen}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.name.startswith("nexes_"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pid")
                key = f"{sample.name}{{{labels}}}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


# ---------------------------------------------------------------- the load


@dataclass
class Load:
    """Clients sending the mix, each every `interval` seconds (0: back to back)."""

    port: int
    auth: str
    clients: int
    interval: float
    mutations: float = 0.0  # the share of requests that create an order
    run_id: str = field(default_factory=lambda: f"{int(time.time())}")
    samples: list[tuple[float, str, float, str | None]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    engines: Counter[str] = field(default_factory=Counter)
    answered_by: list[tuple[float, str]] = field(default_factory=list)  # (at, engine) of each search
    reconnects: int = 0
    started: float = 0.0
    end: float = 0.0  # time.monotonic() when the clients stop; `extend` moves it later
    _seq: int = 0

    def body(self, state: dict[str, Any]) -> tuple[str, bytes]:
        if random.random() < self.mutations:
            self._seq += 1
            sod = f"DRILL-{self.run_id}-{self._seq:07d}"
            # Spread over items and customers, as dispatchers' orders are: one hot stock row
            # would serialise every mutation on its lock and measure that instead.
            line = {"sku": f"SKU-{random.randint(1, 50):05d}", "quantity": 1, "unitPrice": "10.00"}
            customer = f"C{random.randint(1, 200):06d}"
            order = {"sodNumber": sod, "customerCode": customer, "status": "OPEN", "lines": [line]}
            return "create:" + sod, orjson.dumps({"query": CREATE, "variables": {"i": order}})
        kind = choose(READS, state)
        if state.get("sods") and random.random() < 0.5:
            term = random.choice(state["sods"]).rsplit("-", 1)[-1][-5:]
        else:
            term = random.choice(WORDS)
        return kind, read_body(kind, state, node=NODE, search=SEARCH, term=term)

    def outcome(self, kind: str, status: int, payload: bytes, state: dict[str, Any]) -> str | None:
        """None when the answer is good, else the error's kind."""
        if status != 200:
            return f"http_{status}"
        doc = orjson.loads(payload)
        if doc.get("errors"):
            return "graphql:" + str(doc["errors"][0].get("extensions", {}).get("code"))
        data = doc["data"]
        if kind.startswith("create:"):
            payload_data = data["createServiceOrder"]
            if payload_data["errors"]:
                return "user_error:" + str(payload_data["errors"][0]["code"])
            self.acked.append(kind.removeprefix("create:"))
        elif kind in ("first_page", "next_page"):
            remember_page(state, data["serviceOrders"])
        elif kind == "search":
            self.engines[data["search"]["engine"]] += 1
            self.answered_by.append((time.monotonic() - self.started, data["search"]["engine"]))
        return None

    async def client(self) -> None:
        conn = Conn(self.port, self.auth)
        state: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        next_at = loop.time() + random.uniform(0, self.interval)
        while time.monotonic() < self.end:
            if self.interval:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at += self.interval
            kind, body = self.body(state)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(30):
                    try:
                        status, payload = await conn.post(body)
                    except Closed:
                        self.reconnects += 1
                        status, payload = await conn.post(body)
                error = self.outcome(kind, status, payload, state)
            except Exception as exc:  # every failure is a counted error
                conn.close()
                error = type(exc).__name__
            at = time.monotonic() - self.started
            self.samples.append((at, kind.split(":")[0], (time.perf_counter() - started) * 1000, error))
        conn.close()

    async def run(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.end = self.started + seconds
        await asyncio.gather(*(self.client() for _ in range(self.clients)))

    def extend(self, seconds: float) -> None:
        """Run on until `seconds` from now at least (from the fault's thread)."""
        self.end = max(self.end, time.monotonic() + seconds)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def phases(load: Load, times: dict[str, float]) -> dict[str, Any]:
    """Requests, errors by kind, and p50/p95/p99 before, during and after the fault (and,
    in the Typesense drill, once the restarted node caught up: a part of "after")."""
    out: dict[str, Any] = {}
    fault_at, recovered_at = times["fault"], times.get("recovered", times["fault"])
    windows = {"before": (0, fault_at), "during": (fault_at, recovered_at), "after": (recovered_at, 1e9)}
    if "caught_up" in times:
        windows["caught_up"] = (times["caught_up"], 1e9)
    for name, (start, end) in windows.items():
        inside = [s for s in load.samples if start <= s[0] < end]
        ms = [s[2] for s in inside if s[3] is None]
        out[name] = {
            "seconds": round(min(end, max((s[0] for s in load.samples), default=0)) - start, 1),
            "requests": len(inside),
            "errors": dict(Counter(f"{s[1]}:{s[3]}" for s in inside if s[3] is not None)),
            "p50_ms": pct(ms, 0.5),
            "p95_ms": pct(ms, 0.95),
            "p99_ms": pct(ms, 0.99),
            "search_engines": dict(Counter(engine for at, engine in load.answered_by if start <= at < end)),
        }
    return out


def longest_write_gap(load: Load) -> float | None:
    """The longest time between two acknowledged mutations: how long writes stopped."""
    done = sorted(s[0] for s in load.samples if s[1] == "create" and s[3] is None)
    return round(max((b - a for a, b in itertools.pairwise(done)), default=0.0), 2) if done else None


def capacity(port: int, auth: str, mutations: float) -> float:
    """Requests a second the drill's mix (its share of `mutations` included: they cost more
    than reads) gets with 64 clients back to back for 15 s."""
    import uvloop

    load = Load(port, auth, clients=64, interval=0.0, mutations=mutations)
    uvloop.run(load.run(15))
    good = [s for s in load.samples if s[3] is None]
    return len(good) / 15


# ---------------------------------------------------------------- faults


def stack(*args: str) -> None:
    subprocess.run([STACK, *args], check=True, capture_output=True, timeout=300)


def state_dir() -> Path:
    env = subprocess.run([STACK, "status"], capture_output=True, text=True).stdout
    return Path(env.splitlines()[0].removeprefix("state ").strip())


def pid_file(name: str) -> int:
    return int((state_dir() / "run" / f"{name}.pid").read_text().split()[0])


def typesense_states() -> list[int | None]:
    key = {"X-TYPESENSE-API-KEY": os.environ.get("NEXES_TYPESENSE_API_KEY", "")}
    states: list[int | None] = []
    for url in os.environ["NEXES_TYPESENSE_URLS"].split():
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "/debug", headers=key), timeout=1) as answer:
                states.append(int(json.loads(answer.read())["state"]))
        except OSError:
            states.append(None)
    return states


def typesense_ready() -> bool:
    """Every node answers /health ok (a node still loading its data answers 503)."""
    for url in (os.environ.get("NEXES_TYPESENSE_URLS") or os.environ["NEXES_TYPESENSE_URL"]).split():
        with urllib.request.urlopen(url + "/health", timeout=2) as answer:
            if json.loads(answer.read()).get("ok") is not True:
                return False
    return True


def wait(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `predicate` held, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return round(time.monotonic() - started, 1)
        except Exception:  # a probe of a server coming back may fail; keep asking
            pass
        time.sleep(0.2)
    return None


def fault_typesense(facts: dict[str, Any], load: Load, times: dict[str, float], rejoin_nice: int) -> Callable[[], bool]:
    """SIGKILL the leader, start it again 10 s after a new one was elected, and keep the load
    on until the node has caught up (healthy and answering searches itself) and 30 s more,
    CATCH_UP_LIMIT at most."""
    states = typesense_states()
    leader = states.index(1)
    node = "typesense" if leader == 0 else f"typesense{leader + 1}"
    os.kill(pid_file(node), signal.SIGKILL)
    facts["killed"] = f"{node} (the leader)"
    facts["election_s"] = wait(lambda: typesense_states().count(1) == 1, 60)
    time.sleep(10)
    facts["rejoin_nice"] = rejoin_nice
    if rejoin_nice:
        facts["rejoined_with"] = (
            f"nice {rejoin_nice}: the restarted node loads and catches up on CPU the other two nodes and the API "
            "leave it, as on a machine of its own; a property of running 3 nodes on 2 shared cores, not a "
            "production setting"
        )
    restarted = time.monotonic()
    url = os.environ["NEXES_TYPESENSE_URLS"].split()[leader]
    stack_env = {**os.environ, "NEXES_STACK_TYPESENSE_NICE": str(rejoin_nice)}
    subprocess.run([STACK, "up", "typesense"], check=True, capture_output=True, timeout=300, env=stack_env)

    def catching_up() -> None:
        """When the restarted node is healthy and answers a search itself (not 503 "Not
        Ready or Lagging"): caught up. Watched while the load goes on, past the recovery."""
        while time.monotonic() - restarted < CATCH_UP_LIMIT:
            load.extend(35)
            if node_serves(url):
                facts["caught_up_s"] = round(time.monotonic() - restarted, 1)
                times["caught_up"] = time.monotonic() - load.started
                load.extend(30)
                return
            time.sleep(0.5)

    facts["caught_up_s"] = None  # not within the run, unless the watcher says otherwise
    threading.Thread(target=catching_up, daemon=True).start()
    return lambda: typesense_states().count(1) == 1 and None not in typesense_states()


def node_serves(url: str) -> bool:
    key = {"X-TYPESENSE-API-KEY": os.environ.get("NEXES_TYPESENSE_API_KEY", "")}
    query = f"/collections/{DB}_service_orders/documents/search?q=boiler&query_by={QUERY_BY}&per_page=1"
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/health"), timeout=2) as answer:
            if json.loads(answer.read()).get("ok") is not True:
                return False
        with urllib.request.urlopen(urllib.request.Request(url + query, headers=key), timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def replica_servers(port: int, auth: str) -> list[dict[str, Any]]:
    """/api/health/detail's replicas (an admin's token)."""
    body = httpx.get(f"http://127.0.0.1:{port}/api/health/detail", headers={"Authorization": auth}, timeout=5).json()
    return list(body["replicas"])


def fault_replica(api: Api, facts: dict[str, Any], auth: str) -> Callable[[], bool]:
    second = state_dir() / "replica2" / "postmaster.pid"
    os.kill(int(second.read_text().split()[0]), signal.SIGKILL)
    facts["killed"] = "replica 2's postmaster"
    facts["left_rotation_s"] = wait(lambda: not replica_servers(api.port, auth)[1]["in_rotation"], 30)
    time.sleep(10)
    stack("up", "replica")
    return lambda: all(r["in_rotation"] for r in replica_servers(api.port, auth))


def fault_switchover(api: Api, facts: dict[str, Any]) -> Callable[[], bool]:
    started = time.monotonic()
    out = subprocess.run([STACK, "switchover", "1"], capture_output=True, text=True, check=True, timeout=300)
    facts["switchover"] = out.stdout.strip()
    facts["switchover_s"] = round(time.monotonic() - started, 1)
    return lambda: True


def fault_api_kill(api: Api, facts: dict[str, Any]) -> Callable[[], bool]:
    before = api.workers()
    os.kill(before[0], signal.SIGKILL)
    facts["killed"] = "one of 2 uvicorn workers"
    return lambda: len(set(api.workers()) - set(before)) == 1 and len(api.workers()) == 2


def fault_rolling(api: Api, facts: dict[str, Any]) -> Callable[[], bool]:
    """A rolling restart as `nexes serve` does it (SIGHUP, `systemctl reload nexes-api`):
    uvicorn starts a replacement, waits until it serves, then SIGTERMs an old worker, each
    in turn. (SIGTERM sent to each worker by hand has the supervisor start a replacement
    only once the old one has exited: the API serves on one worker, at twice its load, for
    the 10-15 s a replacement takes to start on these cores: the api-kill drill's case.)"""
    original = api.workers()
    os.kill(api.proc.pid, signal.SIGHUP)
    facts["restarted"] = len(original)
    return lambda: not set(api.workers()) & set(original) and len(api.workers()) == len(original)


# ---------------------------------------------------------------- after the drill


# The invariants: reconcile's drift, every order its key and every key its order,
# stock equal to the ledger, item by item and line by line over every quarter
# (nexes.db.invariants.STOCK_LEDGER: set-based, 9 s at 1M orders).


def invariants(env: dict[str, str], acked: list[str]) -> dict[str, Any]:
    """nexes reconcile's drift, the invariants above, and every acknowledged order."""
    settings = settings_module.load(env)
    admin = superuser(settings.admin_url, DB)
    with psycopg.connect(admin) as conn:
        (drift_before,) = conn.execute("SELECT count(*) FROM stat_drift").fetchone()  # type: ignore[misc]
    subprocess.run([NEXES, "reconcile"], env=env, check=True, capture_output=True)
    with psycopg.connect(admin) as conn:
        (drift_after,) = conn.execute("SELECT count(*) FROM stat_drift").fetchone()  # type: ignore[misc]
        violations = {v.check: v.samples for v in check_stock_ledger(conn)}
        found = conn.execute("SELECT count(*) FROM service_order_key WHERE sod_number = ANY(%s)", [acked]).fetchone()
    return {
        "reconcile_drift_rows": int(drift_after) - int(drift_before),
        "invariants_checked": list(STOCK_LEDGER),
        "invariant_violations": violations,
        "acknowledged_orders": len(acked),
        "acknowledged_orders_missing": len(acked) - int(found[0] if found else 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drill", choices=("typesense", "replica", "switchover", "api-kill", "rolling"))
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument(
        "--seconds", type=float, help="default 90; 180 for typesense (a node rejoins slowly; longer until it caught up)"
    )
    parser.add_argument("--fault-at", type=float, default=30)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--share", type=float, default=0.7)
    parser.add_argument("--port", type=int, default=18070)
    parser.add_argument("--ops-port", type=int, default=19474)
    parser.add_argument(
        "--rejoin-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="typesense: restart the killed node at this niceness (its 3 nodes share this machine's cores)",
    )
    args = parser.parse_args()
    args.seconds = args.seconds or (180.0 if args.drill == "typesense" else 90.0)
    global ops_listen
    ops_listen = f"127.0.0.1:{args.ops_port}"
    import uvloop

    preflight()
    ensure_database(args.orders)
    # A restarted Typesense loads its 1M documents from disk first (minutes on loaded cores),
    # answering 503 meanwhile: measured then, every search would go to the fallback.
    if wait(typesense_ready, 900) is None:
        sys.exit("drills: Typesense is not ready after 15 minutes")
    env = drill_env()
    # Every client signs in as one user here: the per-user rate limit is raised for the run.
    env["NEXES_RATE_LIMIT_OPERATOR"] = env["NEXES_RATE_LIMIT_VIEWER"] = "100000000"
    report(step="rate_limit", NEXES_RATE_LIMIT_OPERATOR=env["NEXES_RATE_LIMIT_OPERATOR"])
    searching = settings_module.load(env)
    report(
        step="search_settings",
        NEXES_TYPESENSE_TIMEOUT=searching.typesense_timeout,
        NEXES_SEARCH_HEDGE_SECONDS=searching.search_hedge_seconds,
        NEXES_SEARCH_PATIENCE_SECONDS=searching.search_patience_seconds,
    )
    auth = token(env, ("operator",))
    with api_server(args.port, env) as api:
        mutations = 0.2 if args.drill == "switchover" else 0.0
        rps = capacity(args.port, auth, mutations)
        target = rps * args.share
        interval = args.clients / target
        load_average = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        report(
            step="capacity",
            mix_rps=round(rps, 1),
            offered_rps=round(target, 1),
            clients=args.clients,
            load_average=load_average,
        )
        load = Load(args.port, auth, args.clients, interval, mutations=mutations)
        facts: dict[str, Any] = {}
        counters = metrics()
        times: dict[str, float] = {}

        def inject() -> None:
            time.sleep(args.fault_at)
            times["fault"] = time.monotonic() - load.started
            faults: dict[str, Callable[[], Callable[[], bool]]] = {
                "typesense": lambda: fault_typesense(facts, load, times, args.rejoin_nice),
                "replica": lambda: fault_replica(api, facts, token(env, ("admin",))),
                "switchover": lambda: fault_switchover(api, facts),
                "api-kill": lambda: fault_api_kill(api, facts),
                "rolling": lambda: fault_rolling(api, facts),
            }
            healed = faults[args.drill]()
            facts["recovery_s"] = wait(healed, 120)
            times["recovered"] = time.monotonic() - load.started

        injector = threading.Thread(target=inject)
        injector.start()
        uvloop.run(load.run(args.seconds))
        injector.join()
        after = metrics()
        report(
            step=args.drill,
            load_average=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
            orders=args.orders,
            clients=args.clients,
            offered_rps=round(target, 1),
            **facts,
            phases=phases(load, times),
            search_engines=dict(load.engines),
            keepalive_reconnects=load.reconnects,
            longest_write_gap_s=longest_write_gap(load),
            metrics_delta={k: v - counters.get(k, 0.0) for k, v in after.items() if v != counters.get(k, 0.0)},
            invariants=invariants(env, load.acked),
        )


if __name__ == "__main__":
    main()
