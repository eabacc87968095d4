"""HTTP sessions shared by a worker process's threads."""
from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

# What must land (a fine-tune report, an uploaded adapter, a downloaded input): tried 5 times in
# all, 0.2, 0.4, 0.8 and 1.6 s apart, on a lost connection or a 429/5xx answer (a Retry-After is
# obeyed); a 4xx other than 429 is the answer. Every method: these reports replace what they name.
DELIVERY_RETRY = Retry(total=4, backoff_factor=0.2, status_forcelist=(429, 500, 502, 503, 504),
                       allowed_methods=None, raise_on_status=False)


def pooled_session(pool_size: int = 1, retry: Retry | None = None) -> requests.Session:
    """A requests session keeping up to `pool_size` connections per host alive: a text worker
    process runs that many jobs at once, and with requests' default of 10 the rest would open
    and drop a connection per request. `retry` (urllib3's) retries on the adapter; none by default."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, pool_size), max_retries=retry or 0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
