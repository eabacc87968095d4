"""Text fine-tunes, behind the sessions routes: creating one from documents, the runner's reports
as it reads them and writes question/answer pairs, the review, retries, and the hand-over from
data preparation to training. PostgreSQL holds every stage, so any stage can be resumed."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import partial
from typing import Any

import psycopg

from controlplane.config import Config
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.finetune import store as finetune_store
from controlplane.finetune.text_input import DocumentsForm, TextFinetuneForm, check_archive, document_name, parse_pairs
from controlplane.fleet.dispatch import Dispatcher
from controlplane.knowledge import quota, ways
from controlplane.knowledge import store as knowledge_store
from controlplane.sessions import events, fair_share, sharing
from controlplane.sessions import store as sessions_store
from controlplane.sessions.views import interaction_view
from controlplane.storage import db
from controlplane.storage.filestore import Filestore, UserFiles, session_folder
from controlplane.storage.rows import InteractionRow, SessionRow, SessionWithInteractions
from controlplane.usage import metering, monthly
from shared.finetune import ADAPTER_FILES, system_prompt
from shared.image_finetune import ADAPTER_FILES as IMAGE_ADAPTER_FILES
from shared.jobs import WorkKind
from shared.types import Creator, DataPrepStage, InteractionState, SessionMode, SessionType
from shared.updates import EVENT_INTERACTION
from shared.wire import ChunkReport, DocumentReport, IndexedReport, IndexReport, MetricsReport, PreparedReport


class FinetuneService:
    def __init__(self, config: Config, dispatcher: Dispatcher, filestore: Filestore, redis):
        self.config = config
        self.dispatcher = dispatcher
        self.filestore = filestore
        self.redis = redis

    # -- the user's side ------------------------------------------------------------------

    def create(self, conn: psycopg.Connection, user: dict[str, Any], form: TextFinetuneForm,
               files: list[Any], model: str) -> SessionWithInteractions:
        options, urls, message = form.options(), form.urls, form.input
        names = self._document_names(files)
        if len(set(names)) != len(names):
            raise BadRequest("two files share a name: give each document its own")
        if not names and not urls:
            raise BadRequest("a fine-tune needs documents: send them as files (multipart) or urls=...")
        if len(names) + len(urls) > self.config.max_finetune_documents:
            raise BadRequest(f"at most {self.config.max_finetune_documents} documents per session")
        session_id = sessions_store.new_id()
        options["system_prompt"] = system_prompt(names + urls)
        knowledge = ways.of_new_session(session_id, options["knowledge"])
        if knowledge:
            options["max_index_chunks"] = quota.room(conn, self.config, user)
        # A refused request stores nothing: the new session's folder goes.
        db.after_rollback(conn, partial(UserFiles(self.filestore, user["id"]).remove, session_folder(session_id)))
        stored: list[str] = []
        self._store_documents(user["id"], session_id, files, names, stored)
        session = sessions_store.insert_session(
            conn, owner=user["id"], mode=SessionMode.FINETUNE, type=SessionType.TEXT,
            model_name=model, name=form.name or f"fine-tune on {(names + urls)[0][:50]}",
            config={"finetune": options, **({"knowledge": knowledge} if knowledge else {})}, session_id=session_id)
        interactions = self._add_documents_turn(conn, session, message, stored, urls)
        fair_share.submit(conn, self.dispatcher, session, interactions, interactions[-1].id)
        return session, interactions

    def _document_names(self, files: list[Any]) -> list[str]:
        """The stored name of each uploaded document, once it passed the door's checks."""
        names = [document_name(f.filename, self.config.max_name_bytes) for f in files]
        for upload, name in zip(files, names):
            check_archive(name, upload.stream, self.config.max_document_inflated_bytes)
        return names

    def _store_documents(self, owner: str, session_id: str, files: list[Any], names: list[str],
                         stored: list[str]) -> None:
        """Writes the uploads, adding each path to `stored` as it is written: the caller's
        after_rollback removes them if the request is refused."""
        store = UserFiles(self.filestore, owner)
        for upload, name in zip(files, names):
            path = f"{session_folder(session_id)}/documents/{name}"
            store.write(path, upload.stream)
            stored.append(path)

    def _add_documents_turn(self, conn, session: SessionRow, message: str, paths: list[str],
                            urls: list[str]) -> list[InteractionRow]:
        user_turn = sessions_store.insert_interaction(
            conn, session_id=session.id, creator=Creator.USER, mode=SessionMode.FINETUNE,
            message=message, state=InteractionState.COMPLETE, files=paths, metadata={"urls": urls})
        system_turn = sessions_store.insert_interaction(
            conn, session_id=session.id, creator=Creator.SYSTEM, mode=SessionMode.FINETUNE,
            state=InteractionState.WAITING, data_prep_stage=DataPrepStage.EXTRACT_TEXT,
            status="queued: waiting for a runner to read the documents")
        return [user_turn, system_turn]

    def _finetune_interaction(self, conn, user, session_id: str, interaction_id: str | None = None,
                              for_update: bool = True) -> tuple[SessionRow, list[InteractionRow], InteractionRow]:
        session = sessions_store.get_session(conn, session_id, user["id"], for_update=for_update)
        if session is None:
            raise NotFound("session not found")
        interactions = sessions_store.get_interactions(conn, session_id)
        candidates = [i for i in interactions if i.mode == SessionMode.FINETUNE and i.creator == Creator.SYSTEM]
        if interaction_id is not None:
            candidates = [i for i in candidates if i.id == interaction_id]
        if not candidates:
            raise NotFound("no fine-tune interaction with that id in this session")
        return session, interactions, candidates[-1]

    def get_pairs(self, conn, user, session_id: str, interaction_id: str) -> list[dict[str, Any]]:
        self._finetune_interaction(conn, user, session_id, interaction_id)
        return finetune_store.list_pairs(conn, interaction_id)

    def put_pairs(self, conn, user, session_id: str, interaction_id: str, body: Any) -> list[dict[str, Any]]:
        pairs = parse_pairs(body)
        _, _, interaction = self._finetune_interaction(conn, user, session_id, interaction_id)
        if interaction.state != InteractionState.EDITING:
            raise Conflict("pairs can be edited only while the fine-tune waits for review"
                           " (data_prep_stage edit_questions)")
        finetune_store.replace_all_pairs(conn, interaction_id, pairs)
        rows = finetune_store.list_pairs(conn, interaction_id)
        # The status counted the pairs when data preparation ended: it counts the saved ones now.
        row = finetune_store.set_stage(
            conn, interaction_id, DataPrepStage.EDIT_QUESTIONS, state=InteractionState.EDITING,
            progress=interaction.progress,
            status=_review_status(len(rows), _failures(interaction.data_prep_chunks)))
        self._publish_after_commit(conn, session_id, row)
        return rows

    def start(self, conn, user, session_id: str) -> SessionWithInteractions:
        """After the review: train on the pairs as they now stand."""
        session, interactions, interaction = self._finetune_interaction(conn, user, session_id)
        if interaction.state != InteractionState.EDITING:
            raise Conflict("this fine-tune is not waiting for review: nothing to start")
        if not finetune_store.session_pairs(conn, session_id):  # all of the session's pairs train
            raise BadRequest("there are no question/answer pairs to train on: PUT some first")
        row = sessions_store.reopen_interaction(conn, interaction.id, stage=DataPrepStage.FINETUNE,
                                                status="queued: waiting for a runner to train")
        return self._enqueue(conn, session, row)

    def retry(self, conn, user, session_id: str) -> SessionWithInteractions:
        """Runs data preparation again for the chunks (and files) that failed; done ones stay."""
        session, interactions, interaction = self._finetune_interaction(conn, user, session_id)
        stage = interaction.data_prep_stage
        retryable = interaction.state == InteractionState.EDITING or (
            interaction.state == InteractionState.ERROR
            and stage in (DataPrepStage.EXTRACT_TEXT, DataPrepStage.INDEX_DOCUMENTS, DataPrepStage.GENERATE_QUESTIONS))
        if not retryable:
            raise Conflict("only a fine-tune whose data preparation failed or waits for review can retry")
        options = session.config.get("finetune", {})
        if options.get("knowledge", {}).get("retrieval"):  # an index refused for its size may fit the plan now
            finetune_store.reopen_for_documents(conn, session_id, {**options, "max_index_chunks": quota.room(
                conn, self.config, user)})
            session = sessions_store.get_session(conn, session_id, user["id"])
        row = sessions_store.reopen_interaction(conn, interaction.id, stage=DataPrepStage.GENERATE_QUESTIONS,
                                                status="queued: retrying the failed chunks")
        return self._enqueue(conn, session, row)

    def _enqueue(self, conn, session, interaction) -> SessionWithInteractions:
        interactions = sessions_store.get_interactions(conn, session.id)
        fair_share.submit(conn, self.dispatcher, session, interactions, interaction.id)
        self._publish_after_commit(conn, session.id, interaction)
        return session, interactions

    def _publish_after_commit(self, conn, session_id: str, interaction: InteractionRow) -> None:
        """Tells the session's live streams of the interaction once its change is stored."""
        db.after_commit(conn, partial(events.publish, self.redis, session_id, EVENT_INTERACTION,
                                      interaction_view(interaction)))

    def add_documents(self, conn, user, session_id: str, form: DocumentsForm,
                      files: list[Any]) -> SessionWithInteractions:
        """More documents for a fine-tuned session: their pairs are prepared, then the model is
        trained again on all of the session's pairs, old and new."""
        urls, message = form.urls, form.input
        names = self._document_names(files)
        if not names and not urls:
            raise BadRequest("send the new documents as files (multipart) or urls=...")
        stored: list[str] = []
        # A refused request stores nothing: the documents written on the way go.
        db.after_rollback(conn, lambda: UserFiles(self.filestore, user["id"]).remove(*stored))
        return self._add_documents(conn, user, session_id, urls, message, names, files, stored)

    def _add_documents(self, conn, user, session_id, urls, message, names, files, stored) -> SessionWithInteractions:
        session = sessions_store.get_session(conn, session_id, user["id"], for_update=True)
        if session is None:
            raise NotFound("session not found")
        interactions = sessions_store.get_interactions(conn, session_id)
        finetunes = [i for i in interactions if i.mode == SessionMode.FINETUNE and i.creator == Creator.SYSTEM]
        if not finetunes or not finetunes[-1].finished or (interactions and not interactions[-1].finished):
            raise Conflict("documents can be added to a fine-tune session once its last run has finished")
        existing = {p.rsplit("/", 1)[-1] for i in interactions if i.creator == Creator.USER for p in i.files}
        clash = sorted(set(names) & existing)
        if clash or len(set(names)) != len(names):
            raise BadRequest(f"the session already has a document named {(clash or names)[0]!r}: rename it")
        options = dict(session.config.get("finetune", {}))
        documents = sorted(existing) + names + urls
        if len(documents) > self.config.max_finetune_documents:
            raise BadRequest(f"at most {self.config.max_finetune_documents} documents per session")
        options["system_prompt"] = system_prompt(documents)
        if options.get("knowledge", {}).get("retrieval"):
            options["max_index_chunks"] = quota.room(conn, self.config, user)
        self._store_documents(user["id"], session_id, files, names, stored)
        finetune_store.reopen_for_documents(conn, session_id, options)
        session = sessions_store.get_session(conn, session_id, user["id"])
        added = self._add_documents_turn(conn, session, message, stored, urls)
        interactions = interactions + added
        fair_share.submit(conn, self.dispatcher, session, interactions, added[-1].id)
        return session, interactions

    def clone(self, conn, user, session_id: str, interaction_id: str, mode: str) -> SessionWithInteractions:
        """A new session from a fine-tune: its documents (`just_data`), with its pairs ready for
        review (`with_questions`), or everything, the trained adapter included (`all`)."""
        if mode not in ("just_data", "with_questions", "all"):
            raise BadRequest("clone mode must be just_data, with_questions or all")
        # Read without locks: nothing is held while the files are copied.
        session, interactions, source = self._finetune_interaction(conn, user, session_id, interaction_id,
                                                                   for_update=False)
        image = session.type == SessionType.IMAGE
        if image and mode == "with_questions":
            raise BadRequest("an image fine-tune has no questions: clone it just_data or all")
        if mode == "all" and not source.lora_dir:
            raise Conflict("this fine-tune has no trained adapter yet: clone with_questions instead")
        if mode != "just_data" and source.state not in (InteractionState.EDITING, InteractionState.COMPLETE):
            raise Conflict("this fine-tune has no finished question/answer pairs yet: clone just_data instead")
        new_id = sessions_store.new_id()
        files = UserFiles(self.filestore, user["id"])
        before = interactions[:interactions.index(source)]
        documents = next((i for i in reversed(before) if i.creator == Creator.USER), None)
        document_files = documents.files if documents else []
        document_metadata = documents.metadata if documents else {}
        moved = {}
        db.after_rollback(conn, partial(files.remove, session_folder(new_id)))  # copies of a refused clone
        adapter_files = IMAGE_ADAPTER_FILES if image else ADAPTER_FILES
        for path in document_files + ([f"{source.lora_dir}/{n}" for n in adapter_files] if mode == "all" else []):
            target = path.replace(session_folder(session_id), session_folder(new_id), 1)
            with files.open(path) as data:
                files.write(target, data)
            moved[path] = target
        new_lora = source.lora_dir.replace(session_folder(session_id), session_folder(new_id), 1) if mode == "all" else ""
        config = sharing.cloned_config(session.config, source.id)
        if config.get("knowledge"):  # the clone has an index of its own: read again, or copied with the pairs
            config["knowledge"] = {**config["knowledge"], "session_id": new_id}
        clone = sessions_store.insert_session(
            conn, owner=user["id"], mode=SessionMode.INFERENCE if mode == "all" else SessionMode.FINETUNE,
            type=session.type, model_name=session.model_name, name=f"{session.name} (clone)"[:200],
            config=config, parent_session=session_id, lora_dir=new_lora, session_id=new_id)
        if config.get("knowledge") and mode != "just_data":
            knowledge_store.copy_index(conn, session_id, new_id)
        user_turn = sessions_store.insert_interaction(
            conn, session_id=new_id, creator=Creator.USER, mode=SessionMode.FINETUNE,
            message=documents.message if documents else "", state=InteractionState.COMPLETE,
            files=[moved[p] for p in document_files],
            metadata={k: document_metadata[k] for k in ("urls", "captions", "sizes") if k in document_metadata})
        state, stage, status = {
            "just_data": (InteractionState.WAITING, DataPrepStage.FINETUNE,
                          "queued: waiting for a runner to train") if image else
                         (InteractionState.WAITING, DataPrepStage.EXTRACT_TEXT,
                          "queued: waiting for a runner to read the documents"),
            "with_questions": (InteractionState.EDITING, DataPrepStage.EDIT_QUESTIONS,
                               "cloned pairs ready for review; start training with POST .../finetune/start"),
            "all": (InteractionState.COMPLETE, DataPrepStage.COMPLETE, "cloned with its adapter"),
        }[mode]
        system_turn = sessions_store.insert_interaction(
            conn, session_id=new_id, creator=Creator.SYSTEM, mode=SessionMode.FINETUNE, state=state,
            status=status, data_prep_stage=stage, lora_dir=new_lora,
            message=source.message if mode == "all" else "",
            metadata=(dict(source.metadata) if mode == "all" else {}) | {"cloned_from": source.id})
        if mode != "just_data":
            finetune_store.copy_pairs(conn, source.id, system_turn.id)
            finetune_store.set_chunks(conn, system_turn.id, source.data_prep_chunks)
        interactions = [user_turn, system_turn]
        if mode == "just_data":
            fair_share.submit(conn, self.dispatcher, clone, interactions, system_turn.id)
        return clone, sessions_store.get_interactions(conn, new_id)

    # -- the runner's reports -------------------------------------------------------------

    def _running(self, conn, session_id: str, interaction_id: str) -> InteractionRow:
        interaction = sessions_store.get_interaction_for_runner(conn, session_id, interaction_id)
        if interaction is None or interaction.mode != SessionMode.FINETUNE:
            raise NotFound("fine-tune interaction not found")
        if interaction.finished:
            raise Conflict("interaction already finished")
        return interaction

    def report_document(self, conn, session_id: str, interaction_id: str, report: DocumentReport) -> None:
        """A document read (or not): its characters, chunk count and error."""
        interaction = self._running(conn, session_id, interaction_id)
        # A retry reads the document again: the chunks an earlier attempt finished stay done.
        earlier = {c["index"]: c for c in interaction.data_prep_chunks.get(report.document, {}).get("chunks", [])}

        def chunk_entry(i: int) -> dict:
            before = earlier.get(i, {})
            if before.get("state") == "done":
                return before
            return {"index": i, "state": "pending", "question_count": 0, "error": "",
                    "attempts": before.get("attempts", 0)}

        finetune_store.set_document(conn, interaction_id, report.document, {
            "chars": report.chars, "error": report.error, "chunks": [chunk_entry(i) for i in range(report.chunks)]})

    def report_chunk(self, conn, session_id: str, interaction_id: str, report: ChunkReport) -> None:
        """One chunk's pairs (replacing any from an earlier attempt), filter counts and error."""
        name, index, error, note = report.document, report.index, report.error, report.note
        pairs = [p.model_dump() for p in report.pairs]
        interaction = self._running(conn, session_id, interaction_id)
        if name not in interaction.data_prep_chunks:
            raise BadRequest(f"report document {name[:80]!r} before its chunks")
        earlier = next((c for c in interaction.data_prep_chunks[name].get("chunks", []) if c["index"] == index), {})
        finetune_store.replace_chunk_pairs(conn, interaction_id, name, index, pairs)
        finetune_store.set_chunk(conn, interaction_id, name, index, {
            "attempts": earlier.get("attempts", 0) + 1,
            "index": index, "state": "error" if error or not (pairs or note) else "done",
            "question_count": len(pairs), "error": error or ("" if pairs or note else "no pairs"),
            "note": note, "dropped": report.dropped, "coverage": report.coverage})

    def report_index(self, conn, session_id: str, interaction_id: str, report: IndexReport) -> None:
        """Some of a document's chunks for the session's index (searched once the index is whole)."""
        self._running(conn, session_id, interaction_id)
        owner = sessions_store.get_session_any_owner(conn, session_id).owner
        chunks = [knowledge_store.Chunk(c.index, c.text, c.embedding) for c in report.chunks]
        if report.first:
            knowledge_store.replace_document(conn, session_id, owner, report.document, chunks)
        else:
            knowledge_store.append_chunks(conn, session_id, owner, report.document, chunks)

    def report_indexed(self, conn, session_id: str, interaction_id: str, report: IndexedReport) -> None:
        """The index is whole: from now on the session's chats search it."""
        self._running(conn, session_id, interaction_id)
        chunks = knowledge_store.mark_ready(conn, session_id)
        finetune_store.merge_metadata(conn, interaction_id, {"knowledge": {
            "documents": report.documents, "chunks": chunks, "seconds": report.seconds,
            "chunks_per_second": round(report.chunks / report.seconds, 1) if report.seconds else None}})

    def pairs_for_training(self, conn, session_id: str, interaction_id: str) -> list[dict[str, Any]]:
        self._running(conn, session_id, interaction_id)
        return finetune_store.session_pairs(conn, session_id)

    def report_metrics(self, conn, session_id: str, interaction_id: str, report: MetricsReport) -> None:
        """Training points to add to the history. A run that starts sends `from_step`, the step it
        starts at: what an interrupted run reported past it is dropped, as the new run reports
        those steps again (the history never holds a step twice)."""
        interaction = self._running(conn, session_id, interaction_id)
        if report.from_step is None:
            finetune_store.append_history(conn, interaction_id, report.points)
        else:
            # A run from step 0 starts the history anew; one resumed at step k keeps steps up to k.
            history = interaction.metadata.get("training_history", []) if report.from_step else []
            kept = [p for p in history if p.get("step", 0) <= report.from_step]
            finetune_store.merge_metadata(conn, interaction_id, {"training_history": kept + report.points})

    def _record_dataprep(self, conn, session: SessionRow, interaction: InteractionRow, report: PreparedReport) -> None:
        held = (datetime.now(timezone.utc) - interaction.scheduled).total_seconds() if interaction.scheduled else 0.0
        used = metering.Used(interaction_id=interaction.id, stage="dataprep", session_id=session.id,
                             model=session.model_name, kind=WorkKind.TEXT_DATAPREP.value,
                             prompt_tokens=report.prompt_tokens, completion_tokens=report.completion_tokens,
                             runner_seconds=max(0.0, held))
        monthly.record(conn, used, self.config, self.dispatcher.redis)

    def report_prepared(self, conn, session_id: str, interaction_id: str, report: PreparedReport) -> InteractionRow:
        """Data preparation is over: its usage is recorded (the tokens its questions took, the time
        its runner held it); then stop in error when no chunk made a pair; else wait for the
        review, or queue the training."""
        interaction = self._running(conn, session_id, interaction_id)
        session = sessions_store.get_session_any_owner(conn, session_id)
        self._record_dataprep(conn, session, interaction, report)
        pairs = finetune_store.count_pairs(conn, interaction_id)
        failed = _failures(interaction.data_prep_chunks)
        finetune_store.merge_metadata(conn, interaction_id, {"dataprep": _summary(interaction.data_prep_chunks, pairs)})
        review = session.config.get("finetune", {}).get("manually_review_questions")
        if not session.config.get("finetune", {}).get("knowledge", {}).get("finetune", True):
            row = self._ready_to_retrieve(conn, session, interaction, failed)
        elif not pairs and not review:
            row = sessions_store.apply_update(
                conn, interaction_id, runner=interaction.runner, state=InteractionState.ERROR,
                message=interaction.message, progress=interaction.progress, status="failed",
                files=None, finished=True, metadata=None,
                error="no question/answer pairs could be made from the documents: "
                      + ("; ".join(failed[:10]) or "no text"))
        elif review:  # with no pairs too: the reviewer can write their own
            row = finetune_store.set_stage(
                conn, interaction_id, DataPrepStage.EDIT_QUESTIONS, state=InteractionState.EDITING,
                progress=100, status=_review_status(pairs, failed))
        else:
            row = finetune_store.set_stage(
                conn, interaction_id, DataPrepStage.FINETUNE, state=InteractionState.WAITING,
                status=f"queued: training on {pairs} question/answer pairs"
                + (f" ({len(failed)} chunks or files failed)" if failed else ""))
        self._publish_after_commit(conn, session_id, row)
        if row.data_prep_stage == DataPrepStage.FINETUNE:
            fair_share.submit(conn, self.dispatcher, session, sessions_store.get_interactions(conn, session_id),
                              interaction_id)
        else:  # ended, or waiting for its review: it holds no place in its owner's share
            for action in fair_share.finish(conn, self.dispatcher, interaction_id):
                db.after_commit(conn, action)
        return row

    def _ready_to_retrieve(self, conn, session: SessionRow, interaction: InteractionRow,
                           failed: list[str]) -> InteractionRow:
        """Retrieval alone: the fine-tune is over once its documents are indexed, and the session
        chats from them (an error if no document gave a chunk)."""
        chunks = knowledge_store.count(conn, session.id, session.owner)
        if not chunks:
            return sessions_store.apply_update(
                conn, interaction.id, runner=interaction.runner, state=InteractionState.ERROR,
                message=interaction.message, progress=interaction.progress, status="failed", files=None,
                finished=True, metadata=None,
                error="no document could be indexed: " + ("; ".join(failed[:10]) or "no text"))
        documents = interaction.metadata.get("knowledge", {}).get("documents", 0)
        row = sessions_store.apply_update(
            conn, interaction.id, runner=interaction.runner, state=InteractionState.COMPLETE,
            message=interaction.message, progress=100, files=None, finished=True, metadata=None,
            status=f"ready: chats answer from {chunks} chunks of the documents ({documents} read"
            + (f", {len(failed)} failed)" if failed else ")"), error="",
            data_prep_stage=DataPrepStage.COMPLETE.value)
        sessions_store.finish_finetune(conn, session.id, session.lora_dir)
        return row


def _review_status(pairs: int, failed: list[str]) -> str:
    return (f"{pairs} question/answer pairs ready for review"
            + (f" ({len(failed)} failed: retry them with PUT .../finetune/text/retry)" if failed else "")
            + "; start training with POST .../finetune/start")


def _summary(chunks: dict[str, Any], pairs: int) -> dict[str, Any]:
    """Totals over every file and chunk: what was made, what failed, what each filter removed."""
    dropped: dict[str, int] = {}
    for report in chunks.values():
        for chunk in report.get("chunks", []):
            for name, n in (chunk.get("dropped") or {}).items():
                dropped[name] = dropped.get(name, 0) + n
    all_chunks = [c for r in chunks.values() for c in r.get("chunks", [])]
    return {"pairs": pairs, "files": len(chunks), "files_failed": sum(1 for r in chunks.values() if r.get("error")),
            "chunks": len(all_chunks), "chunks_failed": sum(1 for c in all_chunks if c.get("state") == "error"),
            "dropped": dropped}


def _failures(chunks: dict[str, Any]) -> list[str]:
    failed = []
    for name, report in chunks.items():
        if report.get("error"):
            failed.append(f"{name}: {report['error']}")
        failed += [f"{name} chunk {c['index']}: {c.get('error') or 'no pairs'}"
                   for c in report.get("chunks", []) if c.get("state") == "error"]
    return failed


