"""What the control plane does with a runner's reports: registration and interaction updates.

Whom a runner token may act for: a runner id belongs to the token that first registered it, and
a token acts only for its own runner ids. A runner writes only the interactions whose job one of
its workers is running (a worker's name starts with its runner's id), and only files in that
interaction's own outputs folder.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any

import psycopg

from controlplane.config import Config
from controlplane.errors import BadRequest, Conflict, Forbidden, NotFound
from controlplane.fleet import store as fleet_store
from controlplane.fleet.dispatch import Dispatcher, job_stage
from controlplane.fleet.scheduling import work_kind
from controlplane.knowledge import ways
from controlplane.sessions import events, fair_share
from controlplane.sessions import store as sessions_store
from controlplane.sessions.views import interaction_view
from controlplane.storage import db
from controlplane.storage.filestore import Filestore, UserFiles, interaction_outputs
from controlplane.storage.rows import InteractionRow
from controlplane.usage import metering, monthly, token_charges
from controlplane.usage.metering import positive
from shared import image_budget
from shared.jobs import WorkKind
from shared.runners import RUNNER_HEADER, runner_of_worker
from shared.types import InteractionState
from shared.updates import EVENT_DELTA, EVENT_INTERACTION
from shared.wire import InteractionUpdate, Registration

_FINAL_STATES = {InteractionState.COMPLETE.value, InteractionState.ERROR.value}


# Runner ids and model names end up in queue names, Redis keys and error messages: plain names only.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,199}")


_NAME_RULE = "letters, digits and . _ : @ + / - (at most 200, starting with a letter or digit)"


def _check_info(info: dict[str, Any]) -> dict[str, Any]:
    """The facts whose ranges matter beyond their types (shared/wire.py bounds the rest)."""
    for key in ("max_model_len", "max_tokens"):  # the text model's limits, which requests are held to
        if key in info and (type(info[key]) is not int or not 1 <= info[key] <= 10**7):
            raise BadRequest(f"info {key} must be a whole number of tokens from 1 to 10000000")
    for key in ("host_memory_bytes", "gpu_memory_bytes"):  # what work placed on this runner may need at most
        if key in info and (type(info[key]) is not int or not 0 <= info[key] <= 2**60):
            raise BadRequest(f"info {key} must be a whole number of bytes from 0 to {2**60}")
    problem = image_budget.check_info(info)  # the image model's work budget, which requests are held to
    if problem:
        raise BadRequest(problem)
    return info


def register_runner(conn: psycopg.Connection, config: Config, token_id: str,
                    registration: Registration) -> dict[str, Any]:
    """Records what a runner announces, within limits: a runner cannot flood the model list
    users choose from (every session request reads it), nor its error messages."""
    info = _check_info(registration.info)
    state = registration.state.stored()
    runner_id = registration.runner_id.strip()
    if not SAFE_NAME.fullmatch(runner_id):
        raise BadRequest(f"runner_id is required: {_NAME_RULE}")
    models = {kind.value: names for kind, names in registration.models.items()}
    for names in models.values():
        if len(names) > config.max_runner_models:
            raise BadRequest(f"a runner may announce at most {config.max_runner_models} models of a type,"
                             f" not {len(names)}")
        bad = next((m for m in names if not SAFE_NAME.fullmatch(m)), None)
        if bad is not None:
            raise BadRequest(f"model name {bad[:60]!r} is not allowed: {_NAME_RULE}")
    live = fleet_store.other_live_runners_of_token(conn, token_id, runner_id, config.runner_ttl)
    if live >= config.max_runners_per_token:
        raise Conflict(f"this runner token already has {live} live runners, the most one token may have:"
                       " reuse a runner id (HELIX_RUNNER_ID)")
    row = fleet_store.upsert_runner(conn, runner_id, token_id, {k: list(dict.fromkeys(v)) for k, v in models.items()},
                                    info, state)
    if row is None:
        raise Conflict(f"runner id {runner_id!r} is registered with another runner token: a token cannot"
                       " take over another's runner; pick another HELIX_RUNNER_ID")
    return row


def authorize(conn: psycopg.Connection, dispatcher: Dispatcher, token_id: str, runner_id: str,
              session_id: str, interaction_id: str) -> InteractionRow:
    """Checks that `runner_id` is registered with the request's token (else 403) and that one of
    its workers is running the interaction's job (else 409, which tells a runner to stop);
    returns the interaction, locked for the rest of the transaction."""
    check_runner(conn, token_id, runner_id)
    interaction = sessions_store.get_interaction_for_runner(conn, session_id, interaction_id)
    if interaction is None:
        raise NotFound("interaction not found")
    if interaction.finished:
        raise Conflict("interaction already finished")
    holder = dispatcher.holder(interaction_id, job_stage(interaction))
    if runner_of_worker(holder) != runner_id:
        raise Conflict(f"runner {runner_id!r} is not running this interaction's job"
                       + (": another runner is" if holder else ": no runner is"))
    return interaction


def check_runner(conn: psycopg.Connection, token_id: str, runner_id: str) -> None:
    """A token acts only for the runner ids registered with it (else 403)."""
    if not runner_id:
        raise BadRequest(f"name the runner: send its registered id in the {RUNNER_HEADER} header")
    if not fleet_store.is_registered(conn, runner_id, token_id):
        raise Forbidden(f"runner {runner_id[:200]!r} is not registered with this runner token: register it first")


def own_output(path: str, session_id: str, interaction_id: str, folder_too: bool = False) -> bool:
    """Whether `path` is in the interaction's own outputs folder (the folder itself if `folder_too`)."""
    folder = interaction_outputs(session_id, interaction_id)
    return (path.startswith(folder + "/") or (folder_too and path == folder)) and all(
        part not in ("", ".", "..") for part in path.split("/"))


def used_tokens(interaction: InteractionRow) -> int:
    """The prompt and reply tokens the runner counted for a reply (0 for other work)."""
    usage = (interaction.metadata or {}).get("usage")
    if not isinstance(usage, dict):
        return 0
    return sum(positive(usage.get(key)) for key in ("prompt_tokens", "completion_tokens"))


def _used(conn: psycopg.Connection, filestore: Filestore, before: InteractionRow,
          finished: InteractionRow) -> metering.Used | None:
    """What the finished job used, as the runner reported it: tokens, images and their size, the
    tokens it trained on, the time its runner held it (from taking it to its final report), and the
    bytes it left in its outputs folder."""
    session = sessions_store.get_session_any_owner(conn, finished.session_id)
    if session is None:
        return None
    stage = job_stage(before)
    kind = work_kind(session.type, stage)
    metadata = finished.metadata or {}
    usage = metadata.get("usage") if isinstance(metadata.get("usage"), dict) else {}
    image = kind == WorkKind.IMAGE_INFERENCE
    held = (finished.completed or finished.updated) - finished.scheduled if finished.scheduled else None
    return metering.Used(
        interaction_id=finished.id, stage=stage, session_id=session.id, model=session.model_name, kind=kind.value,
        prompt_tokens=positive(usage.get("prompt_tokens")), completion_tokens=positive(usage.get("completion_tokens")),
        images=len(finished.files or []) if image else 0,
        width=positive(metadata.get("width")) or None if image else None,
        height=positive(metadata.get("height")) or None if image else None,
        steps=positive(metadata.get("steps")) or None if image else None,
        runner_seconds=max(0.0, held.total_seconds()) if held is not None else 0.0,
        training_tokens=metering.trained_tokens(metadata, complete=finished.state == InteractionState.COMPLETE),
        stored_bytes=_stored_bytes(filestore, session.owner, finished, kind))


def _stored_bytes(filestore: Filestore, owner: str, finished: InteractionRow, kind: WorkKind) -> int:
    """The bytes in the job's outputs folder. A chat reply that named no files wrote none: its
    folder is not listed (on S3 a request), as every reply would otherwise pay for it."""
    if kind == WorkKind.TEXT_INFERENCE and not finished.files:
        return 0
    return filestore.used_bytes(UserFiles(filestore, owner).key(interaction_outputs(finished.session_id, finished.id)))


def apply_update(conn: psycopg.Connection, dispatcher: Dispatcher, filestore: Filestore, current: InteractionRow,
                 update: InteractionUpdate, runner_id: str) -> dict[str, Any]:
    """Applies one update of `runner_id` to the interaction that authorize() returned for it,
    still locked; once it is finished, authorize() refuses further updates with 409. Returns the
    interaction's view; the live events that tell of it go out once the unit of work has
    committed: a client that reads the session on hearing of the final update must find it stored.
    A final update gives the interaction's place in its owner's fair share to their next job."""
    session_id, interaction_id = current.session_id, current.id
    if update.runner not in ("", runner_id):
        raise BadRequest(f"runner must be this runner's registered id, {runner_id!r}")
    folder = interaction_outputs(session_id, interaction_id)
    if not all(own_output(f, session_id, interaction_id) for f in update.files or []):
        raise BadRequest(f"files must be paths under this interaction's outputs folder, {folder}/")
    if update.lora_dir and not own_output(update.lora_dir, session_id, interaction_id, folder_too=True):
        raise BadRequest(f"lora_dir must be this interaction's outputs folder, {folder}, or one under it")
    final = update.final or update.state in _FINAL_STATES
    state = update.state.value
    if final and state not in _FINAL_STATES:
        state = InteractionState.COMPLETE.value
    message = (update.message if update.message is not None else current.message) + update.delta
    progress = 100 if final and state == InteractionState.COMPLETE else (
        update.progress if update.progress is not None else current.progress)
    row = sessions_store.apply_update(
        conn, interaction_id, runner=runner_id, state=state,
        message=message, progress=progress,
        status=update.status if update.status is not None else current.status,
        files=update.files, error=update.error, finished=final,
        metadata=update.metadata or None,
        data_prep_stage=update.data_prep_stage.value if update.data_prep_stage else None,
        lora_dir=update.lora_dir,
    )
    if update.lora_dir and final and state == InteractionState.COMPLETE:
        sessions_store.finish_finetune(conn, session_id, update.lora_dir)
        # With both ways trained and scored, the session's chats take the one that scored best.
        session = sessions_store.get_session_any_owner(conn, session_id)
        chosen = ways.after_report(session, row.metadata.get("evaluation") or {})
        if chosen:
            sessions_store.update_session_config(conn, session_id, session.owner, {"knowledge": chosen})
    sessions_store.touch_session(conn, session_id)
    if final:
        used = _used(conn, filestore, current, row)
        if used is not None:  # before finish() lets go of the key that asked for the job
            monthly.record(conn, used, dispatcher.config, dispatcher.redis)
        for action in fair_share.finish(conn, dispatcher, interaction_id):
            db.after_commit(conn, action)
        db.after_commit(conn, partial(token_charges.settle, dispatcher.redis, interaction_id, used_tokens(row)))
    view = interaction_view(row)
    # Streamed tokens go out as small delta events; every other change as the whole interaction.
    told = [(EVENT_DELTA, {"interaction_id": interaction_id, "delta": update.delta})] if update.delta else []
    if final or not update.delta:
        told.append((EVENT_INTERACTION, view))
    for event, data in told:
        db.after_commit(conn, partial(events.publish, dispatcher.redis, session_id, event, data))
    return view
