"""The browser demo page: ``GET /`` and ``GET /websocket-demo``, and its scripts under ``/demo/``.

Static files shipped in the package (``tts_server/static/``), read once when the routes
are added and served from memory: no build step, no CDN, nothing fetched from elsewhere.
The page streams through ``/ws/stream`` (:mod:`tts_server.protocol`) and plays the 48 kHz
float32 frames through an ``AudioWorklet`` ring buffer (``player-worklet.js``).

Every response carries a Content-Security-Policy that allows only the server's own
origin (scripts, styles, the worklet, ``fetch`` and the WebSocket); the page holds no
secret, so the guards serve these paths without an API key to a plain ``GET``
(:class:`~tts_server.guards.Guards` ``page_paths``) and the page asks its user for the
key when ``/voices`` answers 401.

``/`` is shared with the kokorox-websocket protocol: a WebSocket upgrade of ``/`` goes to
the handler given to :func:`add_routes`, a plain ``GET`` gets the page.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import hdrs, web

log = logging.getLogger(__name__)

#: Where the page is served (both paths give the same page).
PAGE_PATHS = ("/", "/websocket-demo")

#: URL path → (file in ``tts_server/static``, content type).
ASSETS = {
    "/demo/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo/player-worklet.js": ("player-worklet.js", "text/javascript; charset=utf-8"),
    "/demo/demo.css": ("demo.css", "text/css; charset=utf-8"),
    "/demo/icon.svg": ("icon.svg", "image/svg+xml"),
}

#: Every path this module serves without an API key (to a plain GET; see the guards).
PUBLIC_PATHS = (*PAGE_PATHS, *ASSETS)

#: Only the server's own origin: scripts, styles, images, the worklet, ``fetch`` and the
#: WebSocket. CSP level 3 ``'self'`` covers ``ws:``/``wss:`` of the same host; browsers that
#: predate that rule get the host's ``ws://``/``wss://`` named (:func:`content_security_policy`).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

#: A ``Host`` header that may be named in the policy (a name or address and a port, nothing else).
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def content_security_policy(host: str | None) -> str:
    """:data:`CONTENT_SECURITY_POLICY`, with ``ws://HOST wss://HOST`` added to ``connect-src``.

    ``host`` is the request's ``Host`` header; one that is not a plain host[:port] is left out
    (``'self'`` alone then).
    """
    if host is None or not _HOST.fullmatch(host):
        return CONTENT_SECURITY_POLICY
    return CONTENT_SECURITY_POLICY.replace("connect-src 'self'", f"connect-src 'self' ws://{host} wss://{host}")


_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    hdrs.CACHE_CONTROL: "no-cache",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _headers(request: web.Request) -> dict[str, str]:
    return {**_HEADERS, "Content-Security-Policy": content_security_policy(request.headers.get(hdrs.HOST))}


def _read(name: str) -> bytes:
    return resources.files("tts_server").joinpath("static", name).read_bytes()


def add_routes(app: web.Application, websocket_root: Handler) -> None:
    """Serve the page at :data:`PAGE_PATHS` and its files at :data:`ASSETS` paths.

    Args:
        app: the application (its guards apply to every route).
        websocket_root: the handler of a WebSocket upgrade of ``/`` (kokorox-websocket).

    Raises:
        FileNotFoundError: the package was installed without its static files.
    """
    page = _read("demo.html")
    files = {path: (_read(name), content_type) for path, (name, content_type) in ASSETS.items()}

    async def serve_page(request: web.Request) -> web.StreamResponse:
        if request.path == "/" and web.WebSocketResponse().can_prepare(request).ok:
            return await websocket_root(request)
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=_headers(request))

    async def serve_asset(request: web.Request) -> web.StreamResponse:
        body, content_type = files[request.path]
        return web.Response(body=body, headers={**_headers(request), hdrs.CONTENT_TYPE: content_type})

    for path in PAGE_PATHS:
        app.router.add_get(path, serve_page)
    for path in files:
        app.router.add_get(path, serve_asset)
