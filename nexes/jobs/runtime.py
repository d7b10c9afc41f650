"""The workers' runtime: settings, tracing and the Dramatiq broker with its middleware.

Configured here, at import, and only here: every actor module imports this one, so the
broker is set before any actor registers on it, and the process that sends an actor
(the API, the scheduler) configures it by importing that actor. Settings are read
once, from the environment.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nexes import settings as settings_module
from nexes.observability import (
    configure_tracing,
    current_traceparent,
    extract_traceparent,
    request_id_var,
    valid_request_id,
)

settings = settings_module.load()
configure_tracing(settings, "nexes-worker")  # a no-op in a process that configured it already (the API)
tracer = trace.get_tracer(__name__)


def tag_worker_logs() -> None:
    """Every log record of a worker process carries the request id (and trace) of the
    job it serves. Dramatiq owns the worker processes' handlers and format (children
    pipe their records to the parent), so the tag goes into the record itself. Called
    by the actors (worker processes only; the API's JSON logs carry the ids already)."""
    global _tagging
    if _tagging:
        return
    _tagging = True
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        request_id, traceparent = request_id_var.get(), current_traceparent()
        if request_id or traceparent:
            record.request_id = request_id
            record.msg = record.getMessage() + f" [request_id={request_id or '-'} traceparent={traceparent or '-'}]"
            record.args = None
        return record

    logging.setLogRecordFactory(factory)


_tagging = False


class TraceContext(dramatiq.Middleware):
    """The sender's request id and trace context ride in every message's options; the worker
    runs each message in a consumer span that continues the sender's trace (API -> Dramatiq
    -> SQL) with the request id set, so its logs and SQL carry both. No library fits: there
    is no OpenTelemetry instrumentation for Dramatiq."""

    def __init__(self) -> None:
        self._running = threading.local()  # before/after process_message run on one worker thread

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        tag_worker_logs()

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        # setdefault: a retry keeps the trace of the original send
        if request_id := request_id_var.get():
            message.options.setdefault("nexes_request_id", request_id)
        if traceparent := current_traceparent():
            message.options.setdefault("nexes_traceparent", traceparent)

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        parent = extract_traceparent(message.options.get("nexes_traceparent"))
        span = tracer.start_span(
            f"{message.actor_name} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "dramatiq",
                "messaging.destination.name": message.queue_name,
                "messaging.message.id": message.message_id,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        request_token = request_id_var.set(valid_request_id(message.options.get("nexes_request_id")))
        self._running.state = (span, token, request_token)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        state, self._running.state = getattr(self._running, "state", None), None
        if state is None:
            return
        span, token, request_token = state
        if exception is not None:
            span.record_exception(exception)
            span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
        span.end()
        otel_context.detach(token)
        request_id_var.reset(request_token)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self.after_process_message(broker, message)


# The queue of the DDL actors (partitions, archive): they run as the owner, so only a
# worker given NEXES_ADMIN_URL consumes it (`nexes worker --ddl`, i.e.
# `dramatiq nexes.jobs --queues ddl`); every other worker runs as nexes_worker.
DDL_QUEUE = "ddl"


class OwnerQueues(dramatiq.Middleware):
    """A worker without NEXES_ADMIN_URL never consumes the ddl queue, however it was started:
    `dramatiq nexes.jobs` with no --queues takes every other queue, and one asked for the
    ddl queue alone refuses to boot, naming the variable."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if settings.admin_url:
            return
        wanted = set(worker.consumer_whitelist or broker.get_declared_queues())
        kept = wanted - {DDL_QUEUE}
        if not kept:  # an empty whitelist would mean every queue to Dramatiq
            raise RuntimeError(f"the {DDL_QUEUE} queue runs DDL as the owner: this worker needs NEXES_ADMIN_URL")
        worker.consumer_whitelist = kept


def redis_pool(url: str, timeout: float) -> redis.ConnectionPool:
    """The connections of a Redis client whose every call waits at most `timeout` seconds
    to connect and for each answer (NEXES_REDIS_TIMEOUT): a Redis that accepts and never
    answers fails the call with redis.TimeoutError instead of hanging it. (RedisBroker's
    `url=` builds a pool without them, and its other keywords then go unused.)"""
    return redis.ConnectionPool.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def make_broker(url: str, timeout: float) -> RedisBroker | RabbitmqBroker:
    """The Dramatiq broker NEXES_BROKER_URL names (Redis by default, or RabbitMQ for
    amqp://), with Nexes' middleware. Dramatiq's Redis consumer polls (no blocking
    command), so none of its calls needs to wait longer than the timeout."""
    made: RedisBroker | RabbitmqBroker
    if url.startswith(("amqp://", "amqps://")):
        made = rabbitmq_broker(url, timeout)
    else:
        made = RedisBroker(connection_pool=redis_pool(url, timeout))  # type: ignore[no-untyped-call]
    made.add_middleware(AsyncIO())
    made.add_middleware(CurrentMessage())
    made.add_middleware(TraceContext())
    made.add_middleware(OwnerQueues())
    return made


def rabbitmq_broker(url: str, timeout: float) -> RabbitmqBroker:
    """RabbitMQ with publisher confirms: an enqueue returns once the broker has the message
    (a durable queue, a persistent message), so an acknowledged import is never lost with a
    broker restart. pika's connection and socket timeouts come from the URL; the setting's
    timeout is their default."""
    sep = "&" if "?" in url else "?"
    if "socket_timeout=" not in url:
        url += f"{sep}socket_timeout={timeout}&blocked_connection_timeout={max(timeout, 5.0)}"
    return RabbitmqBroker(url=url, confirm_delivery=True)


broker = make_broker(settings.dramatiq_url, settings.redis_timeout)
dramatiq.set_broker(broker)
