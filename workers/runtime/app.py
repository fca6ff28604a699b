"""The Celery app of a node: its configuration from the settings, its tasks and its steps.

Configuration is built lazily from the settings, so importing the app never fails on a
missing setting; the first use of the configuration does, with one clear line.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from workers.queues import joining
from workers.runtime import remote_control
from workers.runtime.node import install
from workers.settings import Settings
from workers.settings.process import current_settings
from workers.settings.tls import url_tls
from workers.stores import broker


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for a node: JSON only, early acks, bounded waits on the broker.

    Every message costs round trips to Redis, and a far region pays 100-250 ms for each, so
    a node keeps only those that earn their cost (measured: tests/benchmarks/far_regions.py):
    no ack emulation (the Redis transport's unacked bookkeeping: a hash and a sorted set per
    message, to redeliver after an hour what the database already re-decides within a
    lease) and no task events unless `FAILOVER_TASK_EVENTS` asks for them (a publish per
    task state; Flower still sees every worker through its worker heartbeats), and while
    it does not, a remote `enable_events` (Flower sends one every 5 s) is refused
    (`workers/runtime/remote_control.py`). TLS parameters in a `sentinel://` URL reach the
    sentinels and the result backend too (`_to_sentinels`).
    """
    broker_options: dict[str, Any] = {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "retry_on_timeout": True,
        "ack_emulation": False,
    }
    if settings.sentinel_master:
        broker_options["master_name"] = settings.sentinel_master
    result_backend = settings.result_backend or _result_backend(settings.broker_url)
    backend_tls = _sentinel_tls(result_backend)
    return {
        "broker_url": settings.broker_url,
        "broker_use_ssl": url_tls(settings.broker_url) or None,
        "result_backend": result_backend,
        "broker_transport_options": _to_sentinels(broker_options, settings.broker_url),
        "result_backend_transport_options": _to_sentinels(broker_options, result_backend),
        "redis_backend_use_ssl": backend_tls or None,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": 2.0,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_expires": 3600,
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_default_queue": "failover.unrouted",
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_scheduler": "beat_schedule.scheduler:NodeScheduler",
        "worker_consumer": "workers.queues.consumer:NodeConsumer",
    }


def _sentinel_tls(url: str | None) -> dict[str, Any]:
    """The TLS parameters (`ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`,
    ...) of a `sentinel://` URL as kombu reads them (from its first entry), or none.

    kombu hands them to the connections to the master, and so does Celery's result backend
    when they are its `redis_backend_use_ssl`; the sentinels themselves are reached with
    redis-py's `sentinel_kwargs` alone (see `_to_sentinels`).
    """
    if not url or not url.startswith("sentinel://"):
        return {}
    return url_tls(url)


def _to_sentinels(options: dict[str, Any], url: str | None) -> dict[str, Any]:
    """Transport options that also reach the sentinels over TLS when `url` asks for TLS.

    redis-py's `Sentinel` connects to the sentinels with `sentinel_kwargs` only (neither the
    URL's TLS parameters nor the master's connection options), so without this a node whose
    sentinels speak only TLS finds no master. The same certificates and bounded waits as the
    master's: an operator writes TLS once, in the broker URL.
    """
    tls = _sentinel_tls(url)
    if not tls:
        return options
    to_sentinels = {
        "ssl": True,
        **tls,
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
    }
    return {**options, "sentinel_kwargs": to_sentinels}


def _result_backend(broker_url: str) -> str | None:
    """Results (for `failover move` and `run-script --wait`) go to the broker's Redis."""
    schemes = ("redis://", "rediss://", "redis+socket://", "sentinel://")
    return broker_url if broker_url.startswith(schemes) else None


broker.install()
app = Celery("workers", include=["workers.runtime.tasks"])
app.add_defaults(lambda: celery_config(current_settings()))
install(app)
joining.install(app)
remote_control.install()
