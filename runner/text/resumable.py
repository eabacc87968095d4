"""A streamed reply that pauses when the batch is shared (runner/text/fair_batch.py) and then
goes on from its text so far, as one reply: its text, finish reason and token counts are those
of the whole, and it never runs past its `max_tokens`."""
from __future__ import annotations

from typing import Callable, Iterator

from runner.job_watch import StopSignal
from runner.text.abortable import Abortable, abortable
from runner.text.fair_batch import Ticket
from runner.text.generation import Generation

# open_segment(text so far, tokens left, the segment's Generation, on_response) -> its deltas
OpenSegment = Callable[[str, int, Generation, Callable[[Abortable], None]], Iterator[str]]


def reply_in_turns(ticket: Ticket, watch: StopSignal, open_segment: OpenSegment, generation: Generation,
                   max_tokens: int, on_pause: Callable[[bool], None], poll: float = 0.25) -> Iterator[str]:
    """Yields the reply's text while the ticket runs; returns early once `watch` says stop (the
    caller looks at `watch.stop`). `on_pause(True)` when it pauses, `on_pause(False)` when it goes
    on. `generation` ends with the whole reply's finish reason and usage."""
    text, spent, prompt_tokens = "", 0, None
    while True:
        while not ticket.running.wait(poll):
            if watch.stop.is_set():
                return
        if text:
            on_pause(False)
        part, start = Generation(), len(text)
        pause = ticket.segment()
        for delta in abortable(lambda on_response, so_far=text, left=max_tokens - spent:
                               open_segment(so_far, left, part, on_response), watch, pause=pause):
            text += delta
            yield delta
        generation.finish_reasons.update(part.finish_reasons)
        if start == 0 and "prompt_tokens" in part.usage:  # later segments' prompts hold the text so far
            prompt_tokens = part.usage["prompt_tokens"]
        ended = 0 in part.finish_reasons or not pause.stop.is_set()
        spent += part.usage.get("completion_tokens", 0) if ended else part.tokens_for(len(text) - start)
        if watch.stop.is_set():
            return
        if not ended and spent >= max_tokens:
            generation.finish_reasons.setdefault(0, "length")
            ended = True
        if ended:
            break
        on_pause(True)
    if start == 0:  # in one go: every choice and count as vLLM gave them
        generation.texts, generation.usage = part.texts, part.usage
        return
    generation.texts[0] = text
    if prompt_tokens is not None:
        generation.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": spent,
                            "total_tokens": prompt_tokens + spent}
