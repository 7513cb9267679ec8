"""Every outbound fetch (bot/downloads.py) against a real local server on 127.0.0.1 (allowed
explicitly as a local host for these tests): size caps, a total deadline, and hosts and
addresses refused at every redirect. Names other than 127.0.0.1 resolve through a stand-in
resolver (tests never reach DNS): the addresses are the point, not the names."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from bot.downloads import Fetcher, FetchError, FetchPolicy, refused_address
from generation.inputs import UploadError
from tests.local_http import served as serve_locally

if TYPE_CHECKING:  # not in aiohttp 3.9, Pintor's floor
    from aiohttp.abc import ResolveResult

NAMES = {"pics.test": ["127.0.0.1"], "metadata.test": ["169.254.169.254"], "internal.test": ["10.1.2.3"],
         "mixed.test": ["93.184.216.34", "192.168.0.7"], "v6.test": ["::ffff:127.0.0.1"]}


class StandIn(AbstractResolver):
    """Resolves NAMES; everything else is an unknown name. Records what was asked."""

    def __init__(self):
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in NAMES:
            raise OSError(f"unknown name {host}")
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": 0} for address in NAMES[host]]

    async def close(self) -> None:
        pass


@pytest.fixture
async def server():
    stop = asyncio.Event()
    served: list[str] = []

    async def small(request):
        return web.Response(body=b"x" * 1000)

    async def endless(request):  # no Content-Length, streams far past any cap
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client hangs up at its cap
            for _ in range(1000):
                await response.write(b"y" * 65536)
        return response

    async def drip(request):  # a byte every 50 ms, for ever: each read is quick, the whole is not
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while not stop.is_set():
                await response.write(b"z")
                await asyncio.sleep(0.05)
        return response

    async def slow(request):
        await stop.wait()
        return web.Response(body=b"late")

    async def declared_huge(request):
        response = web.StreamResponse(headers={"Content-Length": str(50 * 1024 * 1024)})
        await response.prepare(request)
        await response.write(b"a" * 1000)
        return response

    async def gone(request):
        return web.Response(status=404)

    async def redirect(request):
        served.append(request.query["to"])
        raise web.HTTPFound(request.query["to"])

    async def loop(request):
        raise web.HTTPFound("/loop")

    async def nowhere(request):
        return web.Response(status=302)

    app = web.Application()
    for path, handler in (("/small", small), ("/endless", endless), ("/drip", drip), ("/slow", slow),
                          ("/declared-huge", declared_huge), ("/gone", gone), ("/redirect", redirect),
                          ("/loop", loop), ("/nowhere", nowhere)):
        app.router.add_get(path, handler)
    async with serve_locally(app) as base:
        yield base, served
        stop.set()


@pytest.fixture
async def lying_server():
    """A raw HTTP server whose Content-Length lies: /more says 100 bytes and sends 5 MB, /less
    says 100 000 and sends 10, then hangs up."""
    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        more = head.startswith(b"GET /more")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                     % (100 if more else 100_000))
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(80 if more else 1):
                writer.write(b"L" * (65536 if more else 10))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()


@pytest.fixture
async def fetcher():
    resolver = StandIn()
    made = Fetcher(FetchPolicy.of(["pics.test", "metadata.test", "internal.test", "mixed.test", "v6.test",
                                   "10.0.0.1", "cdn.discordapp.com"], ["127.0.0.1"],
                                  max_bytes=200_000, timeout_s=2.0), resolver)
    yield made
    await made.close()


async def test_a_file_within_the_cap(fetcher, server):
    base, _ = server
    assert await fetcher.fetch(f"{base}/small", "a.png") == b"x" * 1000


async def test_size_caps_streamed_and_declared(fetcher, server):
    base, _ = server
    with pytest.raises(FetchError, match="big.png is larger than 0.191 MB"):
        await fetcher.fetch(f"{base}/endless", "big.png")  # no Content-Length: counted as it streams
    with pytest.raises(FetchError, match="huge.png is larger than"):
        await fetcher.fetch(f"{base}/declared-huge", "huge.png")  # refused on the header alone


async def test_a_lying_content_length_is_refused(fetcher, lying_server):
    # more bytes than declared: aiohttp's parser refuses the data after the declared body
    with pytest.raises(FetchError, match="^more.png could not be downloaded"):
        await fetcher.fetch(f"{lying_server}/more", "more.png")
    # fewer: the body is incomplete
    with pytest.raises(FetchError, match="^less.png could not be downloaded"):
        await fetcher.fetch(f"{lying_server}/less", "less.png")


async def test_a_total_deadline_not_a_per_read_one(fetcher, server):
    base, _ = server
    started = time.monotonic()
    with pytest.raises(FetchError, match="drip.png took longer than 2 s"):
        await fetcher.fetch(f"{base}/drip", "drip.png")  # a byte every 50 ms never idles a read
    assert time.monotonic() - started < 3.5
    with pytest.raises(FetchError, match="longer than"):
        await fetcher.fetch(f"{base}/slow", "slow.png")


async def test_http_errors_and_redirects_without_a_target(fetcher, server):
    base, _ = server
    with pytest.raises(FetchError, match="gone.png could not be downloaded \\(HTTP 404\\)"):
        await fetcher.fetch(f"{base}/gone", "gone.png")
    with pytest.raises(FetchError, match="leads nowhere"):
        await fetcher.fetch(f"{base}/nowhere", "x.png")


async def test_a_redirect_within_the_allowed_hosts_is_followed(fetcher, server):
    base, _ = server
    assert await fetcher.fetch(f"{base}/redirect?to={base}/small", "a.png") == b"x" * 1000


@pytest.mark.parametrize(("target", "why"), [
    ("https://evil.example/x.png", "not from evil.example"),
    ("http://169.254.169.254/latest/meta-data/", "not from 169.254.169.254"),  # the cloud's metadata service
    ("http://10.0.0.2/", "not from 10.0.0.2"),
    ("http://localhost:8080/", "not from localhost"),
    ("https://metadata.test/x.png", "metadata.test resolves to a link-local address \\(169.254.169.254\\)"),
    ("https://internal.test/x.png", "internal.test resolves to a private address \\(10.1.2.3\\)"),
    ("https://pics.test/x.png", "pics.test resolves to a loopback address \\(127.0.0.1\\)"),
    ("https://mixed.test/x.png", "mixed.test resolves to a private address \\(192.168.0.7\\)"),
    ("https://v6.test/x.png", "v6.test resolves to a loopback address"),
    ("https://10.0.0.1/x.png", "10.0.0.1 is a private address"),  # even where an admin listed it
    ("http://cdn.discordapp.com/x.png", "over https only"),
    ("https://cdn.discordapp.com:8443/x.png", "over https only \\(port 443\\)"),
    ("https://user:secret@cdn.discordapp.com/x.png", "user name or password"),
    ("file:///etc/passwd", "not an http\\(s\\) link"),
])
async def test_a_redirect_to_a_refused_host_or_address_is_not_followed(fetcher, server, target, why):
    base, served = server
    with pytest.raises(FetchError, match=f"^cat.png: .*{why}|^cat.png is {why}"):
        await fetcher.fetch(f"{base}/redirect?to={target}", "cat.png")
    assert served == [target]  # the first hop was served; the second was never asked for


async def test_the_same_rules_for_the_first_url(fetcher):
    for url, why in (("https://metadata.test/x", "link-local"), ("https://evil.example/x", "evil.example"),
                     ("http://[::1]/x", "::1")):
        with pytest.raises(FetchError, match=why):
            await fetcher.fetch(url, "x")


async def test_redirect_loops_stop(fetcher, server):
    base, _ = server
    with pytest.raises(FetchError, match="more than 3 redirects"):
        await fetcher.fetch(f"{base}/loop", "loop.png")


async def test_fetch_errors_are_upload_errors_for_the_member():
    assert issubclass(FetchError, UploadError)  # bot.intake.USER_ERRORS answers them


def test_refused_addresses():
    assert refused_address("8.8.8.8") is None and refused_address("2606:4700::1111") is None
    assert {a: refused_address(a) for a in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1",
                                            "169.254.169.254", "224.0.0.1", "0.0.0.0", "240.0.0.1",
                                            "::1", "fe80::1%eth0", "fc00::1", "::ffff:10.0.0.1",
                                            "2002:7f00:1::", "100.64.0.1")} == {
        "127.0.0.1": "loopback", "10.0.0.1": "private", "172.16.0.1": "private", "192.168.1.1": "private",
        "169.254.169.254": "link-local", "224.0.0.1": "multicast", "0.0.0.0": "reserved",
        "240.0.0.1": "reserved", "::1": "loopback", "fe80::1%eth0": "link-local", "fc00::1": "private",
        "::ffff:10.0.0.1": "private", "2002:7f00:1::": "loopback", "100.64.0.1": "carrier-grade NAT"}


# Every block that is not public, by a first, a middle and a last address of it where those
# differ: Python 3.11's ipaddress calls fec0::/10, 3fff::/20, 5f00::/16, 192.0.0.9 and
# 192.88.99.0/24 global, so only a table of its own keeps them out.
NOT_PUBLIC = {
    "0.0.0.0/8": "reserved", "10.0.0.0/8": "private", "100.64.0.0/10": "carrier-grade NAT",
    "127.0.0.0/8": "loopback", "169.254.0.0/16": "link-local", "172.16.0.0/12": "private",
    "192.0.0.0/24": "reserved", "192.0.2.0/24": "documentation", "192.88.99.0/24": "reserved",
    "192.168.0.0/16": "private", "198.18.0.0/15": "benchmarking", "198.51.100.0/24": "documentation",
    "203.0.113.0/24": "documentation", "224.0.0.0/4": "multicast", "240.0.0.0/4": "reserved",
    "::/128": "reserved", "::1/128": "loopback", "64:ff9b:1::/48": "private", "100::/64": "reserved",
    "2001:2::/48": "reserved", "2001:10::/28": "reserved", "2001:20::/28": "reserved",
    "2001:db8::/32": "documentation", "3fff::/20": "documentation", "5f00::/16": "reserved",
    "fc00::/7": "private", "fe80::/10": "link-local", "fec0::/10": "site-local", "ff00::/8": "multicast",
    # outside 2000::/3, the only IPv6 block handed out for public use
    "::2/127": "reserved", "100:1::/32": "reserved", "4000::/3": "reserved", "e000::/4": "reserved",
    "fe00::/9": "reserved",
}


@pytest.mark.parametrize("block", sorted(NOT_PUBLIC))
def test_every_address_of_every_non_public_block_is_refused(block):
    network = ipaddress.ip_network(block)
    for address in {network[0], network[network.num_addresses // 2], network[-1]}:
        assert refused_address(str(address)) == NOT_PUBLIC[block], address


@pytest.mark.parametrize(("address", "why"), [
    ("fec0::1", "site-local"), ("fec0:1:2:3::4", "site-local"), ("feff:ffff::1", "site-local"),
    ("FEC0::1%eth0", "site-local"),
    # IPv4 inside IPv6 is judged as the IPv4 address, whatever the IPv6 block says
    ("64:ff9b::a00:1", "private"), ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("::ffff:100.64.0.1", "carrier-grade NAT"), ("2002:c0a8:101::1", "private"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo, client 10.0.0.1 (its bits inverted)
    ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated): no public address looks like this
])
def test_site_local_and_ipv4_inside_ipv6_are_refused(address, why):
    assert refused_address(address) == why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "162.159.128.233",
                                     "2606:4700::1111", "2a00:1450:4001:80b::200e", "2001:4860:4860::8888",
                                     "64:ff9b::808:808",  # 8.8.8.8 through NAT64: a public address
                                     "::ffff:1.1.1.1", "2002:808:808::1"])
def test_public_addresses_pass(address):
    assert refused_address(address) is None


async def test_a_site_local_address_is_refused_when_resolved_and_when_written(fetcher):
    NAMES["site.test"] = ["2001:4860:4860::8888", "fec0::1"]  # one bad address refuses the whole answer
    try:
        refusing = Fetcher(FetchPolicy.of(["site.test", "fec0::2"]), StandIn())
        for url, why in (("https://site.test/x.png", "site.test resolves to a site-local address \\(fec0::1\\)"),
                         ("https://[fec0::2]/x.png", "fec0::2 is a site-local address")):
            with pytest.raises(FetchError, match=why):
                await refusing.fetch(url, "x.png")
        await refusing.close()
    finally:
        del NAMES["site.test"]


@pytest.fixture
async def raw_server():
    """A raw HTTP server that answers each request with the bytes its path names in RAW, so a
    test can send what aiohttp's own server refuses to: a Location that is no URL, a header
    that is not HTTP."""
    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        writer.write(RAW[path])
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


def _redirect_to(location: bytes) -> bytes:
    return b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


MALFORMED_LOCATIONS = {  # what yarl cannot read as a URL, each a different way
    "/bracket": b"http://[::1",  # an IPv6 address never closed
    "/port-too-big": b"http://127.0.0.1:99999/x.png",
    "/port-negative": b"https://cdn.discordapp.com:-1/x.png",
    "/port-words": b"http://127.0.0.1:eighty/x.png",
    "/relative-bracket": b"//[fe80::1/x.png",
    "/not-v6": b"http://[1.2.3.4]/x.png",  # an IPv4 address in brackets
    "/no-host": b"http://:80/x.png",
    "/idna-empty": b"https://xn--/x.png",  # an IDNA label that decodes to nothing
    "/idna-bad": "https://bad\u2028host.test/x.png".encode(),  # a character IDNA refuses
    "/not-utf8": b"https://\xff\xfe.test/x.png",
}
RAW = {path: _redirect_to(location) for path, location in MALFORMED_LOCATIONS.items()} | {
    "/bad-status": b"HTTP/1.1 abc Nope\r\n\r\n",
    "/bad-header": b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nxx",
    "/not-http": b"\x00\x01\x02 hello\r\n\r\n",
    "/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n",  # hangs up inside the headers
}


@pytest.mark.parametrize("path", sorted(MALFORMED_LOCATIONS))
async def test_a_redirect_to_a_malformed_location_is_a_fetch_refusal(fetcher, raw_server, path):
    with pytest.raises(FetchError, match="^cat.png could not be downloaded \\(a redirect to a link that is not valid\\)"
                                         "\\.$") as refused:
        await fetcher.fetch(f"{raw_server}{path}", "cat.png")
    # the server's text is not echoed to the member
    assert MALFORMED_LOCATIONS[path].decode(errors="replace") not in str(refused.value)


@pytest.mark.parametrize("path", ["/bad-status", "/bad-header", "/not-http", "/cut"])
async def test_an_answer_that_is_not_http_is_a_fetch_refusal(fetcher, raw_server, path):
    with pytest.raises(FetchError, match="^cat.png could not be downloaded"):
        await fetcher.fetch(f"{raw_server}{path}", "cat.png")


@pytest.mark.parametrize("url", ["https://xn--/x.png", "https://cdn.discordapp.com:99999/x.png",
                                 "https://[::1/x.png", "https://cdn.discordapp.com:abc/x.png",
                                 "https://bad\u2028host.test/x.png"])
async def test_a_malformed_first_link_is_a_fetch_refusal(fetcher, url):
    with pytest.raises(FetchError, match="^x is not a link Pintor can read\\.$"):
        await fetcher.fetch(url, "x")
