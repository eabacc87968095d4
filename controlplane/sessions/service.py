"""Creating, continuing and deleting sessions: the serving logic behind the sessions routes,
testable without HTTP. Each change is one transaction, committed before its job is queued:
a runner that dequeues at once must find the rows, and if the enqueue fails the reconciler
re-creates the job from those rows."""
from __future__ import annotations

from functools import partial
from typing import Any

import psycopg

from controlplane.config import Config
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.fleet import forgotten_adapters, scheduling
from controlplane.fleet import store as fleet_store
from controlplane.fleet.dispatch import Dispatcher
from controlplane.sessions import events, fair_share
from controlplane.sessions import store as sessions_store
from controlplane.sessions.input import ContinueChat, NewSession
from controlplane.sessions.views import interaction_view
from controlplane.storage import db
from controlplane.storage.filestore import Filestore, UserFiles, session_folder
from controlplane.storage.rows import InteractionRow, SessionRow, SessionWithInteractions
from shared.image_budget import ImageBudget
from shared.jobs import WorkKind
from shared.types import Creator, DataPrepStage, InteractionState, SessionMode, SessionType
from shared.updates import EVENT_INTERACTION

CANCELLED = "cancelled"  # the status of an interaction stopped by its user (its state: error)


def is_cancelled(interaction: InteractionRow) -> bool:
    return bool(interaction.finished and interaction.state == InteractionState.ERROR
                and interaction.metadata.get("cancelled"))


def cancel_interaction(conn: psycopg.Connection, dispatcher: Dispatcher,
                       interaction: InteractionRow) -> InteractionRow:
    """Ends an unfinished interaction as cancelled (state error, status cancelled, metadata
    cancelled: true), in the caller's unit of work, with the row locked by the caller; once it
    commits, its work stops and its owner's next held jobs go to the queue. Shared by the
    sessions' cancel and the OpenAI fine-tuning cancel, so both say the same thing and stop work
    the same way."""
    cancelled = sessions_store.apply_update(
        conn, interaction.id, runner=interaction.runner, state=InteractionState.ERROR,
        message=interaction.message, progress=interaction.progress, status=CANCELLED, files=None,
        error="cancelled by the user", finished=True, metadata={CANCELLED: True})
    db.after_commit(conn, partial(_stop_cancelled_work, dispatcher, cancelled))
    for action in fair_share.finish(conn, dispatcher, interaction.id):
        db.after_commit(conn, action)
    return cancelled


def _stop_cancelled_work(dispatcher: Dispatcher, interaction: InteractionRow) -> None:
    """Removes the cancelled interaction's job: a queued one leaves its queue; a running one is
    gone from Redis, which its runner watches while it works (it stops within a second: the
    model server's request is aborted, a training process killed, its memory freed)."""
    dispatcher.cancel(interaction.id)
    events.publish(dispatcher.redis, interaction.session_id, EVENT_INTERACTION, interaction_view(interaction))


def known_models(conn: psycopg.Connection, config: Config, session_type: SessionType) -> list[str]:
    """Models from the configuration, then any that a runner seen within HELIX_RUNNER_TTL announced."""
    models = list(config.text_models if session_type == SessionType.TEXT else config.image_models)
    return models + [m for m in fleet_store.announced_models(conn, session_type.value, config.runner_ttl)
                     if m not in models]


def _model_name(conn: psycopg.Connection, config: Config, requested: str, session_type: SessionType) -> str:
    models = known_models(conn, config, session_type)
    requested = requested.strip()
    if not requested:
        if not models:
            raise BadRequest(f"no {session_type.value} model is configured on this server")
        return models[0]
    if requested not in models:
        more = f" (and {len(models) - 5} more)" if len(models) > 5 else ""
        raise BadRequest(f"unknown {session_type.value} model {requested[:200]!r}: use one of "
                         + ", ".join(models[:5]) + more)
    return requested


# A prompt of more characters than this many per token of the model's context is refused at once:
# a cheap bound (English runs about 4 characters a token) that never needs the tokenizer.
CHARS_PER_TOKEN_BOUND = 8


def context_length(conn: psycopg.Connection, config: Config, model: str) -> int | None:
    """The text model's context in tokens, as its live runners announced it (the smallest, since
    any of them may take the job); None when none did."""
    return fleet_store.smallest_context(conn, model, config.runner_ttl)


def check_fits(conn: psycopg.Connection, config: Config, model: str, prompt: str, max_tokens: int | None) -> None:
    """Refuses now what the model cannot take, rather than letting the job fail on a runner later."""
    context = context_length(conn, config, model)
    if context is None:
        return
    if max_tokens is not None and max_tokens >= context:
        raise BadRequest(f"model {model!r} has a context of {context} tokens (max_model_len) for the prompt"
                         f" and the reply together: 'max_tokens' must be less than {context}, got {max_tokens}")
    if len(prompt) > CHARS_PER_TOKEN_BOUND * context:
        raise BadRequest(f"'input' is {len(prompt)} characters, more than model {model!r} can read: its context"
                         f" is {context} tokens (max_model_len), at most {CHARS_PER_TOKEN_BOUND * context}"
                         f" characters at {CHARS_PER_TOKEN_BOUND} a token")


def image_budget(conn: psycopg.Connection, config: Config, model: str) -> ImageBudget | None:
    """What the image model's live runners announced they can do (the strictest of them, since any
    of them may take the job); None when none did."""
    infos = fleet_store.image_budget_infos(conn, model, config.runner_ttl)
    return ImageBudget.strictest(b for b in map(ImageBudget.from_info, infos) if b)


def check_image_work(conn: psycopg.Connection, config: Config, model: str, params: dict[str, Any]) -> int | None:
    """Refuses now an image request over its model's work budget (400 saying how to make it fit),
    rather than let it hold the image worker for hours; returns the job timeout that fits its work
    (None: no runner announced a budget, and the runner will hold the job to its own)."""
    budget = image_budget(conn, config, model)
    if budget is None:
        return None
    args = (params.get("width"), params.get("height"), params.get("steps"), params.get("num_images"))
    refusal = budget.refusal(model, *args)
    if refusal:
        raise BadRequest(refusal)
    return budget.job_timeout(*args)


class SessionService:
    def __init__(self, config: Config, dispatcher: Dispatcher, filestore: Filestore):
        self.config = config
        self.dispatcher = dispatcher
        self.filestore = filestore

    def model_for(self, conn: psycopg.Connection, requested: str, mode: SessionMode,
                  session_type: SessionType) -> str:
        """The requested model (or the default for its type), once the fleet can run its work."""
        model = _model_name(conn, self.config, requested, session_type)
        scheduling.check_fleet(conn, self.config, model, scheduling.kinds_of(mode, session_type))
        return model

    def create(self, conn: psycopg.Connection, user: dict[str, Any], request: NewSession,
               files: list[Any]) -> SessionWithInteractions:
        """An inference session: its first prompt, queued for a runner."""
        if files:
            raise BadRequest("inference sessions take no files: send the prompt as input=...")
        session_type, prompt = request.type, request.input
        model = self.model_for(conn, request.model_name, SessionMode.INFERENCE, session_type)
        config = request.job_params()
        if session_type == SessionType.TEXT:
            check_fits(conn, self.config, model, prompt, config["text"].get("max_tokens"))
        elif (timeout := check_image_work(conn, self.config, model, config["image"])) is not None:
            config["job_timeout"] = timeout  # seconds: RQ's timeout for this session's jobs
        name = request.name or prompt.strip()[:60]

        session = sessions_store.insert_session(
            conn, owner=user["id"], mode=SessionMode.INFERENCE, type=session_type, model_name=model,
            name=name, config=config,
        )
        interactions = self._add_turn(conn, session, prompt)
        self._submit(conn, session, interactions, interactions[-1].id)
        return session, interactions

    def create_conversation(self, conn: psycopg.Connection, user: dict[str, Any], *, model: str,
                            turns: list[tuple[str, str]], text: dict[str, Any], lora_dir: str = "",
                            extra_config: dict[str, Any] | None = None, name: str = "") -> SessionWithInteractions:
        """A text session from a whole conversation (an OpenAI-style request): the earlier turns
        as finished interactions, then the last user message with a reply to generate. `model`
        is a known base model; `lora_dir` an adapter of the user's that serves it."""
        check_fits(conn, self.config, model, "".join(t for _, t in turns) + text.get("system_prompt", ""),
                   text.get("max_tokens"))
        scheduling.check_fleet(conn, self.config, model, [WorkKind.TEXT_INFERENCE])
        session = sessions_store.insert_session(
            conn, owner=user["id"], mode=SessionMode.INFERENCE, type=SessionType.TEXT, model_name=model,
            name=(name or turns[-1][1].strip()[:60])[:200], config={**(extra_config or {}), "text": text},
            lora_dir=lora_dir)
        interactions = []
        for role, content in turns[:-1]:
            interactions.append(sessions_store.insert_interaction(
                conn, session_id=session.id, creator=Creator.USER if role == "user" else Creator.SYSTEM,
                mode=session.mode, message=content, state=InteractionState.COMPLETE))
        interactions += self._add_turn(conn, session, turns[-1][1])
        self._submit(conn, session, interactions, interactions[-1].id)
        return session, interactions

    def continue_chat(self, conn: psycopg.Connection, user: dict[str, Any], session_id: str,
                      request: ContinueChat, text_only: bool = False) -> SessionWithInteractions:
        """The next prompt of a session; `text_only`: refused for an image session (a route that
        answers with text)."""
        prompt = request.input
        session = sessions_store.get_session(conn, session_id, user["id"], for_update=True)
        if session is None:
            raise NotFound("session not found")
        if text_only and session.type != SessionType.TEXT:
            raise BadRequest(f"session {session_id} makes images: this route continues chats;"
                             f" send its next prompt with PUT /api/v1/sessions/{session_id}")
        if session.mode != SessionMode.INFERENCE:
            raise Conflict("this session is still being fine-tuned: chat with it once its"
                           " fine-tune interaction is complete")
        scheduling.check_fleet(conn, self.config, session.model_name,
                               scheduling.kinds_of(SessionMode.INFERENCE, session.type))
        metadata = None
        if session.type == SessionType.TEXT:
            check_fits(conn, self.config, session.model_name, prompt, None)
        else:
            # An image prompt may carry the same settings as a new image session (seed
            # included). The job runs the session's settings overridden by these, so that is
            # the work checked against the runners' budget of now, and what sizes its timeout.
            params = request.image_params()
            timeout = check_image_work(conn, self.config, session.model_name,
                                       {**session.config.get("image", {}), **params})
            metadata = {"image": params, "job_timeout": timeout}  # None: no budget, the default
        previous = sessions_store.get_interactions(conn, session_id)
        if previous and not previous[-1].finished:
            raise Conflict("the previous reply is still being generated: wait for it to finish")
        interactions = previous + self._add_turn(conn, session, prompt, metadata)
        sessions_store.touch_session(conn, session_id)
        self._submit(conn, session, interactions, interactions[-1].id)
        return session, interactions

    def _add_turn(self, conn: psycopg.Connection, session: SessionRow, prompt: str,
                  metadata: dict | None = None) -> list[InteractionRow]:
        user_turn = sessions_store.insert_interaction(
            conn, session_id=session.id, creator=Creator.USER, mode=session.mode,
            message=prompt, state=InteractionState.COMPLETE, metadata=metadata,
        )
        system_turn = sessions_store.insert_interaction(
            conn, session_id=session.id, creator=Creator.SYSTEM, mode=session.mode,
            state=InteractionState.WAITING, status="queued: waiting for a runner",
        )
        return [user_turn, system_turn]

    def _last_turn(self, conn: psycopg.Connection, user: dict[str, Any],
                   session_id: str) -> tuple[SessionRow, InteractionRow]:
        """The session (locked) and its last system interaction (locked, as a
        runner's report locks it: no report lands between the check and the change)."""
        session = sessions_store.get_session(conn, session_id, user["id"], for_update=True)
        if session is None:
            raise NotFound("session not found")
        interactions = sessions_store.get_interactions(conn, session_id)
        last = next((i for i in reversed(interactions) if i.creator == Creator.SYSTEM), None)
        if last is None:
            raise Conflict("this session has no interaction to act on")
        return session, sessions_store.get_interaction_for_runner(conn, session_id, last.id)

    def cancel(self, conn: psycopg.Connection, user: dict[str, Any], session_id: str) -> None:
        """Stops the session's queued or running work. Cancelling a cancelled session again
        changes nothing and answers the same; one whose work already ended is a 409."""
        _, turn = self._last_turn(conn, user, session_id)
        if turn.finished:
            if is_cancelled(turn):
                return
            raise Conflict(f"nothing to cancel: the last interaction already ended ({turn.state})")
        cancel_interaction(conn, self.dispatcher, turn)
        sessions_store.touch_session(conn, session_id)

    def restart(self, conn: psycopg.Connection, user: dict[str, Any], session_id: str) -> None:
        """Runs the last interaction again: a reply or images from the start, a fine-tune from
        where it stopped (data preparation keeps its done chunks, training resumes from its last
        checkpoint). One still queued or running is left as it is (a repeated restart changes
        nothing); a fine-tune that waits for review or has completed is a 409."""
        session, turn = self._last_turn(conn, user, session_id)
        if not turn.finished:
            if turn.state == InteractionState.EDITING:
                raise Conflict("this fine-tune waits for the review of its question/answer pairs:"
                               " start it (POST .../finetune/start) or retry its data preparation")
            return
        if turn.mode == SessionMode.FINETUNE:
            if turn.state == InteractionState.COMPLETE:
                raise Conflict("this fine-tune is complete: add documents to train it again")
            training = turn.data_prep_stage == DataPrepStage.FINETUNE
            stage = DataPrepStage.FINETUNE if training else DataPrepStage.GENERATE_QUESTIONS
            status = "queued: waiting for a runner to train" if training else "queued: preparing the data again"
            kinds = [WorkKind.IMAGE_FINETUNE if session.type == SessionType.IMAGE else
                     WorkKind.TEXT_FINETUNE if training else WorkKind.TEXT_DATAPREP]
            fresh = False
        else:
            stage, status, fresh = turn.data_prep_stage, "queued: waiting for a runner", True
            kinds = scheduling.kinds_of(SessionMode.INFERENCE, session.type)
        scheduling.check_fleet(conn, self.config, session.model_name, kinds)
        row = sessions_store.restart_interaction(conn, turn.id, stage=stage, status=status, fresh=fresh)
        sessions_store.touch_session(conn, session_id)
        interactions = sessions_store.get_interactions(conn, session_id)
        self._submit(conn, session, interactions, row.id)
        db.after_commit(conn, partial(events.publish, self.dispatcher.redis, session_id, EVENT_INTERACTION,
                                      interaction_view(row)))

    def delete(self, conn: psycopg.Connection, user: dict[str, Any], session_id: str) -> SessionRow:
        interactions = sessions_store.get_interactions(conn, session_id)
        lora_dirs = forgotten_adapters.lora_dirs_of_sessions(conn, [session_id])
        session = sessions_store.delete_session(conn, session_id, user["id"])
        if session is None:
            raise NotFound("session not found")
        forgotten_adapters.forget(conn, lora_dirs)  # runners delete their copies when they next report
        db.after_commit(conn, partial(self._remove_work_and_files, user["id"], session_id, interactions))
        db.after_commit(conn, partial(events.publish, self.dispatcher.redis, session_id, events.EVENT_DELETED,
                                      {"session_id": session_id}))
        # Its jobs' places went with it: the owner's next held jobs on those queues go now.
        unfinished = [i for i in interactions if not i.finished and i.creator == Creator.SYSTEM]
        for queue in {fair_share.queue_of(session, i) for i in unfinished}:
            for action in fair_share.release(conn, self.dispatcher, session.owner, queue):
                db.after_commit(conn, action)
        return session

    def _remove_work_and_files(self, owner: str, session_id: str, interactions: list[InteractionRow]) -> None:
        """A deleted session's queued or running jobs and its folder in the filestore."""
        for interaction in interactions:
            if not interaction.finished:
                self.dispatcher.cancel(interaction.id)
        UserFiles(self.filestore, owner).remove(session_folder(session_id))

    def _submit(self, conn: psycopg.Connection, session: SessionRow,
                              interactions: list[InteractionRow], interaction_id: str) -> None:
        """Submits the interaction's job to its queue, in its owner's fair share: queued once its
        rows are stored (a runner looks them up)."""
        fair_share.submit(conn, self.dispatcher, session, interactions, interaction_id)
