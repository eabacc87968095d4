"""HTTP sessions shared by a worker process's threads."""
from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter


def pooled_session(pool_size: int = 1) -> requests.Session:
    """A requests session keeping up to `pool_size` connections per host alive: a text worker
    process runs that many jobs at once, and with requests' default of 10 the rest would open
    and drop a connection per request."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, pool_size))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
