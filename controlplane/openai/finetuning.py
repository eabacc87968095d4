"""OpenAI fine-tuning jobs on the platform's own text fine-tunes: a job is a fine-tune session (mode
finetune, type text) whose question/answer pairs come from the chat examples of the job's files
instead of document preparation, queued straight to the `finetune` stage, as a reviewed fine-tune
is after `POST .../finetune/start`. The same job, runner and trainer do the work; the job's id is
`ftjob-<session id>`, its state, events and checkpoints are read from that session, and its
`fine_tuned_model` is the session's model id, `ft:<base model>:<session id>`."""
from __future__ import annotations

import random
import uuid
from typing import Any

import psycopg
from redis import Redis

from controlplane.config import Config
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.finetune import store as finetune_store
from controlplane.finetune.examples import Pair, common_system
from controlplane.fleet import scheduling
from controlplane.fleet.dispatch import Dispatcher
from controlplane.openai import store as openai_store
from controlplane.openai.chat import FINE_TUNED_PREFIX, fine_tuned_id
from controlplane.openai.files import OpenAIFiles
from controlplane.openai.input import read_body
from controlplane.openai.job_input import DEFAULT_LEARNING_RATE, FineTuningJobBody
from controlplane.sessions import store as sessions_store
from controlplane.sessions import fair_share
from controlplane.sessions.service import cancel_interaction, is_cancelled, known_models
from controlplane.storage.rows import InteractionRow, SessionRow
from controlplane.usage import metering
from shared.finetune import HYPERPARAMETERS
from shared.jobs import WorkKind
from shared.types import Creator, DataPrepStage, InteractionState, SessionMode, SessionType

JOB_PREFIX = "ftjob-"


def _time(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _pairs(examples: list[list[Pair]], file_id: str, held_out: bool) -> list[dict[str, Any]]:
    return [{"question": p.question, "answer": p.answer, "system_prompt": p.system, "held_out": held_out,
             "document": file_id, "chunk_index": line} for line, pairs in enumerate(examples, 1) for p in pairs]


def session_id_of(job_id: str) -> str:
    """The session behind a job id; 404 for anything that is not one."""
    raw = job_id.removeprefix(JOB_PREFIX)
    try:
        if not job_id.startswith(JOB_PREFIX) or str(uuid.UUID(raw)) != raw:
            raise ValueError
    except ValueError:
        raise NotFound(f"no fine-tuning job with id {job_id[:100]!r}") from None
    return raw


class OpenAIFineTuning:
    def __init__(self, config: Config, dispatcher: Dispatcher, files: OpenAIFiles, redis: Redis):
        self.config, self.dispatcher, self.files, self.redis = config, dispatcher, files, redis

    # -- creating -------------------------------------------------------------------------

    def create(self, conn: psycopg.Connection, user: dict[str, Any], body: Any) -> dict[str, Any]:
        request = read_body(FineTuningJobBody, body)
        model = request.model
        models = known_models(conn, self.config, SessionType.TEXT)
        if model.startswith(FINE_TUNED_PREFIX):
            raise BadRequest(f"'model' must be a base model: fine-tune {model.split(':')[1][:200]!r} again"
                             " with all the examples instead")
        if model not in models:
            raise BadRequest(f"the model {model[:200]!r} cannot be fine-tuned here: use one of "
                             + ", ".join(models[:5]))
        scheduling.check_fleet(conn, self.config, model, [WorkKind.TEXT_FINETUNE])
        chosen = request.chosen_hyperparameters()
        shown, trainer = chosen.model_dump(), chosen.for_trainer()
        suffix, metadata = request.suffix or "", request.metadata
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        training_file, validation_file = request.training_file, request.validation_file

        training = self.files.examples(conn, user, training_file, "training_file")
        validation = self.files.examples(conn, user, validation_file, "validation_file") if validation_file else []
        pairs = _pairs(training, training_file, False) + _pairs(validation, validation_file or "", True)
        options = {"manually_review_questions": False, "system_prompt": common_system(training),
                   "hyperparameters": trainer, "eval_share": 0.0, "seed": seed}
        job = {"training_file": training_file, "validation_file": validation_file, "suffix": suffix or None,
               "hyperparameters": shown, "metadata": metadata, "examples": len(training),
               "validation_examples": len(validation)}
        session = sessions_store.insert_session(
            conn, owner=user["id"], mode=SessionMode.FINETUNE, type=SessionType.TEXT, model_name=model,
            name=f"fine-tune {suffix or training_file}"[:200], config={"finetune": options, "openai_job": job})
        user_turn = sessions_store.insert_interaction(
            conn, session_id=session.id, creator=Creator.USER, mode=SessionMode.FINETUNE,
            message=f"Fine-tune on {training_file}" + (f", validated on {validation_file}" if validation_file else ""),
            state=InteractionState.COMPLETE, metadata={"training_file": training_file,
                                                       "validation_file": validation_file})
        system_turn = sessions_store.insert_interaction(
            conn, session_id=session.id, creator=Creator.SYSTEM, mode=SessionMode.FINETUNE,
            state=InteractionState.WAITING, data_prep_stage=DataPrepStage.FINETUNE,
            status=f"queued: training on {sum(not p['held_out'] for p in pairs)} question/answer pairs")
        finetune_store.add_pairs(conn, system_turn.id, pairs)
        fair_share.submit(conn, self.dispatcher, session, [user_turn, system_turn], system_turn.id)
        return job_view(session, system_turn)

    # -- reading --------------------------------------------------------------------------

    def _job(self, conn: psycopg.Connection, user: dict[str, Any], job_id: str,
             for_update: bool = False) -> tuple[SessionRow, InteractionRow]:
        session = sessions_store.get_session(conn, session_id_of(job_id), user["id"], for_update=for_update)
        if session is None or "openai_job" not in session.config:
            raise NotFound(f"no fine-tuning job with id {job_id[:100]!r}: GET /v1/fine_tuning/jobs lists yours")
        return session, _training_turn(sessions_store.get_interactions(conn, session.id))

    def get(self, conn: psycopg.Connection, user: dict[str, Any], job_id: str) -> dict[str, Any]:
        return job_view(*self._job(conn, user, job_id))

    def list(self, conn: psycopg.Connection, user: dict[str, Any], after: str, limit: int) -> list[dict[str, Any]]:
        """One page of the caller's jobs, newest first, after the job `after`."""
        cursor = self._job(conn, user, after)[0] if after else None
        sessions = openai_store.job_sessions(conn, user["id"], cursor, limit)
        return [job_view(s, _training_turn(sessions_store.get_interactions(conn, s.id))) for s in sessions]

    def events(self, conn: psycopg.Connection, user: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
        """Newest first, as OpenAI lists them."""
        return list(reversed(job_events(*self._job(conn, user, job_id))))

    def checkpoints(self, conn: psycopg.Connection, user: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
        """The trained adapter, once there is one (the trainer's intermediate checkpoints are for
        resuming after a lost runner, not models to call)."""
        session, turn = self._job(conn, user, job_id)
        if job_status(turn) != "succeeded" or not session.lora_dir:
            return []
        metrics = _step_metrics(turn)
        last = metrics[-1] if metrics else {}
        return [{"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{session.id}",
                 "created_at": _time(turn.completed), "fine_tuned_model_checkpoint": fine_tuned_id(session),
                 "fine_tuning_job_id": JOB_PREFIX + session.id, "step_number": last.get("step", 0),
                 "metrics": {k: v for k, v in last.items() if k in ("step", "train_loss", "valid_loss")}
                 | ({"full_valid_loss": last["valid_loss"]} if "valid_loss" in last else {})}]

    # -- cancelling -----------------------------------------------------------------------

    def cancel(self, conn: psycopg.Connection, user: dict[str, Any], job_id: str) -> dict[str, Any]:
        """Stops queued or running work the way a session's cancel does (one mechanism): the
        interaction ends now as cancelled, its queued job is removed, and a runner training it
        kills the training process within a second."""
        session, turn = self._job(conn, user, job_id, for_update=True)
        # Locked, as a runner's report locks it: its last report cannot land between check and update.
        turn = sessions_store.get_interaction_for_runner(conn, session.id, turn.id)
        if turn.finished:
            raise Conflict(f"the job has already {job_status(turn)}: only a queued or running job can be cancelled")
        turn = cancel_interaction(conn, self.dispatcher, turn)
        sessions_store.touch_session(conn, session.id)
        return job_view(session, turn)


def _training_turn(interactions: list[InteractionRow]) -> InteractionRow:
    return next(i for i in interactions if i.creator == Creator.SYSTEM and i.mode == SessionMode.FINETUNE)


def job_status(turn: InteractionRow) -> str:
    if turn.finished:
        if turn.state == InteractionState.COMPLETE:
            return "succeeded"
        return "cancelled" if is_cancelled(turn) else "failed"
    return "running" if turn.scheduled is not None else "queued"


def _step_metrics(turn: InteractionRow) -> list[dict[str, Any]]:
    """The training history, one entry per step with its training and (at epoch ends) validation loss."""
    steps: dict[int, dict[str, Any]] = {}
    for point in turn.metadata.get("training_history", []):
        entry = steps.setdefault(int(point.get("step", 0)), {"step": int(point.get("step", 0))})
        if "loss" in point:
            entry.update(train_loss=point["loss"], epoch=point.get("epoch"), learning_rate=point.get("learning_rate"))
        if "val_loss" in point:
            entry["valid_loss"] = point["val_loss"]
        if point.get("time"):
            entry["time"] = point["time"]
    return [steps[k] for k in sorted(steps)]


def job_view(session: SessionRow, turn: InteractionRow) -> dict[str, Any]:
    job, options = session.config["openai_job"], session.config["finetune"]
    run = turn.metadata.get("training_run") or {}
    status = job_status(turn)
    hp = dict(job["hyperparameters"])
    if run.get("epochs"):
        hp["n_epochs"] = run["epochs"]  # as resolved by the trainer
    hp["batch_size"] = options["hyperparameters"].get("batch_size", HYPERPARAMETERS["batch_size"][0])
    learning_rate = options["hyperparameters"].get("learning_rate", DEFAULT_LEARNING_RATE)
    hp["learning_rate_multiplier"] = learning_rate / DEFAULT_LEARNING_RATE
    error = None
    if status == "failed":
        error = {"code": "training_failed", "message": turn.error or "the fine-tune failed", "param": None}
    tokens = metering.trained_tokens(turn.metadata, complete=True) if status == "succeeded" and run else None
    return {"id": JOB_PREFIX + session.id, "object": "fine_tuning.job", "created_at": _time(session.created),
            "finished_at": _time(turn.completed) if turn.finished else None, "model": session.model_name,
            "fine_tuned_model": fine_tuned_id(session) if status == "succeeded" and session.lora_dir else None,
            "organization_id": session.owner, "status": status, "hyperparameters": hp,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
            "training_file": job["training_file"], "validation_file": job["validation_file"], "result_files": [],
            "trained_tokens": tokens, "error": error, "seed": options["seed"], "suffix": job["suffix"],
            "metadata": job["metadata"], "integrations": [], "estimated_finish": None,
            "session_id": session.id}


def job_events(session: SessionRow, turn: InteractionRow) -> list[dict[str, Any]]:
    """The job's events, oldest first, read from its session: each has a stable id (its place in
    this list, which only grows)."""
    job_id, job = JOB_PREFIX + session.id, session.config["openai_job"]
    created = _time(session.created)
    run = turn.metadata.get("training_run") or {}
    listed: list[tuple[int, str, str, str, dict]] = [
        (created, "info", "message", f"Created fine-tuning job: {job_id}", {}),
        (created, "info", "message", f"Validated training file: {job['training_file']}"
         f" ({job['examples']} examples)", {}),
    ]
    if job["validation_file"]:
        listed.append((created, "info", "message", f"Validated validation file: {job['validation_file']}"
                       f" ({job['validation_examples']} examples)", {}))
    listed.append((created, "info", "message", "Files validated, the job is queued", {}))
    started = _time(turn.scheduled)
    if started is not None:
        listed.append((started, "info", "message", "Fine-tuning job started", {}))
    for entry in _step_metrics(turn):
        data = {k: v for k, v in entry.items() if k != "time" and v is not None}
        data["total_steps"] = run.get("total_steps")
        text = f"Step {entry['step']}/{run.get('total_steps', '?')}"
        text += f": training loss={entry['train_loss']:.4f}" if "train_loss" in entry else ":"
        text += f", validation loss={entry['valid_loss']:.4f}" if "valid_loss" in entry else ""
        listed.append((int(entry.get("time") or started or created), "info", "metrics", text, data))
    status, finished = job_status(turn), _time(turn.completed) or created
    if status == "succeeded":
        listed.append((finished, "info", "message", f"New fine-tuned model created: {fine_tuned_id(session)}",
                       {"evaluation": turn.metadata.get("evaluation")}))
        listed.append((finished, "info", "message", "The job has successfully completed", {}))
    elif status == "failed":
        listed.append((finished, "error", "message", f"The job failed: {turn.error}", {}))
    elif status == "cancelled":
        listed.append((finished, "info", "message", "The job was cancelled", {}))
    return [{"object": "fine_tuning.job.event", "id": f"ftevent-{session.id}-{n}", "created_at": at,
             "level": level, "type": kind, "message": message, "data": data}
            for n, (at, level, kind, message, data) in enumerate(listed)]
