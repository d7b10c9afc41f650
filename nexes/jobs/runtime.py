"""The workers' runtime: settings, tracing and the Dramatiq broker with its middleware.

Configured here, at import, and only here: every actor module imports this one, so the
broker is set before any actor registers on it, and the process that sends an actor
(the API, the scheduler) configures it by importing that actor. Settings are read
once, from the environment.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import dramatiq
import pika
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nexes import settings as settings_module
from nexes.jobs.metrics import WorkerMetrics
from nexes.observability import (
    configure_logging,
    configure_tracing,
    current_traceparent,
    extract_traceparent,
    format_traceparent,
    job_var,
    request_id_var,
    valid_request_id,
)

settings = settings_module.load()
configure_tracing(settings, "nexes-worker")  # a no-op in a process that configured it already (the API)
tracer = trace.get_tracer(__name__)


class TraceContext(dramatiq.Middleware):
    """The sender's request id and trace context ride in every message's options; the worker
    runs each message in a consumer span that continues the sender's trace (API -> Dramatiq
    -> SQL) with the request id set, so its logs and SQL carry both. No library fits: there
    is no OpenTelemetry instrumentation for Dramatiq."""

    def __init__(self) -> None:
        self._running = threading.local()  # before/after process_message run on one worker thread
        self._sending = threading.local()  # so do before/after enqueue, on the sending thread

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # In each worker process: Dramatiq's child logs text into a pipe its parent copies to
        # stderr; the same pipe now gets the JSON lines (or the console format), with the
        # job's ids in each (nexes.observability.log_context).
        configure_logging(settings.log_level, settings.log_format)

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        # setdefault: a retry keeps the trace of the original send
        if request_id := request_id_var.get():
            message.options.setdefault("nexes_request_id", request_id)
        if "nexes_traceparent" in message.options:
            return
        # The send is a producer span, current while Redis takes the message; the message
        # carries it, so the worker's consumer span hangs under it (API -> enqueue -> worker).
        self._end_send(None)  # the previous send on this thread never reached after_enqueue: it failed
        span = tracer.start_span(
            f"{message.actor_name} send",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "dramatiq",
                "messaging.destination.name": message.queue_name,
                "messaging.message.id": message.message_id,
            },
        )
        self._sending.span = span
        span_context = span.get_span_context()
        traceparent = format_traceparent(span_context) if span_context.is_valid else current_traceparent()
        if traceparent:
            message.options["nexes_traceparent"] = traceparent

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        self._end_send(message)

    def _end_send(self, sent: dramatiq.Message[Any] | None) -> None:
        span, self._sending.span = getattr(self._sending, "span", None), None
        if span is None:
            return
        if sent is None:
            span.set_status(Status(StatusCode.ERROR, "not enqueued"))
        span.end()

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
        job_token = job_var.set((message.message_id, message.actor_name))
        self._running.state = (span, token, request_token, job_token)

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
        span, token, request_token, job_token = state
        if exception is not None:
            span.record_exception(exception)
            span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
        span.end()
        otel_context.detach(token)
        request_id_var.reset(request_token)
        job_var.reset(job_token)

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


class SendingRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker whose sending connections (one per thread: the API's
    executor threads, the scheduler, a worker's threads when an actor sends) have no AMQP
    heartbeats; its consumers keep theirs.

    pika's BlockingConnection sends heartbeats only while its thread calls into it, and a
    sending thread calls into it only to send: RabbitMQ closed a connection idle for three
    minutes ("missed heartbeats from client, timeout: 60s", an error in its log per
    connection), so the next send after a quiet spell failed and was sent again on a new
    connection (and a test's queue reads on it failed). Without heartbeats RabbitMQ keeps
    it open; a dead broker host or network still fails a send, by TCP: keepalives on the
    idle connection and TCP_USER_TIMEOUT on the data a send writes. What TCP cannot see is
    a broker process that is frozen on a live host: a send to it waits for its confirm
    (with heartbeats, pika gave up after a minute or more). (Dramatiq's issue 321 suggests
    this split.)"""

    def __init__(self, *, url: str, timeout: float) -> None:
        super().__init__(url=url, confirm_delivery=True)
        hosts = self.parameters if isinstance(self.parameters, list) else [self.parameters]  # url may name several
        self.sending_parameters: list[pika.URLParameters] = []
        for parameters in hosts:
            sending = copy.copy(parameters)
            sending.heartbeat = 0
            sending.tcp_options = {
                "TCP_KEEPIDLE": 30,
                "TCP_KEEPINTVL": 10,
                "TCP_KEEPCNT": 3,
                "TCP_USER_TIMEOUT": int(max(timeout, 5.0) * 1000),
            }
            self.sending_parameters.append(sending)

    # Dramatiq's own getter but for the parameters; its deleter as it is.
    @property
    def connection(self) -> pika.BlockingConnection:
        connection = getattr(self.state, "connection", None)
        if connection is None:
            connection = self.state.connection = pika.BlockingConnection(parameters=self.sending_parameters)
            self.connections.add(connection)
        return connection

    @connection.deleter
    def connection(self) -> None:
        RabbitmqBroker.connection.fdel(self)  # type: ignore[attr-defined]


def rabbitmq_broker(url: str, timeout: float) -> RabbitmqBroker:
    """RabbitMQ with publisher confirms: an enqueue returns once the broker has the message
    (a durable queue, a persistent message), so an acknowledged import is never lost with a
    broker restart. pika's connection and socket timeouts come from the URL; the setting's
    timeout is their default."""
    sep = "&" if "?" in url else "?"
    if "socket_timeout=" not in url:
        url += f"{sep}socket_timeout={timeout}&blocked_connection_timeout={max(timeout, 5.0)}"
    return SendingRabbitmqBroker(url=url, timeout=timeout)


broker = make_broker(settings.dramatiq_url, settings.redis_timeout)
if settings.worker_metrics_port:  # only worker processes boot: elsewhere it stays idle
    # The workers' pool reports go to Redis, whichever broker carries the messages.
    reports = (
        broker.client
        if isinstance(broker, RedisBroker)
        else redis.Redis(connection_pool=redis_pool(settings.redis_url, settings.redis_timeout))
    )
    broker.add_middleware(WorkerMetrics(settings.worker_metrics_port, Path(settings.worker_state_dir), reports))
dramatiq.set_broker(broker)
