"""Fair share of the model's batch between users, on one runner.

Fair share in the control plane lets another user's new chat start at once (a text worker keeps
HELIX_TEXT_RESERVE_WORKERS threads beyond the workers fair share counts), but it then runs in one
batch with everything else the model is generating. On a GPU that costs it little. On a CPU a
step's time grows with the batch: in a batch of 64, a 64-token reply took about 10 times as long
as alone.

So while several users have chats on this runner and one of them has fewer than
`shared_width`, the batch narrows to `shared_width` streams, shared max-min fairly between the
users (the light user's chats all run; the rest is split evenly), and the other streams pause:
their request to vLLM is closed and, once the batch widens again, sent anew with the text so far
as the start of the reply (vLLM's `continue_final_message`), for the tokens still allowed. A paused
reply keeps its worker and its place; a client reading it sees the text stop and go on. Replies
whose continuation would not be the same request (shared.jobs.TextInferenceJob.pausable: a seed,
several choices, a JSON schema, penalties) never pause. `shared_width` 0 turns this off (the
default with a GPU).
"""
from __future__ import annotations

import threading

from runner.job_watch import StopSignal


def allotments(demands: dict[str, int], shared_width: int) -> dict[str, int] | None:
    """How many streams each owner may run now, from how many they have; None: all of them.

    Max-min fair within `shared_width` (at least one stream each): owners with few streams get
    them all, the rest share what is left evenly."""
    if shared_width <= 0 or len(demands) < 2 or min(demands.values()) >= shared_width:
        return None
    left = max(shared_width, len(demands))
    allowed: dict[str, int] = {}
    by_demand = sorted(demands.items(), key=lambda item: (item[1], item[0]))
    for n, (owner, demand) in enumerate(by_demand):
        allowed[owner] = min(demand, max(1, left // (len(by_demand) - n)))
        left -= allowed[owner]
    return allowed


class Ticket:
    """One reply's place in the batch. `running` is set while it may stream; `segment()` gives a
    signal that fires when the batch pauses it."""

    def __init__(self, owner: str, pausable: bool):
        self.owner, self.pausable = owner, pausable
        self.running = threading.Event()
        self.pauses = 0
        self._segment = StopSignal()

    def segment(self) -> StopSignal:
        """The signal of the stream about to start: fires when the batch pauses this reply."""
        self._segment = StopSignal()
        if not self.running.is_set():
            self._segment.fire()
        return self._segment

    def _set(self, running: bool) -> None:
        if running:
            self.running.set()
        elif self.running.is_set():
            self.running.clear()
            self.pauses += 1
            self._segment.fire()


class FairBatch:
    """The replies streaming on this worker process, by owner (one per text worker process, shared
    by its threads)."""

    def __init__(self, shared_width: int):
        self.shared_width = shared_width
        self._tickets: list[Ticket] = []  # oldest first: an owner's oldest replies keep running
        self._lock = threading.Lock()

    def join(self, owner: str, pausable: bool) -> Ticket:
        ticket = Ticket(owner, pausable)
        with self._lock:
            self._tickets.append(ticket)
            self._rebalance()
        return ticket

    def leave(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket in self._tickets:
                self._tickets.remove(ticket)
                self._rebalance()

    def running(self) -> int:
        with self._lock:
            return sum(t.running.is_set() for t in self._tickets)

    def _rebalance(self) -> None:
        demands: dict[str, int] = {}
        for ticket in self._tickets:
            demands[ticket.owner] = demands.get(ticket.owner, 0) + 1
        allowed = allotments(demands, self.shared_width)
        started: dict[str, int] = {}
        # Replies that cannot pause run whatever happens, and count against their owner's share.
        for ticket in sorted(self._tickets, key=lambda t: t.pausable):
            n = started.get(ticket.owner, 0)
            ticket._set(not ticket.pausable or allowed is None or n < allowed[ticket.owner])
            started[ticket.owner] = n + 1
