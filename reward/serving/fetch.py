"""Fetching image URLs (`--allow_urls`) without opening the server to SSRF or starving other requests.

* Every address a host name resolves to is checked before any connection: loopback, private, link-local, multicast,
  reserved, unspecified and other non-global addresses are refused unless `--url_allowlist` names the host or a
  network holding the address. The connection goes to the checked address (the name is not resolved twice, so DNS
  rebinding cannot swap it), with the `Host` header and TLS server name of the URL.
* Redirects are not followed; anything but HTTP 200 fails. Proxies from the environment are ignored.
* Every failure (refused address, DNS, connection, HTTP status, too large, too slow) is the same generic error, so the
  server cannot be used to map a network.
* A request's fetches share one total deadline (`url_timeout_s`, waiting for a slot included); at most
  `max_concurrent_fetches` run at once, in the event loop: a slow remote holds no parsing thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpx

from reward.serving.api import RequestError
from reward.serving.images import ImagePolicy

FETCH_FAILED = ("the image URL could not be fetched (refused address, unreachable, not HTTP 200, larger than the "
                "limit or slower than the deadline)")  # fmt: skip

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Failed(Exception):
    """Any reason a fetch failed (kept for logs, never sent to the client)."""


def parse_allowlist(entries: list[str]) -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """(host names, networks) of `--url_allowlist`: each entry is a CIDR / address or a host name."""
    hosts, networks = set(), []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if not entry or "/" in entry or ":" in entry:
                raise ValueError(f"url_allowlist entry {entry!r} is neither a host name nor a CIDR") from None
            hosts.add(entry.lower().rstrip("."))
    return hosts, networks


def is_public(ip: Address) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged as its IPv4 address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    internal = (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified)  # fmt: skip
    return ip.is_global and not internal


class UrlFetcher:
    """Fetches a request's image URLs under `policy` (one instance per server, used from its event loop)."""

    def __init__(self, policy: ImagePolicy):
        self.policy = policy
        self._hosts, self._networks = parse_allowlist(policy.url_allowlist)
        self._slots: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None  # one for the server: its TLS context is costly to build

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def allowed(self, host: str, ip: Address) -> bool:
        if host.lower().rstrip(".") in self._hosts:
            return True
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return is_public(ip) or any(a in net for net in self._networks for a in (ip, mapped) if a is not None)

    async def fetch_all(self, urls: dict[str, str], max_total_bytes: int) -> dict[str, bytes]:
        """The bytes of each URL (`urls` maps each to the item it is for, named in the error), within one deadline
        and `max_total_bytes` in all. Raises `RequestError` naming the first item whose URL failed."""
        if not urls:
            return {}
        if self._client is None:
            self._slots = asyncio.Semaphore(self.policy.max_concurrent_fetches)
            self._client = httpx.AsyncClient(timeout=self.policy.url_timeout_s, follow_redirects=False,
                                             trust_env=False)  # fmt: skip
        total = [0]
        tasks = {url: asyncio.create_task(self._fetch(url, total, max_total_bytes)) for url in urls}
        out, where = {}, None
        try:
            async with asyncio.timeout(self.policy.url_timeout_s):
                for url, task in tasks.items():
                    where = urls[url]
                    out[url] = await task
        except Exception:  # any failure (refused, DNS, TLS, HTTP, invalid URL, too large, too slow) reads the same
            raise RequestError(400, "image_fetch_failed", FETCH_FAILED, where) from None
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        return out

    async def _fetch(self, url: str, total: list[int], max_total: int) -> bytes:
        async with self._slots:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
            if not host:
                raise _Failed("no host")
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
            if not addresses or not all(self.allowed(host, ip) for ip in addresses):
                raise _Failed(f"refused address among {addresses}")
            ip = addresses[0]
            netloc = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
            target = parts._replace(netloc=netloc).geturl()
            headers = {"Host": parts.netloc.rpartition("@")[2]}
            data = bytearray()
            async with self._client.stream("GET", target, headers=headers, extensions={"sni_hostname": host}) as r:
                if r.status_code != 200:
                    raise _Failed(f"HTTP {r.status_code}")
                async for chunk in r.aiter_bytes():
                    data += chunk
                    total[0] += len(chunk)
                    if len(data) > self.policy.max_image_bytes or total[0] > max_total:
                        raise _Failed("too large")
            return bytes(data)
