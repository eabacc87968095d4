"""Every mention of a deleted user in Redis: keys named after their ids (rate-limit counters, RQ
jobs, streamed text, scheduling records) and entries of shared keys that name them (RQ's queues
and registries, the list of scheduling decisions).

Redis is scanned whole, in batches: a user is deleted rarely, and a key that names them in a way
no module here knows of is found all the same."""
from __future__ import annotations

from collections.abc import Iterable

from redis import Redis

BATCH = 1000


def _mentions(value: bytes, needles: tuple[bytes, ...]) -> bool:
    return any(n in value for n in needles)


def remove_mentions(redis: Redis, needles: Iterable[str]) -> int:
    """Deletes the keys whose names contain any of `needles`, and the members of lists, sets,
    sorted sets and hashes that do; returns how many keys and members went."""
    wanted = tuple(n.encode() for n in set(needles) if n)
    removed = 0
    cursor = 0
    while True:
        cursor, keys = redis.scan(cursor, count=BATCH)
        named = [k for k in keys if _mentions(k, wanted)]
        if named:
            removed += redis.delete(*named)
        others = [k for k in keys if not _mentions(k, wanted)]
        with redis.pipeline(transaction=False) as pipe:
            for key in others:
                pipe.type(key)
            kinds = pipe.execute()
        strings = [key for key, kind in zip(others, kinds) if kind == b"string"]
        values = redis.mget(strings) if strings else []
        mentioning = [key for key, value in zip(strings, values) if value is not None and _mentions(value, wanted)]
        if mentioning:
            removed += redis.delete(*mentioning)
        for key, kind in zip(others, kinds):
            removed += _remove_members(redis, key, kind, wanted)
        if cursor == 0:
            return removed


def _remove_members(redis: Redis, key: bytes, kind: bytes, wanted: tuple[bytes, ...]) -> int:
    if kind == b"list":
        items = {i for i in redis.lrange(key, 0, -1) if _mentions(i, wanted)}
        return sum(redis.lrem(key, 0, item) for item in items)
    if kind == b"set":
        items = [m for m in redis.sscan_iter(key) if _mentions(m, wanted)]
        return redis.srem(key, *items) if items else 0
    if kind == b"zset":
        items = [m for m, _ in redis.zscan_iter(key) if _mentions(m, wanted)]
        return redis.zrem(key, *items) if items else 0
    if kind == b"hash":
        fields = [f for f, v in redis.hscan_iter(key) if _mentions(f, wanted) or _mentions(v, wanted)]
        return redis.hdel(key, *fields) if fields else 0
    return 0
