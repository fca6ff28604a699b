"""`failover web`: one HTTP server for operators: the status page, its JSON, the timeline and
the Prometheus metrics.

- `/` the status page (plain HTML, CSS and a small script served from this package: no build
  step, no CDN, nothing fetched from elsewhere), which polls the endpoints below;
- `/api/status` what `failover status --json` prints, plus the scripts' recent runs;
- `/api/history` what `failover history --json` prints (`service`, `since`, `limit`);
- `/timeline.svg?window=15m` the ownership timeline (`failover history --svg FILE` draws the
  same), windows from 15m to 7d;
- `/metrics` what `failover metrics` serves.

Beyond the loopback interface the server answers only with authentication, as Flower does:
basic auth (`FAILOVER_WEB_USER`, `FAILOVER_WEB_PASSWORD`) or a bearer token
(`FAILOVER_WEB_TOKEN`); `serve` refuses to bind another address without one. No secret is
served: the JSON holds no URL and no script output, and every text the page shows is set as
text (the script never builds HTML from data).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Connection

from workers.errors import ConfigError, FailoverError
from workers.operations.metrics import ClusterCollector
from workers.operations.status import cluster_status, history
from workers.operations.timeline import WINDOWS, colour_map, owner_colour, read_timeline
from workers.operations.timeline_svg import render_svg
from workers.services import app_script
from workers.settings import Settings
from workers.stores.database import transaction

log = logging.getLogger(__name__)

ASSETS = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
RECENT_RUNS = 10


def is_loopback(address: str) -> bool:
    """Whether `address` (an IP or a host name) reaches only this machine."""
    try:
        infos = socket.getaddrinfo(address, None)
    except socket.gaierror:
        return False
    hosts = {info[4][0] for info in infos}
    return bool(hosts) and all(ipaddress.ip_address(host).is_loopback for host in hosts)


class Guard:
    """Who may ask: nobody needs to on loopback without credentials; with them, every request
    carries basic auth or the bearer token (compared in constant time)."""

    def __init__(self, settings: Settings) -> None:
        self.basic: bytes | None = None
        if settings.web_user and settings.web_password:
            pair = f"{settings.web_user}:{settings.web_password}".encode()
            self.basic = base64.b64encode(pair)
        self.token = settings.web_token.encode() if settings.web_token else None

    @property
    def required(self) -> bool:
        return self.basic is not None or self.token is not None

    def allows(self, header: str | None) -> bool:
        if not self.required:
            return True
        scheme, _, value = (header or "").partition(" ")
        given = value.strip().encode()
        if scheme.lower() == "basic" and self.basic is not None:
            return hmac.compare_digest(given, self.basic)
        if scheme.lower() == "bearer" and self.token is not None:
            return hmac.compare_digest(given, self.token)
        return False


def check_binding(address: str, guard: Guard) -> None:
    """Refuse to serve anything but loopback without authentication."""
    if not guard.required and not is_loopback(address):
        raise ConfigError(
            f"refusing to serve on {address} without authentication: set FAILOVER_WEB_USER "
            "and FAILOVER_WEB_PASSWORD, or FAILOVER_WEB_TOKEN (or bind 127.0.0.1)"
        )


def recent_runs(connection: Connection, limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    """The scripts' latest runs, newest first (without their output, which may hold secrets)."""
    return app_script.recent_runs(connection, limit)


def colours(report: dict[str, Any]) -> dict[str, str]:
    """Each node's colour, the one the timeline gives it, for the page's swatches and cards."""
    registered = colour_map([node["name"] for node in report["nodes"]])
    names = set(registered)
    names |= {event[key] for event in report["events"] for key in ("from", "to") if event[key]}
    names |= {run["node"] for run in report["recent_runs"]}
    return {name: owner_colour(name, registered) for name in sorted(names)}


class Site:
    """What the handler answers, given the settings: each route returns (status, type, body)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.guard = Guard(settings)
        self.registry = CollectorRegistry()
        self.registry.register(ClusterCollector(settings))
        self.routes: dict[str, Callable[[dict[str, str]], tuple[int, str, bytes]]] = {
            "/api/status": self.status,
            "/api/history": self.history,
            "/timeline.svg": self.timeline,
            "/metrics": self.metrics,
        }

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, str, bytes]:
        if path in ASSETS:
            name, kind = ASSETS[path]
            return 200, kind, resources.files(__name__).joinpath(name).read_bytes()
        route = self.routes.get(path)
        if route is None:
            return 404, "text/plain; charset=utf-8", b"not found\n"
        try:
            return route(query)
        except FailoverError as error:
            status = 400 if isinstance(error, ConfigError) else 503
            return _json({"error": str(error)}, status)

    def status(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        with transaction(self.settings) as connection:
            report = cluster_status(connection, self.settings, int(query.get("events", 10)))
            report["recent_runs"] = recent_runs(connection)
        report["colours"] = colours(report)
        return _json(report)

    def history(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        with transaction(self.settings) as connection:
            events = history(
                connection, query.get("service"), query.get("since"), int(query.get("limit", 50))
            )
        return _json(events)

    def timeline(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        window = query.get("window", "1h")
        if window not in WINDOWS:
            raise ConfigError(f"window {window!r}: one of {', '.join(WINDOWS)}")
        with transaction(self.settings) as connection:
            picture = render_svg(read_timeline(connection, WINDOWS[window]))
        return 200, "image/svg+xml; charset=utf-8", picture.encode()

    def metrics(self, _query: dict[str, str]) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


def _json(value: Any, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(value).encode()


def handler_for(site: Site) -> type[BaseHTTPRequestHandler]:
    """A request handler bound to `site`: checks the credentials, then routes GET requests."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "failover-web"
        sys_version = ""

        def do_GET(self) -> None:
            if not site.guard.allows(self.headers.get("Authorization")):
                self._send(401, "text/plain; charset=utf-8", b"authentication required\n")
                return
            parts = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            try:
                status, kind, body = site.answer(parts.path, query)
            except ValueError as error:
                status, kind, body = _json({"error": str(error)}, 400)
            self._send(status, kind, body)

        def _send(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Basic realm="failover", charset="UTF-8"')
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("web: " + format, *args)

    return Handler


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve(settings: Settings, address: str, port: int) -> ThreadingHTTPServer:
    """Bind the server (refused beyond loopback without authentication) and serve it from a
    daemon thread; the caller shuts it down."""
    site = Site(settings)
    check_binding(address, site.guard)
    server_class = _Server6 if ":" in address else ThreadingHTTPServer
    server = server_class((address, port), handler_for(site))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="failover-web", daemon=True).start()
    return server
