"""The Dramatiq broker of the tests' workers, whichever NEXES_BROKER_URL names: Redis by
default, RabbitMQ under `make test-rabbitmq` (which sets NEXES_BROKER_URL to the stack's
RabbitMQ). Tests send, empty and count through these, by Dramatiq's own API, so the same
test runs on both brokers; none reads a broker's internals.

On RabbitMQ every test database shares the stack's one vhost: each test empties the queues
before it starts its workers (`empty`), and the tests run one at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import orjson
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from nexes.jobs.runtime import make_broker
from nexes.settings import Settings
from tests.support.waits import wait_for


def broker_for(settings: Settings) -> dramatiq.Broker:
    """A broker on the one the settings' workers use (NEXES_BROKER_URL, else Redis)."""
    return make_broker(settings.dramatiq_url, settings.redis_timeout)


def send(settings: Settings, message: dramatiq.Message[Any]) -> None:
    """Enqueue `message` on the settings' broker, as the API or the scheduler would."""
    broker = broker_for(settings)
    try:
        broker.enqueue(message)
    finally:
        broker.close()


def empty(settings: Settings) -> None:
    """Every queue of the settings' broker emptied, and the Redis database of the scheduler's
    lock and the rate limits (NEXES_REDIS_URL) flushed: nothing left of another test."""
    broker = broker_for(settings)
    try:
        for queue in ("default", "imports", "search", "maintenance", "ddl"):
            broker.declare_queue(queue)  # flush_all empties the queues this broker knows
        broker.flush_all()
    finally:
        broker.close()
    redis.Redis.from_url(settings.redis_url).flushdb()


def waiting(settings: Settings, queue: str) -> int:
    """Messages of `queue` that no worker has taken yet (RabbitMQ's ready count, from a
    passive declare; on Redis the queue's list of message ids)."""
    broker = broker_for(settings)
    try:
        if isinstance(broker, RabbitmqBroker):
            return broker.get_queue_message_counts(queue)[0]
        return int(broker.client.llen(f"{broker.namespace}:{queue}"))
    finally:
        broker.close()


def wait_until_consuming(settings: Settings, message: dramatiq.Message[Any], timeout: float = 60.0) -> None:
    """Until a worker has taken `message`, sent here, off its queue: the worker has booted
    and consumes that queue. A test that times what a worker does starts after this, not
    while the worker boots: 1.2-1.9 s on Redis and 1.1-2.5 s on RabbitMQ (which opens two
    connections per consumer) from its start, measured on this machine under other load."""
    send(settings, message)
    assert wait_for(lambda: waiting(settings, message.queue_name) == 0, timeout, 0.05), "no worker took the message"


def take_message(broker: dramatiq.Broker, queue: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The first waiting message of `queue` that `match` accepts (its fields as Dramatiq
    encodes them: actor_name, args, options...), taken off the broker so that no worker runs
    it; the others stay."""
    found = _matching(broker, queue, match, take=True)
    return found[0] if found else None


def queued(broker: dramatiq.Broker, queue: str, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Every waiting message of `queue` that `match` accepts, left where it is."""
    return _matching(broker, queue, match, take=False)


def _matching(
    broker: dramatiq.Broker, queue: str, match: Callable[[dict[str, Any]], bool], *, take: bool
) -> list[dict[str, Any]]:
    """The waiting messages of `queue` that `match` accepts; with `take`, only the first,
    taken off the broker. On RabbitMQ each is fetched unacknowledged and every one but the
    taken one goes back when the channel closes; on Redis the hash of messages is read (and
    the taken one deleted)."""
    found: list[dict[str, Any]] = []
    if isinstance(broker, RabbitmqBroker):
        broker.get_queue_message_counts(queue)  # declares it: a fetch from a missing queue fails
        channel = broker.connection.channel()
        try:
            while True:
                method, _, body = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    return found
                message = dict(orjson.loads(body))
                if match(message):
                    found.append(message)
                    if take:
                        channel.basic_ack(method.delivery_tag)
                        return found
        finally:
            channel.close()
    client = broker.client
    namespace = broker.namespace
    for message_id, raw in client.hgetall(f"{namespace}:{queue}.msgs").items():
        message = dict(orjson.loads(raw))
        if match(message):
            found.append(message)
            if take:
                client.hdel(f"{namespace}:{queue}.msgs", message_id)
                client.lrem(f"{namespace}:{queue}", 0, message_id)
                return found
    return found
