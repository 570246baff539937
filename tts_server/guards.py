"""The checks every request passes before any work: who may use the server, and how much of it.

One aiohttp middleware (:meth:`Guards.middleware`), installed by
:func:`~tts_server.app.create_app` in front of every route, so that an endpoint added
later is guarded without doing anything. In order:

1. **Shutdown**: once the server is stopping, a new request gets 503.
2. **Host** (only while no API key is set): the ``Host`` header must be a loopback name
   or address (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``), the configured
   or actual address the request arrived on, or a name in ``[server] allowed_hosts``;
   otherwise 403. A web page that rebinds its own domain name to 127.0.0.1 (DNS
   rebinding) sends its own name as ``Host`` and is refused. With keys set the key
   protects the server and a reverse proxy may use any name.
3. **Origin**: a request that carries ``Origin`` (browsers send it on WebSocket upgrades
   and cross-origin requests) must come from the server's own origin or one listed in
   ``[server] allowed_origins`` (``"*"``: any); otherwise 403. Clients that send no
   ``Origin`` are not browsers and pass. A CORS preflight (``OPTIONS`` with
   ``Access-Control-Request-Method``) from an allowed origin is answered here, without a
   key (browsers send none on preflights); responses to allowed origins carry
   ``Access-Control-Allow-Origin``.
4. **API key** (when ``[server] api_keys`` or ``TTS_API_KEYS`` holds any), on every path
   but ``/health`` and a plain ``GET`` of the demo page's static files (``page_paths``):
   ``Authorization: Bearer KEY``, ``X-API-Key: KEY`` or ``?api_key=KEY``
   (the only way a browser can authenticate a WebSocket). Keys are compared in constant
   time (SHA-256 digests, ``hmac.compare_digest``, every key compared). Missing or wrong:
   401 with ``WWW-Authenticate``; a WebSocket upgrade is refused this way before it is
   accepted. Keys never reach a log line (the access log drops ``api_key`` from URLs).
5. **Fair share**: at most ``max_streams_per_client`` requests of one client in progress on
   the paths that open streams (everything but the few cheap ones named when installing),
   across all endpoints: a WebSocket holds its share until it closes. A client is its
   key when keys are set (a key's ``max_streams`` overrides the limit) and its address
   otherwise. Past it: 429 before any work. ``max_streams`` still caps all clients
   together (1013 / 503), and another client is served as long as that leaves room.
6. **Slow requests**: a body must arrive within ``request_timeout_s`` (else 408); headers
   are bounded by the connection's keep-alive timer (``handler_args`` of the application,
   see :func:`handler_args`): aiohttp arms it when a connection opens and after each
   response, and closes the connection if no complete request head arrived when it fires.
7. **Errors as JSON**: an HTTP error of any route (404, 405, 413...) is answered as
   ``{"error": ...}``; an unexpected exception is logged and answered as a JSON 500
   without a traceback.

Why our own middleware and not aiohttp-cors: its policy is attached route by route
(a route added later is unprotected until someone remembers it), and the policy here
is one list.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

from .config import APIKey, ServerSettings

log = logging.getLogger(__name__)

#: Environment variable the server reads API keys from (comma-separated), beside ``[server] api_keys``.
API_KEYS_ENV = "TTS_API_KEYS"
#: Query parameter that carries a key (browsers cannot set headers on a WebSocket).
API_KEY_PARAM = "api_key"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Client:
    """Who a request comes from, for fair shares and logs.

    Attributes:
        ident: the share's key: ``"key:N"`` (the N-th API key) or ``"addr:ADDRESS"``.
        label: for logs (a key's name, never the key itself).
        max_streams: concurrent streams it may hold.
    """

    ident: str
    label: str
    max_streams: int


#: Where the middleware leaves the request's :class:`Client` for the handlers.
CLIENT = web.RequestKey("client", Client)


@dataclass(frozen=True)
class _Key:
    digest: bytes
    label: str
    max_streams: int | None


def load_keys(settings: ServerSettings, environ: Mapping[str, str] | None = None) -> list[_Key]:
    """The API keys of ``[server] api_keys`` and of ``TTS_API_KEYS`` (comma-separated), as digests."""
    environ = os.environ if environ is None else environ
    entries: list[str | APIKey] = [*settings.api_keys]
    entries += [key.strip() for key in environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
    keys = []
    for number, entry in enumerate(entries, 1):
        key, name, limit = (entry, "", None) if isinstance(entry, str) else (entry.key, entry.name, entry.max_streams)
        keys.append(_Key(hashlib.sha256(key.encode()).digest(), name or f"key #{number}", limit))
    return keys


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback IP addresses (brackets allowed)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(settings: ServerSettings, environ: Mapping[str, str] | None = None) -> bool:
    """Log a warning if the server listens beyond loopback without API keys; True if it did."""
    if is_loopback_host(settings.host) or load_keys(settings, environ):
        return False
    log.warning(
        "listening on %s:%d without API keys: anyone who can reach this port can use the server "
        "(set %s or [server] api_keys, or listen on 127.0.0.1)",
        settings.host,
        settings.port,
        API_KEYS_ENV,
    )
    return True


def _split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) → lower-case host without brackets, port."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    try:
        return host.rstrip("."), int(port) if port else None
    except ValueError:
        return host.rstrip("."), -1


_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _origin_of(value: str) -> tuple[str, str, int] | None:
    """An ``Origin`` value as (scheme, host, port), or ``None`` if it is not a URL origin (e.g. ``null``)."""
    try:
        url = URL(value.strip())
    except ValueError:
        return None
    if not url.scheme or not url.host:
        return None
    port = url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme, -1)
    return url.scheme.lower(), url.host.lower().rstrip("."), port


class StreamShares:
    """Concurrent streams held per client (see :class:`Client`); one per application."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def held(self, client: Client) -> int:
        """Streams ``client`` holds now."""
        return self._held.get(client.ident, 0)

    def acquire(self, client: Client) -> bool:
        """Take one stream for ``client``; False (nothing taken) when it holds its limit already."""
        held = self._held.get(client.ident, 0)
        if held >= client.max_streams:
            return False
        self._held[client.ident] = held + 1
        return True

    def release(self, client: Client) -> None:
        """Give back a stream taken with :meth:`acquire`."""
        held = self._held.get(client.ident, 0) - 1
        if held > 0:
            self._held[client.ident] = held
        else:
            self._held.pop(client.ident, None)


def json_error(
    status: int, message: str, headers: Mapping[str, str] | None = None, close: bool = False
) -> web.Response:
    """``{"error": message}`` with ``status``; ``close``: end the connection after it."""
    response = web.json_response({"error": message}, status=status, headers=headers)
    if close:
        response.force_close()
    return response


class Guards:
    """The request checks of one application (see the module docstring).

    Args:
        settings: ``[server]``.
        open_paths: paths served without an API key (``/health``).
        unmetered_paths: paths that do not count against a client's streams (cheap,
            bounded answers: ``/health``, ``/voices``).
        page_paths: static pages and their scripts, served without an API key to a plain
            ``GET``/``HEAD`` (never to a WebSocket upgrade of the same path) and not counted
            against a client's streams: they hold no secret, and a browser must load the
            page before it can ask its user for the key. Host and Origin rules still apply.
        self_reading_paths: paths whose handler reads its body as a stream itself and bounds
            that read by ``request_timeout_s`` (Socket.IO's polling): the middleware does not
            read it first.
        environ: where ``TTS_API_KEYS`` is read (the process environment by default).
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        open_paths: Collection[str] = ("/health",),
        unmetered_paths: Collection[str] = ("/health", "/voices"),
        page_paths: Collection[str] = (),
        self_reading_paths: Collection[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = load_keys(settings, environ)
        self.open_paths = frozenset(open_paths)
        self.unmetered_paths = frozenset(unmetered_paths)
        self.page_paths = frozenset(page_paths)
        self.self_reading_paths = frozenset(self_reading_paths)
        self.any_origin = "*" in settings.allowed_origins
        self.origins = {o for o in map(_origin_of, settings.allowed_origins) if o is not None}
        self.allow_null_origin = "null" in settings.allowed_origins
        self.hosts = {_split_host(h)[0] for h in settings.allowed_hosts}
        bound = _split_host(settings.host)[0]
        self.bound_host = bound if bound not in ("", "0.0.0.0", "::") else None
        self.shares = StreamShares()
        self.shutting_down = False

    # -- the checks -------------------------------------------------------------------------

    def host_allowed(self, request: web.Request) -> bool:
        """The ``Host`` rule (only applied while no key is set)."""
        value = request.headers.get(hdrs.HOST)
        if value is None:
            return True  # HTTP/1.0 without Host: not a browser
        host, _ = _split_host(value)
        if is_loopback_host(host) or host in self.hosts or host == self.bound_host:
            return True
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if sockname:
            try:
                return ipaddress.ip_address(host) == ipaddress.ip_address(sockname[0])
            except ValueError:
                return False
        return False

    def origin_allowed(self, request: web.Request) -> bool:
        """The ``Origin`` rule: none, listed, or the server's own."""
        value = request.headers.get(hdrs.ORIGIN)
        if value is None or self.any_origin:
            return True
        if value.strip().lower() == "null":
            return self.allow_null_origin
        origin = _origin_of(value)
        if origin is None:
            return False
        return origin in self.origins or self._same_origin(request, origin)

    def listed_origin(self, request: web.Request) -> str | None:
        """The request's ``Origin`` if CORS headers are due (it is allowed by the list)."""
        value = request.headers.get(hdrs.ORIGIN)
        if value is None:
            return None
        if self.any_origin or _origin_of(value) in self.origins:
            return value
        return None

    @staticmethod
    def _same_origin(request: web.Request, origin: tuple[str, str, int]) -> bool:
        scheme, host, port = origin
        own_host, own_port = _split_host(request.headers.get(hdrs.HOST, ""))
        return host == own_host and port == (own_port if own_port is not None else _DEFAULT_PORTS.get(scheme, -1))

    def is_page(self, request: web.Request) -> bool:
        """A plain ``GET``/``HEAD`` of one of ``page_paths`` (not a WebSocket upgrade)."""
        return (
            request.path in self.page_paths
            and request.method in (hdrs.METH_GET, hdrs.METH_HEAD)
            and hdrs.UPGRADE not in request.headers
        )

    def key_of(self, request: web.Request) -> _Key | None:
        """The configured key the request presents, compared in constant time (``None``: none matches)."""
        presented = _presented_key(request)
        if presented is None:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys:  # every key is compared: the time does not say which one matched
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key
        return found

    def client_of(self, request: web.Request, key: _Key | None) -> Client:
        """Who the request comes from (its key, else its address)."""
        limit = self.settings.max_streams_per_client
        if key is not None:
            number = self.keys.index(key)
            return Client(f"key:{number}", key.label, key.max_streams or limit)
        address = request.remote or "unknown"
        return Client(f"addr:{address}", address, limit)

    # -- the middleware --------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Apply the checks, then the handler; HTTP errors come back as JSON."""
        if self.shutting_down:
            return json_error(503, "the server is shutting down", close=True)
        if not self.keys and not self.host_allowed(request):
            host = request.headers.get(hdrs.HOST, "")
            return json_error(
                403,
                f"Host {host!r} is not allowed: use localhost or 127.0.0.1, add it to [server] allowed_hosts, "
                "or set API keys",
            )
        if not self.origin_allowed(request):
            origin = request.headers.get(hdrs.ORIGIN, "")
            return json_error(403, f"origin {origin!r} is not allowed: add it to [server] allowed_origins")
        if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            return self._preflight(request)
        key = self.key_of(request) if self.keys else None
        page = self.is_page(request)
        if self.keys and key is None and request.path not in self.open_paths and not page:
            return json_error(
                401,
                "missing or invalid API key: send Authorization: Bearer KEY, X-API-Key: KEY or ?api_key=KEY",
                {hdrs.WWW_AUTHENTICATE: 'Bearer realm="tts-server"'},
            )
        client = self.client_of(request, key)
        request[CLIENT] = client
        metered = request.match_info.http_exception is None and request.path not in self.unmetered_paths and not page
        if metered and not self.shares.acquire(client):
            held = self.shares.held(client)
            return json_error(
                429,
                f"too many streams from {client.label}: {held} of {client.max_streams} in use "
                "(close one, or use an API key with its own max_streams)",
                {hdrs.RETRY_AFTER: "1"},
            )
        try:
            if (
                request.body_exists
                and not request.headers.get(hdrs.UPGRADE)
                and request.path not in self.self_reading_paths
            ):
                try:
                    async with asyncio.timeout(self.settings.request_timeout_s):
                        await request.read()  # kept by aiohttp: the handler reads it again for free
                except TimeoutError:
                    return json_error(
                        408,
                        f"the request body did not arrive within {self.settings.request_timeout_s:g} s",
                        close=True,
                    )
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH)}
            return json_error(exc.status, exc.reason if exc.text is None else exc.text.strip(), headers)
        except Exception:
            if request.headers.get(hdrs.UPGRADE):
                raise  # a WebSocket handler's own bug: nothing can be answered over HTTP any more
            log.exception("%s %s failed", request.method, request.path)
            return json_error(500, "internal error (see the server log)")
        finally:
            if metered:
                self.shares.release(client)

    def _preflight(self, request: web.Request) -> web.Response:
        headers = {
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, POST, OPTIONS",
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: "Authorization, X-API-Key, Content-Type",
            hdrs.ACCESS_CONTROL_MAX_AGE: "600",
            hdrs.VARY: "Origin",
        }
        origin = self.listed_origin(request)
        if origin is not None:
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        return web.Response(status=204, headers=headers)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """CORS headers on every HTTP response to a listed origin (streamed ones included)."""
        origin = self.listed_origin(request)
        if origin is not None and not request.headers.get(hdrs.UPGRADE):
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers.add(hdrs.VARY, "Origin")

    def install(self, app: web.Application) -> None:
        """Put the checks in front of every route of ``app``."""
        app.middlewares.append(self.middleware)
        app.on_response_prepare.append(self.on_response_prepare)


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    header = request.headers.get("X-API-Key")
    if header:
        return header.strip()
    return request.query.get(API_KEY_PARAM)


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log, one line per request, with ``api_key`` values replaced by ``***``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        url = request.rel_url
        if API_KEY_PARAM in url.query:
            url = url.update_query({API_KEY_PARAM: "***"})
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs',
            request.remote,
            request.method,
            url,
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
        )


def handler_args(settings: ServerSettings) -> dict[str, Any]:
    """Connection settings for ``web.Application(handler_args=...)``: header timeout, redacted access log.

    aiohttp's ``keepalive_timeout`` is armed when a connection opens and after every
    response; when it fires while no complete request head has arrived, the connection
    is closed. Set to ``request_timeout_s`` it is the timeout for a request's headers
    (and for an idle keep-alive connection). ``lingering_time`` is how long aiohttp keeps
    reading a body nobody consumed (after a 408, say) before closing: at most 1 s here
    (its default, 10 s, would give a slow client that much more).
    """
    return {
        "keepalive_timeout": settings.request_timeout_s,
        "lingering_time": min(1.0, settings.request_timeout_s),
        "access_log_class": RedactingAccessLogger,
    }
