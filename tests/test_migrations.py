"""Migrations on a populated database under load: a database of the first release's schema with
100,000 interactions is brought up to this release's while requests keep writing and reading,
and while a long transaction holds a row of the busiest table. No request waits a second
(a waiting migration steps back after LOCK_TIMEOUT instead of holding the queue), and the
first release's writes still work at every step (a new column has a default)."""
from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from controlplane.storage import migrate


@pytest.fixture()
def populated(services):
    """A database at migration 1 with 1,000 users, 10,000 sessions and 100,000 interactions."""
    name = f"populated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services["database_url"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = services["database_url"].rsplit("/", 1)[0] + "/" + name
    assert migrate.apply_migrations(url, upto=1) == ["0001_init.sql"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email) SELECT 'u' || g, 'u' || g || '@example.com'"
                     " FROM generate_series(1, 1000) g")
        conn.execute("INSERT INTO sessions (id, mode, type, model_name, owner) SELECT 's' || g, 'inference', 'text',"
                     " 'helix/tiny-chat', 'u' || (g % 1000 + 1) FROM generate_series(1, 10000) g")
        conn.execute("INSERT INTO interactions (id, session_id, seq, creator, mode, state, message, finished)"
                     " SELECT 'i' || g, 's' || (g % 10000 + 1), g / 10000,"
                     " CASE WHEN g % 2 = 0 THEN 'user' ELSE 'system' END, 'inference', 'complete',"
                     " repeat('a reply of some length ', 20), g % 50 <> 0 FROM generate_series(1, 100000) g")
        assert conn.execute("SELECT count(*) FROM interactions").fetchone()[0] == 100_000
    return url


def test_migrations_on_100000_interactions_never_stop_requests_for_a_second(populated):
    done, waits, errors = threading.Event(), [], []

    def requests_keep_coming():
        """What the first release's control plane does all along: store a turn, read one back."""
        with psycopg.connect(populated, autocommit=True) as conn:
            n = 0
            while not done.is_set():
                n += 1
                started = time.monotonic()
                try:
                    conn.execute("INSERT INTO interactions (id, session_id, seq, creator, mode, state)"
                                 " VALUES (%s, 's1', %s, 'user', 'inference', 'waiting')", (f"new-{n}", 100 + n))
                    conn.execute("SELECT message FROM interactions WHERE id = %s", (f"i{n}",)).fetchone()
                except psycopg.Error as err:
                    errors.append(f"{type(err).__name__}: {err}")
                waits.append(time.monotonic() - started)
                time.sleep(0.02)

    def a_long_transaction():
        """A writer that keeps a row of interactions for four seconds (a slow request, a report)."""
        with psycopg.connect(populated) as conn:
            conn.execute("UPDATE interactions SET status = 'slow' WHERE id = 'i7'")
            time.sleep(4)
            conn.commit()

    holder = threading.Thread(target=a_long_transaction)
    holder.start()
    time.sleep(0.3)  # the row is held before the migrations begin
    prober = threading.Thread(target=requests_keep_coming)
    prober.start()
    started = time.monotonic()
    try:
        applied = migrate.apply_migrations(populated)
    finally:
        elapsed = time.monotonic() - started
        time.sleep(0.3)
        done.set()
        prober.join()
        holder.join()
    print(f"\n{len(applied)} migrations on 100,000 interactions in {elapsed:.1f}s; {len(waits)} requests meanwhile,"
          f" the longest {max(waits):.2f}s, median {sorted(waits)[len(waits) // 2] * 1000:.0f}ms")
    assert applied and applied[-1] == migrate._migrations()[-1][1]
    assert errors == []
    assert elapsed > 3  # the first migration that needed interactions stepped back until the writer was done
    assert max(waits) < 1.0, sorted(waits)[-5:]
    with psycopg.connect(populated, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM interactions").fetchone()[0] == 100_000 + len(waits)
