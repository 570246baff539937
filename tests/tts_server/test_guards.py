"""The checks in front of every route (tts_server.guards): keys, origins, hosts, CORS, fair shares, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tts_server.app import PIPELINE, create_app
from tts_server.config import load_config
from tts_server.engines.espeak import EspeakEngine
from tts_server.guards import API_KEYS_ENV

KEY = "k3y-0123456789abcdef"
BOT_KEY = "b0t-0123456789abcdef"


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return EspeakEngine()


@pytest.fixture
async def serve(espeak):
    """``await serve(server_settings)`` → (base URL, app): a server with one more route, ``GET /later``,
    added after ``create_app`` as a future endpoint would be."""
    servers: list[TestServer] = []

    async def later(request: web.Request) -> web.Response:
        return web.json_response({"later": True})

    async def start(server: dict | None = None, host: str = "127.0.0.1"):
        config = load_config(None, {"engine": {"warmup": False}, "server": server or {}})
        app = create_app(config, engine=espeak)
        app.router.add_get("/later", later)
        test_server = TestServer(app, host=host, port=0)
        await test_server.start_server()
        servers.append(test_server)
        return str(test_server.make_url("")).rstrip("/"), app

    yield start
    for test_server in servers:
        with contextlib.suppress(Exception):
            await test_server.close()


def ws(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws/stream"


async def request(http, method: str, url: str, **kwargs) -> tuple[int, dict, dict]:
    """(status, headers, JSON body or {}) of one HTTP request."""
    async with http.request(method, url, **kwargs) as r:
        body = await r.read()
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        return r.status, dict(r.headers), data


ENDPOINTS = [
    ("GET", "/voices", None),
    ("POST", "/api/speak", {"text": "Hi."}),
    ("GET", "/later", None),
    ("POST", "/v1/audio/speech", {"input": "Hi.", "response_format": "wav"}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/audio/voices", None),
    ("GET", "/metrics", None),
]


# -- API keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_endpoint_but_health_wants_a_key_and_takes_it_three_ways(serve, method, path, body):
    base, _ = await serve({"api_keys": [KEY]})
    async with aiohttp.ClientSession() as http:
        for headers, params in [({}, {}), ({"Authorization": "Bearer wrong"}, {}), ({"X-API-Key": KEY[:-1]}, {})]:
            status, got, data = await request(http, method, base + path, json=body, headers=headers, params=params)
            assert status == 401 and "API key" in data["error"]
            assert got["WWW-Authenticate"].startswith("Bearer")
        for headers, params in [
            ({"Authorization": f"Bearer {KEY}"}, {}),
            ({"X-API-Key": KEY}, {}),
            ({}, {"api_key": KEY}),
        ]:
            status, _, _ = await request(http, method, base + path, json=body, headers=headers, params=params)
            assert status == 200
        status, _, data = await request(http, "GET", base + "/health")
        assert status == 200 and data["status"] == "ok"  # /health stays open


async def test_a_websocket_without_a_key_is_refused_before_it_is_accepted(serve):
    base, app = await serve({"api_keys": [KEY]})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws(base))
        assert refused.value.status == 401
        assert app[PIPELINE].active_streams == 0  # no stream was ever opened
        async with http.ws_connect(ws(base) + f"?api_key={KEY}") as browser_style:
            await browser_style.send_json({"token": "Hello.", "flush": True})
            assert (await browser_style.receive(timeout=30)).type == aiohttp.WSMsgType.BINARY


async def test_keys_come_from_the_environment_too_and_tables_carry_their_own_limit(serve, monkeypatch):
    monkeypatch.setenv(API_KEYS_ENV, f" {KEY} , other-key ")
    base, _ = await serve(
        {"api_keys": [{"key": BOT_KEY, "max_streams": 6, "name": "bot"}], "max_streams_per_client": 1}
    )
    async with aiohttp.ClientSession() as http:
        for key in (KEY, "other-key", BOT_KEY):
            assert (await request(http, "GET", base + "/voices", headers={"X-API-Key": key}))[0] == 200
        bot = [await http.ws_connect(ws(base), headers={"X-API-Key": BOT_KEY}) for _ in range(6)]  # its own limit
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws(base), headers={"X-API-Key": BOT_KEY})
        assert refused.value.status == 429
        scripts = await http.ws_connect(ws(base), headers={"X-API-Key": KEY})  # another key: its own share
        for conn in [*bot, scripts]:
            await conn.close()


async def test_a_key_never_reaches_the_logs(serve, caplog):
    caplog.set_level(logging.DEBUG)
    base, _ = await serve({"api_keys": [KEY]})
    async with aiohttp.ClientSession() as http:
        await request(http, "GET", base + "/voices", params={"api_key": KEY})
        await request(http, "GET", base + "/voices", headers={"Authorization": f"Bearer {KEY}x"})
        async with http.ws_connect(ws(base) + f"?api_key={KEY}") as conn:
            await conn.send_json({"token": "Hi.", "flush": True})
            await conn.receive(timeout=30)
    await asyncio.sleep(0.1)  # the session's closing line
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert KEY not in text and "api_key=***" in text  # the access log keeps the URL, redacted
    assert "closed after" in text and "from key #1" in text


# -- origins and CORS -------------------------------------------------------------------------------


async def test_a_foreign_origin_is_refused_everywhere_and_a_listed_one_gets_cors(serve):
    base, _ = await serve({"allowed_origins": ["https://app.example"]})
    evil, listed = {"Origin": "https://evil.example"}, {"Origin": "https://app.example"}
    async with aiohttp.ClientSession() as http:
        for method, path, body in [("GET", "/health", None), *ENDPOINTS]:
            status, _, data = await request(http, method, base + path, json=body, headers=evil)
            assert status == 403 and "https://evil.example" in data["error"]
            status, headers, _ = await request(http, method, base + path, json=body, headers=listed)
            assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
            status, headers, _ = await request(http, method, base + path, json=body)  # not a browser
            assert status == 200 and "Access-Control-Allow-Origin" not in headers
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws(base), headers=evil)
        assert refused.value.status == 403
        async with http.ws_connect(ws(base), headers=listed):
            pass
        same = {"Origin": base}  # a page the server itself would serve
        assert (await request(http, "GET", base + "/voices", headers=same))[0] == 200
        assert (await request(http, "GET", base + "/voices", headers={"Origin": "null"}))[0] == 403


async def test_a_cors_preflight_is_answered_without_a_key_for_listed_origins_only(serve):
    base, _ = await serve({"allowed_origins": ["https://app.example"], "api_keys": [KEY]})
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await request(
            http, "OPTIONS", base + "/api/speak", headers={**preflight, "Origin": "https://app.example"}
        )
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert (
            "Authorization" in headers["Access-Control-Allow-Headers"]
            and "POST" in headers["Access-Control-Allow-Methods"]
        )
        status, _, _ = await request(
            http, "OPTIONS", base + "/api/speak", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert status == 403


# -- Host (DNS rebinding) -----------------------------------------------------------------------------


async def test_without_keys_only_local_host_names_are_served(serve):
    base, _ = await serve({"allowed_hosts": ["tts.lan"]})
    port = base.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as http:
        for method, path, body in [("GET", "/health", None), *ENDPOINTS]:
            status, _, data = await request(http, method, base + path, json=body, headers={"Host": "rebound.example"})
            assert status == 403 and "rebound.example" in data["error"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws(base), headers={"Host": f"rebound.example:{port}"})
        assert refused.value.status == 403
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "tts.lan", f"TTS.LAN:{port}", f"app.localhost:{port}"):
            assert (await request(http, "GET", base + "/voices", headers={"Host": host}))[0] == 200, host


async def test_with_keys_any_host_name_may_reach_the_server(serve):
    base, _ = await serve({"api_keys": [KEY]})
    async with aiohttp.ClientSession() as http:
        status, _, _ = await request(
            http, "GET", base + "/voices", headers={"Host": "tts.example.com", "X-API-Key": KEY}
        )
        assert status == 200


async def test_exposing_the_server_without_keys_logs_a_warning(serve, caplog):
    from tts_server.config import ServerSettings
    from tts_server.guards import warn_if_exposed

    assert warn_if_exposed(ServerSettings(host="0.0.0.0"), environ={})
    assert "anyone who can reach this port" in caplog.text
    assert not warn_if_exposed(ServerSettings(host="0.0.0.0"), environ={API_KEYS_ENV: KEY})
    assert not warn_if_exposed(ServerSettings(host="127.0.0.1"), environ={})


# -- errors are JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "expected"),
    [
        ("GET", "/nowhere", {}, 404, "Not Found"),
        ("GET", "/api/speak", {}, 405, "Method Not Allowed"),
        ("POST", "/api/speak", {"data": "x" * (1 << 21), "headers": {"Content-Type": "application/json"}}, 413, "size"),
        ("POST", "/api/speak", {"data": '{"text": "Hi."}', "headers": {"Content-Type": "text/plain"}}, 415, "JSON"),
        (
            "POST",
            "/api/speak",
            {"data": "{}", "headers": {"Content-Type": "application/json; charset=bogus"}},
            415,
            "UTF-8",
        ),
        (
            "POST",
            "/api/speak",
            {"data": "{}", "headers": {"Content-Type": "application/json; charset=latin-1"}},
            415,
            "UTF-8",
        ),
        (
            "POST",
            "/api/speak",
            {"data": b'{"text": "\xff"}', "headers": {"Content-Type": "application/json"}},
            400,
            "UTF-8",
        ),
        ("POST", "/api/speak", {"data": "[" * 100_000, "headers": {"Content-Type": "application/json"}}, 400, "deeply"),
        (
            "POST",
            "/api/speak",
            {"data": '{"text": "Hi.", "extra": ' + "[" * 100_000, "headers": {"Content-Type": "application/json"}},
            400,
            "JSON",
        ),
    ],
)
async def test_malformed_requests_get_a_json_error_never_a_500(serve, caplog, method, path, kwargs, status, expected):
    base, _ = await serve()
    async with aiohttp.ClientSession() as http:
        got, headers, data = await request(http, method, base + path, **kwargs)
    assert got == status and expected in data["error"]
    assert headers["Content-Type"].startswith("application/json")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_clients_share_counts_across_endpoints_and_comes_back(serve):
    base, _ = await serve({"max_streams_per_client": 1})
    async with aiohttp.ClientSession() as http:
        conn = await http.ws_connect(ws(base))
        status, headers, data = await request(http, "POST", base + "/api/speak", json={"text": "Hi."})
        assert status == 429 and "1 of 1" in data["error"] and headers["Retry-After"] == "1"
        assert (await request(http, "GET", base + "/voices"))[0] == 200  # cheap answers are not counted
        speech = {"input": "Hi.", "response_format": "pcm"}
        assert (await request(http, "POST", base + "/v1/audio/speech", json=speech))[0] == 429  # every door
        for cheap in ("/v1/models", "/v1/audio/voices"):
            assert (await request(http, "GET", base + cheap))[0] == 200
        await conn.close()
        await asyncio.sleep(0.05)
        assert (await request(http, "POST", base + "/api/speak", json={"text": "Hi."}))[0] == 200


#: Every WebSocket protocol's path: each is a door that must be guarded like the others.
WS_PATHS = ["/ws/stream", "/ws/tts", "/ws/tts/live", "/ws/kokorox", "/"]


@pytest.mark.parametrize("path", WS_PATHS)
async def test_every_websocket_protocol_wants_a_key_an_allowed_origin_and_a_free_share(serve, path):
    base, app = await serve({"api_keys": [KEY], "max_streams_per_client": 1})
    url = base.replace("http://", "ws://") + path
    async with aiohttp.ClientSession() as http:
        for headers, status in [
            ({}, 401),
            ({"X-API-Key": "wrong"}, 401),
            ({"X-API-Key": KEY, "Origin": "https://evil.example"}, 403),
        ]:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers=headers)
            assert refused.value.status == status
        assert app[PIPELINE].active_streams == 0  # none of them opened a stream
        held = await http.ws_connect(url, headers={"X-API-Key": KEY})
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={"X-API-Key": KEY})
        assert refused.value.status == 429  # the share is counted across protocols
        status, _, _ = await request(
            http, "POST", base + "/v1/audio/speech", json={"input": "Hi."}, headers={"X-API-Key": KEY}
        )
        assert status == 429
        await held.close()


@pytest.mark.parametrize("path", WS_PATHS)
async def test_max_streams_caps_every_protocol_together(serve, path):
    base, app = await serve({"max_streams": 1})
    ws_base = base.replace("http://", "ws://")
    async with aiohttp.ClientSession() as http:
        held = await http.ws_connect(ws_base + ("/ws/tts" if path == "/ws/stream" else "/ws/stream"))
        await asyncio.sleep(0.05)
        assert app[PIPELINE].active_streams == 1
        refused = await http.ws_connect(ws_base + path)
        msg = await refused.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013  # try again later
        status, _, data = await request(http, "POST", base + "/v1/audio/speech", json={"input": "Hi."})
        assert status == 503 and "busy" in data["error"]["message"]
        await held.close()
