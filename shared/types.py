"""Enumerations and limits of the Helix sessions API, as the wire spells them."""
from enum import StrEnum


class SessionMode(StrEnum):
    INFERENCE = "inference"
    FINETUNE = "finetune"


class SessionType(StrEnum):
    TEXT = "text"
    IMAGE = "image"


class Creator(StrEnum):
    USER = "user"
    SYSTEM = "system"


class InteractionState(StrEnum):
    WAITING = "waiting"
    EDITING = "editing"
    COMPLETE = "complete"
    ERROR = "error"


class DataPrepStage(StrEnum):
    """Helix's stages of a text fine-tune, in order."""
    EDIT_FILES = "edit_files"
    EXTRACT_TEXT = "extract_text"
    INDEX_DOCUMENTS = "index_documents"  # retrieval's index of the chunks (Helix later: "index_rag")
    GENERATE_QUESTIONS = "generate_questions"
    EDIT_QUESTIONS = "edit_questions"
    FINETUNE = "finetune"
    COMPLETE = "complete"


API_KEY_PREFIX = "hl-"
RUNNER_TOKEN_PREFIX = "hr-"
