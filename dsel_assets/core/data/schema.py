"""The canonical example record and its stable content id."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from enum import Enum

ROLES = ("system", "user", "assistant")


class Reason(str, Enum):
    """Why a row went to quarantine. The value is what the quarantine table stores."""

    UNREADABLE_FILE = "unreadable_file"  # the file is not what its extension / declared format says
    FILE_TOO_LARGE = "file_too_large"  # over max_file_bytes: not read
    RECORD_TOO_LARGE = "record_too_large"  # over max_record_bytes: not decoded
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    TOO_DEEP = "too_deep"  # containers nested deeper than readers.MAX_DEPTH
    NUMBER_TOO_LARGE = "number_too_large"  # an integer literal over Python's int digit limit (4300)
    INVALID_UNICODE = "invalid_unicode"  # a string or key with a lone surrogate ("\ud800")
    INVALID_RECORD = "invalid_record"  # any other error on this record; the exception is in the detail
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_LAYOUT = "unknown_layout"
    MISSING_FIELD = "missing_field"
    EMPTY_FIELD = "empty_field"
    NON_STRING_FIELD = "non_string_field"
    EMPTY_CONVERSATION = "empty_conversation"
    MALFORMED_TURN = "malformed_turn"
    UNKNOWN_ROLE = "unknown_role"
    MISPLACED_SYSTEM = "misplaced_system"
    ROLES_NOT_ALTERNATING = "roles_not_alternating"
    NOT_ENDING_ON_ASSISTANT = "not_ending_on_assistant"
    CONTROL_CHARACTERS = "control_characters"
    OVER_TOKEN_LIMIT = "over_token_limit"
    DUPLICATE = "duplicate"


class RecordError(ValueError):
    """A record that cannot become a canonical example; carries the quarantine reason."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


def normalise_text(text: str) -> str:
    """NFC-normalise and strip surrounding whitespace (the form ids are computed on)."""
    return unicodedata.normalize("NFC", text).strip()


def example_id(messages: Iterable[dict]) -> str:
    """Stable id: sha256 of the normalised (role, content) sequence, 20 hex chars."""
    canonical = [[m["role"], normalise_text(m["content"])] for m in messages]
    payload = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


#: What a sentence encoder reads of an example: ``conversation``, every turn but the system
#: prompt (instruction, input and response); ``instruction``, the prompt side only (system and
#: user turns), as Diversify-and-Conquer's reference and several others embed an example.
SENTENCE_TEXTS = ("conversation", "instruction")


def example_text(messages: Iterable[dict], text: str = "conversation") -> str:
    """Plain text of a conversation for sentence encoders: the turns ``text`` names, one per line."""
    if text not in SENTENCE_TEXTS:
        raise ValueError(f"sentence_text: {text!r} is not one of {list(SENTENCE_TEXTS)}")
    roles = ("user", "assistant") if text == "conversation" else ("system", "user")
    return "\n".join(m["content"] for m in messages if m["role"] in roles)


def content_hashes(messages: list[dict]) -> tuple[str, str]:
    """(whole conversation, prompt only) hashes of NFC-normalised, stripped text: equal prompts
    with different answers still count as the same question."""

    def digest(turns: list[dict]) -> str:
        text = json.dumps([[t["role"], unicodedata.normalize("NFC", t["content"]).strip()] for t in turns])
        return hashlib.sha256(text.encode()).hexdigest()

    return digest(messages), digest([t for t in messages if t["role"] != "assistant"])
