"""The demo page's routes over HTTP: what is served, its headers, and the guards in front of it.

The page itself is exercised in a real browser by tests/browser/test_demo_page.py.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
import websockets

from tts_server.demo import ASSETS, CONTENT_SECURITY_POLICY, PAGE_PATHS, content_security_policy

KEY = "demo-key-0123456789abcdef"


@pytest.fixture
def espeak():
    from tts_server.engines.espeak import EspeakEngine

    return EspeakEngine()


async def test_both_page_paths_serve_the_page_and_every_asset_with_a_self_only_policy(make_server, espeak):
    base, _ = await make_server(espeak)
    host = base.removeprefix("http://")
    policy = content_security_policy(host)
    assert f"connect-src 'self' ws://{host} wss://{host};" in policy
    async with aiohttp.ClientSession() as http:
        pages = []
        for path in PAGE_PATHS:
            async with http.get(base + path) as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert r.headers["Content-Security-Policy"] == policy
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                pages.append(await r.text())
        assert pages[0] == pages[1]
        for asset in ASSETS:  # every file the page names is served, and nothing from elsewhere
            assert asset in pages[0] or asset == "/demo/player-worklet.js"
            async with http.get(base + asset) as r:
                assert r.status == 200 and r.headers["Content-Security-Policy"] == policy
                assert r.content_type == ASSETS[asset][1].split(";")[0]
                body = await r.text()
                assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body
        async with http.get(base + "/demo/../app.py") as r:
            assert r.status == 404
    assert "'self'" in CONTENT_SECURITY_POLICY and "*" not in policy and "unsafe" not in policy


@pytest.mark.parametrize("host", ["a.example; script-src *", "x y", "", "host:port"])
def test_a_host_header_that_is_not_a_plain_host_is_not_written_into_the_policy(host):
    assert content_security_policy(host) == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("host", ["localhost:8765", "127.0.0.1", "[::1]:8080", "tts.example.org"])
def test_a_plain_host_is_named_for_the_websocket(host):
    assert f"ws://{host} wss://{host};" in content_security_policy(host)


async def test_with_keys_the_page_needs_none_but_everything_it_uses_does(make_server, espeak):
    base, _ = await make_server(espeak, {"server": {"api_keys": [KEY]}})
    async with aiohttp.ClientSession() as http:
        for path in (*PAGE_PATHS, *ASSETS):
            async with http.get(base + path) as r:
                assert r.status == 200, path
        async with http.get(base + "/voices") as r:  # how the page learns that it must ask
            assert r.status == 401
        async with http.get(base + "/voices", headers={"X-API-Key": KEY}) as r:
            assert r.status == 200
        async with http.post(base + "/", data=b"{}") as r:  # only a plain GET of the page is open
            assert r.status == 401
    ws = base.replace("http://", "ws://")
    for path in ("/", "/ws/stream"):  # an upgrade of / is kokorox-websocket's: it needs the key
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws + path):
                pass
        assert refused.value.response.status_code == 401
    async with websockets.connect(f"{ws}/?api_key={KEY}") as kokorox:
        await kokorox.send(json.dumps({"command": "list_voices"}))
        assert json.loads(await kokorox.recv())["type"] == "voices"


async def test_the_page_obeys_the_host_and_origin_rules(make_server, espeak):
    base, _ = await make_server(espeak)
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/", headers={"Host": "evil.example"}) as r:  # DNS rebinding
            assert r.status == 403
        async with http.get(base + "/", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
    ws = base.replace("http://", "ws://")
    # The page's own WebSocket (same origin) is accepted; another site's is refused.
    async with websockets.connect(ws + "/ws/stream", origin=base) as stream:
        await stream.send(json.dumps({"events": True}))
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws + "/ws/stream", origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403
