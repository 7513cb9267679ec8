"""Attachment downloads stop at the size cap and the time limit, against a real local server."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from bot.downloads import download
from generation.inputs import UploadError


@pytest.fixture
async def server():
    stall = asyncio.Event()

    async def small(request):
        return web.Response(body=b"x" * 1000)

    async def endless(request):  # no Content-Length, streams far past any cap
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b"y" * 65536)
        return response

    async def slow(request):
        await stall.wait()
        return web.Response(body=b"late")

    async def gone(request):
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow", slow)
    app.router.add_get("/gone", gone)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{port}"
    stall.set()
    await runner.cleanup()


async def test_download_within_the_cap(server):
    session, base = server
    assert await download(session, f"{base}/small", "a.png", max_bytes=2000) == b"x" * 1000


async def test_stops_at_the_cap_without_content_length(server):
    session, base = server
    with pytest.raises(UploadError, match="big.png is larger than"):
        await download(session, f"{base}/endless", "big.png", max_bytes=200_000)


async def test_time_limit_and_http_errors(server):
    session, base = server
    with pytest.raises(UploadError, match="longer than"):
        await download(session, f"{base}/slow", "slow.png", timeout_s=0.5)
    with pytest.raises(UploadError, match="HTTP 404"):
        await download(session, f"{base}/gone", "gone.png")
