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


# Every range of the IANA IPv4 and IPv6 Special-Purpose Address Registries that is not
# globally reachable, and the ranges outside what IANA hands out for public use (IPv4's
# multicast and "future use" blocks; IPv6 outside 2000::/3, where fec0::/10, the deprecated
# site-local block, still routes inside many networks), each with the word a member reads.
# Written out rather than read from ipaddress's is_global/is_private, whose lists change with
# the Python version (3.11 calls fec0::/10 and 3fff::/20 global); those flags are still
# consulted after this table, so an address either of them calls non-public is refused.
# The most specific block comes first: the first match names the reason.
_NOT_PUBLIC: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(block), why) for block, why in (
        # IPv4 (RFC 6890, RFC 1122, RFC 1918, RFC 6598, RFC 3927, RFC 5737, RFC 2544, RFC 5771, RFC 1112)
        ("0.0.0.0/8", "reserved"),  # "this network": 0.0.0.0 reaches the server itself
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),  # shared address space
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),  # a cloud's metadata service
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "reserved"),  # the retired 6to4 relay anycast block
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # future use, and 255.255.255.255 (broadcast)
        # IPv6 (RFC 6890, RFC 4291, RFC 6052, RFC 8215, RFC 6666, RFC 5180, RFC 3849, RFC 9637,
        # RFC 9602, RFC 4193, RFC 3879); IPv4 inside IPv6 is judged before this table
        ("::/128", "reserved"),  # unspecified
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "private"),  # NAT64 for local use
        ("100::/64", "reserved"),  # discard-only
        ("2001::/23", "reserved"),  # IETF protocol assignments (Teredo, 2001::/32, judged as its IPv4)
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "reserved"),  # SRv6 segment identifiers
        ("fc00::/7", "private"),  # unique local addresses
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ))
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix: an IPv4 address in the last 32 bits


def refused_address(address: str) -> str | None:
    """Why Pintor never connects to `address` (an IPv4 or IPv6 address as text): "loopback",
    "private", "link-local", "site-local", "multicast", "reserved", "documentation",
    "benchmarking", "carrier-grade NAT" (the first block of _NOT_PUBLIC it is in), or "not a
    public address" (one Python's ipaddress calls non-public that the table does not name);
    None for a public one. Every IPv6 address outside 2000::/3 is "reserved". IPv4 addresses
    inside IPv6 (::ffff:10.0.0.1, NAT64's 64:ff9b::a00:1, 6to4, Teredo) are judged as the IPv4
    one. Raises ValueError for text that is not an address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is not part of it
    if isinstance(ip, ipaddress.IPv6Address):
        inner = (ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
                 or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None))
        if inner is not None:
            return refused_address(str(inner))
    for block, why in _NOT_PUBLIC:
        if ip in block:
            return why
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "reserved"
    if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or not ip.is_global):
        return "not a public address"
    return None


def _host(url: URL) -> str:
    return (url.host or "").lower().rstrip(".")


def _redirect_target(current: URL, location: str, name: str) -> URL:
    """The URL a redirect's `location` header names, read against the `current` URL. Raises
    FetchError (not naming the header: it is the server's text) when it is not a URL at all,
    e.g. "http://[::1" or a port of 99999."""
    try:
        joined = current.join(URL(location))
        joined.host, joined.port  # noqa: B018 - yarl reads these lazily: a bad one raises here
    except (ValueError, TypeError):  # UnicodeError included
        raise FetchError(f"{name} could not be downloaded (a redirect to a link that is not valid).") from None
    return joined


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
        try:  # yarl checks a URL's parts lazily: a bad port or IDNA host fails when read
            parsed = url if isinstance(url, URL) else URL(url)
            host, port = _host(parsed), parsed.port
        except (ValueError, TypeError):  # UnicodeError (a host IDNA cannot encode) included
            raise FetchError(f"{name} is not a link Pintor can read.") from None
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
        if parsed.scheme != "https" or port != 443:
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
        the member) for a refused URL or address, a redirect without a valid target, too many
        redirects, an HTTP status other than 200, too many bytes, too slow, a failed
        connection, or an answer that cannot be parsed: every way a fetch can fail."""
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
                            target = policy.check(_redirect_target(target, location, name), name)
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
        except FetchError:
            raise
        except (aiohttp.ClientError, ValueError, OSError) as err:
            # whatever else a hostile or broken server makes aiohttp, yarl or the socket raise
            # (a header or URL they cannot parse, a reset): a failed fetch, never Pintor's fault
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
