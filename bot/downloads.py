"""Every URL Pintor fetches (members' attachments, image prompts' links) goes through `Fetcher.fetch`:
only from the hosts an admin allows, over https, never from an address inside the server's
network (checked at each redirect, on the very addresses it connects to), with a size cap and a
total time limit, whatever the sender or the declared size says.

Why each rule (OWASP's Server-Side Request Forgery Prevention Cheat Sheet): a link a member
pastes must not make the bot read its own network (a cloud's metadata service at
169.254.169.254, a database on 10.x, an admin page on 127.0.0.1), by its address, by a name that
resolves there, or by a redirect; and a host that answers slowly or endlessly must not hold a
slot or fill the memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from generation.inputs import MAX_UPLOAD_BYTES, UploadError

if TYPE_CHECKING:  # aiohttp ≥ 3.10 names the resolver's results; the floor (3.9) returns plain dicts
    from aiohttp.abc import ResolveResult

DOWNLOAD_TIMEOUT_S = 20.0  # the whole fetch, redirects and body included
CHUNK_BYTES = 64 * 1024
MAX_REDIRECTS = 3  # Discord's CDN answers directly; a few hops leave room for a mirror
# Discord's attachment hosts (a message's attachment `url` and `proxy_url`)
DISCORD_ATTACHMENT_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(UploadError):
    """A URL Pintor will not fetch, or a fetch that failed; str(err) names the file or link and
    says why, for the member."""


class AddressRefused(OSError):
    """A host name resolved to an address Pintor never connects to (raised by the resolver, so
    that aiohttp hands it back inside its ClientConnectorError)."""


def refused_address(address: str) -> str | None:
    """Why Pintor never connects to `address` (an IPv4 or IPv6 address as text): "private",
    "loopback", "link-local", "multicast", "reserved", "not a public address"; None for a public
    one. IPv4 addresses inside IPv6 (::ffff:10.0.0.1, 6to4, Teredo) are judged as the IPv4 one.
    Raises ValueError for text that is not an address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is not part of it
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            return refused_address(str(inner))
    for why, hit in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                     ("multicast", ip.is_multicast), ("private", ip.is_private),
                     ("reserved", ip.is_reserved or ip.is_unspecified)):
        if hit:
            return why
    return None if ip.is_global else "not a public address"  # e.g. 100.64.0.0/10 (carrier-grade NAT)


def _host(url: URL) -> str:
    return (url.host or "").lower().rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class FetchPolicy:
    """Where and how much Pintor fetches. `hosts`: the host names fetched over https on port
    443 at public addresses only; `local_hosts`: host names (or addresses) also fetched over
    plain http, on any port, at any address: the Discord emulator in tests, a mirror on the
    admin's own network. Names compare in lower case, without a trailing dot; no wildcards."""

    hosts: frozenset[str] = frozenset(DISCORD_ATTACHMENT_HOSTS)
    local_hosts: frozenset[str] = frozenset()
    max_bytes: int = MAX_UPLOAD_BYTES
    timeout_s: float = DOWNLOAD_TIMEOUT_S
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def of(cls, hosts: Iterable[str], local_hosts: Iterable[str] = (), **limits: Any) -> FetchPolicy:
        """A policy from host lists as an admin writes them (any case, trailing dots, blanks)."""
        def clean(names: Iterable[str]) -> frozenset[str]:
            return frozenset(n.strip().lower().rstrip(".") for n in names if n.strip())
        return cls(hosts=clean(hosts), local_hosts=clean(local_hosts), **limits)

    def check(self, url: str | URL, name: str) -> URL:
        """The URL, parsed, if Pintor may fetch it: its scheme, host and port (not yet its
        addresses: the resolver checks those as it connects). Raises FetchError naming `name`
        (what the member sent: a file name or the link) and the rule it breaks."""
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (ValueError, TypeError):
            raise FetchError(f"{name} is not a link Pintor can read.") from None
        host = _host(parsed)
        if parsed.scheme not in ("http", "https") or not host:
            raise FetchError(f"{name} is not an http(s) link.")
        if parsed.user is not None or parsed.password is not None:
            raise FetchError(f"{name}: links with a user name or password are not fetched.")
        if host in self.local_hosts:
            return parsed
        if host not in self.hosts:
            allowed = ", ".join(sorted(self.hosts)) or "none"
            raise FetchError(f"{name}: Pintor fetches pictures only from the hosts its admin allows ({allowed}), "
                             f"not from {host}. Upload the picture instead.")
        if parsed.scheme != "https" or parsed.port != 443:
            raise FetchError(f"{name}: Pintor fetches from {host} over https only (port 443).")
        if _is_ip(host) and (why := refused_address(host)):
            raise FetchError(f"{name}: {host} is a {why} address; Pintor never fetches from one.")
        return parsed


class CheckedResolver(AbstractResolver):
    """Resolves with `inner` (aiohttp's default resolver), then refuses the whole answer when
    any address is not public, unless the host is one of the policy's `local_hosts`. aiohttp
    connects only to the addresses the resolver returns, so the address checked is the address
    connected to: no second lookup that a short-lived DNS answer could point elsewhere (DNS
    rebinding). (aiohttp does not ask the resolver for an address written in the URL:
    FetchPolicy.check judges those.)"""

    def __init__(self, policy: FetchPolicy, inner: AbstractResolver | None = None):
        self.policy = policy
        self.inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if self.inner is None:
            self.inner = aiohttp.ThreadedResolver()
        found = await self.inner.resolve(host, port, family)
        if host.lower().rstrip(".") in self.policy.local_hosts:
            return found
        for result in found:
            why = refused_address(result["host"])
            if why is not None:
                raise AddressRefused(f"{host} resolves to a {why} address ({result['host']}); "
                                     "Pintor never fetches from one.")
        return found

    async def close(self) -> None:
        if self.inner is not None:
            await self.inner.close()


@dataclass
class Fetcher:
    """The one way Pintor fetches a URL (`fetch`). Holds one aiohttp session, made on first use
    in the running event loop; `close` it when done. `resolver`: what turns names into
    addresses before they are checked (aiohttp's threaded resolver; tests give their own)."""

    policy: FetchPolicy = field(default_factory=FetchPolicy)
    resolver: AbstractResolver | None = None
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=CheckedResolver(self.policy, self.resolver),
                                             use_dns_cache=False)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  trust_env=False)  # no proxy from the environment
        return self._session

    async def fetch(self, url: str, name: str) -> bytes:
        """The bytes at `url` (what the member sent, called `name` in messages).

        Follows at most policy.max_redirects redirects itself, checking each hop's URL
        (FetchPolicy.check) and the addresses its host resolves to (CheckedResolver). Reads at
        most policy.max_bytes (a larger declared Content-Length is refused before reading; the
        body is counted as it streams, so a lying or missing length changes nothing) within
        policy.timeout_s for the whole fetch. Raises FetchError (an UploadError: its text is for
        the member) for a refused URL or address, a redirect without a target, too many
        redirects, an HTTP status other than 200, too many bytes, too slow, or a failed
        connection."""
        policy = self.policy
        target = policy.check(url, name)
        try:
            async with asyncio.timeout(policy.timeout_s):
                for _ in range(policy.max_redirects + 1):
                    async with self._client().get(target, allow_redirects=False) as response:
                        if response.status in REDIRECTS:
                            location = response.headers.get("Location")
                            if not location:
                                raise FetchError(f"{name} could not be downloaded (a redirect that leads nowhere).")
                            target = policy.check(target.join(URL(location)), name)
                            continue
                        if response.status != 200:
                            raise FetchError(f"{name} could not be downloaded (HTTP {response.status}).")
                        return await self._body(response, name)
                raise FetchError(f"{name} could not be downloaded: more than {policy.max_redirects} redirects.")
        except TimeoutError:
            raise FetchError(f"{name} took longer than {policy.timeout_s:g} s to download.") from None
        except aiohttp.ClientConnectorError as err:  # the resolver's refusal arrives inside it
            if isinstance(err.os_error, AddressRefused):
                raise FetchError(f"{name}: {err.os_error}") from None
            raise FetchError(f"{name} could not be downloaded (its host could not be reached).") from None
        except aiohttp.InvalidURL:
            raise FetchError(f"{name} is not a link Pintor can read.") from None
        except aiohttp.ClientError as err:
            raise FetchError(f"{name} could not be downloaded ({type(err).__name__}).") from None

    async def _body(self, response: aiohttp.ClientResponse, name: str) -> bytes:
        limit = self.policy.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise _too_large(name, limit)
        data = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            data += chunk
            if len(data) > limit:
                raise _too_large(name, limit)
        return bytes(data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _too_large(name: str, max_bytes: int) -> FetchError:
    return FetchError(f"{name} is larger than {max_bytes / 1024**2:.3g} MB.")
