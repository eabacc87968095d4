"""Fetching a user's URL for a text fine-tune, safely: the runner sits inside the deployment's
network, so a URL must not reach the cloud metadata service or an internal host. `UrlFetcher`
refuses loopback, private, link-local and other non-public addresses (checked on every redirect,
and the connection pinned to the address that was checked, so a second DNS answer cannot differ),
and bounds what one fetch may take: its bytes, its redirects and its time.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses seen through a NAT64 gateway


class FetchError(Exception):
    """A URL that could not be fetched, or was refused; str() names it and says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved, unspecified and shared
    (carrier-grade NAT) addresses, also when an IPv6 address carries one of them inside
    (IPv4-mapped, 6to4, Teredo, NAT64)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if ip.version == 6 and (ip.ipv4_mapped or ip in _NAT64):
        return is_public_address(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip.version == 6 and any(e is not None and not is_public_address(str(e))
                               for e in (ip.sixtofour, ip.teredo[1] if ip.teredo else None)):
        return False
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def resolve_public(host: str, port: int = 80) -> list[str]:
    """The addresses `host` resolves to; FetchError when any of them is not public (a name
    with one public and one private address could be steered to the private one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(host, f"cannot resolve the host ({exc})") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        if not is_public_address(address):
            raise FetchError(host, f"refused: resolves to {address}, a loopback, private, "
                                      "link-local or otherwise non-public address")
    return addresses


class _PinnedAdapter(HTTPAdapter):
    """Connects to the address we checked, not to whatever a second DNS lookup says (DNS
    rebinding), while TLS still sends and verifies the URL's host name."""

    def __init__(self, address: str, hostname: str):
        self.address, self.hostname = address, hostname
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        host_params["host"] = self.address
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = self.hostname
            pool_kwargs["assert_hostname"] = self.hostname
        return host_params, pool_kwargs


class UrlFetcher:
    """Fetches a user-given http(s) URL for data prep, safely.

    Every hop (redirects are followed by hand, at most `max_redirects`) is checked: the host must
    resolve only to public addresses (unless `allow_private`), and the connection goes to the
    checked address. The body is streamed and cut off past `max_bytes`; `timeout` bounds the
    connect and each read, and an overall deadline is checked between reads. Limits: headers are
    bounded only by the per-read timeout; the first resolved address is used, with no fallback to
    the others; proxies from the environment are ignored (a proxy would resolve names itself).
    """

    def __init__(self, allow_private: bool = False, max_bytes: int = 10_000_000,
                 timeout: float = 20.0, max_redirects: int = 5):
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects

    def fetch(self, url: str) -> tuple[str, bytes]:
        """(content type, body) of `url`; FetchError(url, reason) on any failure."""
        deadline = time.monotonic() + self.timeout
        for _ in range(self.max_redirects + 1):
            with self._request(url, deadline) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code >= 400:
                    raise FetchError(url, f"HTTP {response.status_code} {response.reason}")
                return response.headers.get("Content-Type", ""), self._read(url, response, deadline)
        raise FetchError(url, f"too many redirects (more than {self.max_redirects})")

    def _request(self, url: str, deadline: float) -> requests.Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(url, "only http and https URLs can be fetched")
        try:
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise FetchError(url, f"invalid URL ({exc})") from exc
        if not host:
            raise FetchError(url, "the URL has no host")
        address = self._address(url, host, port)
        session = requests.Session()
        session.trust_env = False
        session.mount(f"{parts.scheme}://", _PinnedAdapter(address, host))
        headers = {"Host": parts.netloc.rpartition("@")[2], "Accept-Encoding": "identity",
                   "User-Agent": "helix-dataprep/1"}
        remaining = self._remaining(url, deadline)
        try:
            return session.get(url, headers=headers, stream=True, allow_redirects=False,
                               timeout=(remaining, remaining))
        except requests.RequestException as exc:
            raise FetchError(url, f"request failed ({type(exc).__name__}: {exc})") from exc
        finally:
            session.close()  # the response keeps its own connection until it is closed

    def _address(self, url: str, host: str, port: int) -> str:
        """Where to connect for `host`: its first address once all are checked."""
        if self.allow_private:
            return host
        try:
            return resolve_public(host, port)[0]
        except FetchError as exc:
            raise FetchError(url, exc.reason) from exc

    def _read(self, url: str, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(url, f"larger than {self.max_bytes} bytes ({declared})")
        body = bytearray()
        try:
            while True:
                self._remaining(url, deadline)
                # read1 returns after one socket read, so a trickling server cannot hold one
                # call past the deadline; decoding (if the server compresses anyway) is capped too
                chunk = response.raw.read1(65536, decode_content=True)
                if not chunk:
                    return bytes(body)
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchError(url, f"larger than {self.max_bytes} bytes")
        except FetchError:
            raise
        except Exception as exc:  # urllib3 timeouts and protocol errors
            raise FetchError(url, f"reading the response failed ({type(exc).__name__}: {exc})") from exc

    def _remaining(self, url: str, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(url, f"timed out after {self.timeout} s")
        return remaining
