"""The bench's load generators, in this process, on asyncio.

- `closed_loop_get`: C keep-alive connections each sending the next GET as soon as the last one
  is answered, for a fixed time. It writes and parses HTTP/1.1 itself (no client library per
  request): on a 2-core machine the load generator shares the CPU with the server, so it must
  cost a small fraction of what a request costs the server (its CPU share is reported).
- `read_sse`: the server-sent events of a stream, as (event, data) pairs, on aiohttp.
- `cpu_seconds`: CPU used by a process tree, to say where the time went.
"""
from __future__ import annotations

import asyncio
import json
import resource
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp
import psutil


@dataclass
class LoadResult:
    seconds: float
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)
    client_cpu_seconds: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def _one_connection(host: str, port: int, request: bytes, until: float, count_from: float,
                          result: LoadResult) -> None:
    reader = writer = None
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            sent = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
            if "content-length" not in headers:
                raise RuntimeError(f"answer without Content-Length: {lines[0]}")
            body = await reader.readexactly(int(headers["content-length"]))
            done = time.monotonic()
            if done >= count_from:
                if status == 200:
                    result.ok += 1
                    result.latencies.append(done - sent)
                else:
                    result.errors += 1
                    result.first_error = result.first_error or f"{status}: {body[:200]!r}"
            if headers.get("connection", "").lower() == "close":
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, RuntimeError, ValueError) as err:
            result.errors += 1
            result.first_error = result.first_error or f"{type(err).__name__}: {err}"
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


async def _closed_loop(url_host: str, port: int, path: str, headers: dict[str, str], concurrency: int,
                       seconds: float, warmup: float) -> LoadResult:
    lines = [f"GET {path} HTTP/1.1", f"Host: {url_host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    start = time.monotonic()
    count_from = start + warmup
    until = count_from + seconds
    result = LoadResult(seconds=seconds)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(_one_connection(url_host, port, request, until, count_from, result)
                           for _ in range(concurrency)))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.client_cpu_seconds = (after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime) \
        * seconds / max(1e-9, time.monotonic() - start)  # the share of it in the counted window
    return result


def closed_loop_get(base_url: str, path: str, headers: dict[str, str], concurrency: int, seconds: float,
                    warmup: float = 0.5) -> LoadResult:
    """Requests/s a server answers to `concurrency` clients that wait for each answer."""
    host, port = base_url.split("://", 1)[1].rsplit(":", 1)
    return asyncio.run(_closed_loop(host, int(port), path, headers, concurrency, seconds, warmup))


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and their children."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total


def http_session(limit: int = 0) -> aiohttp.ClientSession:
    """An aiohttp session with no cap on connections (the bench decides how many are open)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))


async def read_sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event name, decoded data) of a server-sent events response; comments are skipped."""
    name, data = "message", []
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    yield name, json.loads(text)
                except ValueError:
                    yield name, text
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
