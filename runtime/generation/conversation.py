"""A chat conversation: messages, fitting them into the context window, saving and loading.

When the conversation outgrows the window the oldest exchanges are dropped (never the system
prompt) and the caller is told how many, so it can say so: nothing is truncated silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..errors import ContextOverflowError, InferError, UsageError
from .templates import Message

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ROLES = {"user", "assistant"}


@dataclass
class Conversation:
    model: str
    system: str | None = None
    turns: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        head = [Message("system", self.system)] if self.system else []
        return head + list(self.turns)

    def add(self, role: str, content: str) -> None:
        self.turns.append(Message(role, content))

    def undo(self) -> bool:
        """Drop the last exchange (the last user message and what followed it)."""
        for i in range(len(self.turns) - 1, -1, -1):
            if self.turns[i].role == "user":
                del self.turns[i:]
                return True
        return False

    def pop_answer(self) -> str | None:
        """Remove the last assistant message (for /retry); return the user text it answered."""
        if self.turns and self.turns[-1].role == "assistant":
            self.turns.pop()
        return self.turns[-1].text if self.turns and self.turns[-1].role == "user" else None

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "system": self.system,
            "messages": [{"role": m.role, "content": m.content} for m in self.turns],
        }

    @classmethod
    def from_dict(cls, data: object, source: str) -> Conversation:
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise InferError(f"{source}: not a saved conversation")
        turns = []
        for item in data["messages"]:
            if not (
                isinstance(item, dict)
                and item.get("role") in ROLES
                and isinstance(item.get("content"), str)
            ):
                raise InferError(f"{source}: invalid message {item!r:.60}")
            turns.append(Message(item["role"], item["content"]))
        system = data.get("system")
        return cls(str(data.get("model", "")), system if isinstance(system, str) else None, turns)


def fit(
    conversation: Conversation,
    count_tokens: Callable[[Sequence[Message]], int],
    n_ctx: int,
    reserve: int,
) -> int:
    """Drop the oldest exchanges until the prompt leaves `reserve` tokens for the answer.
    Returns how many messages were dropped. Once it must drop, it drops down to half the
    window, so the turns after it reuse the KV cache instead of re-evaluating every turn."""
    limit = n_ctx - reserve
    if count_tokens(conversation.messages()) <= limit:
        return 0
    target = min(limit, n_ctx // 2)
    dropped = 0
    while count_tokens(conversation.messages()) > target and len(conversation.turns) > 1:
        # Remove one whole exchange: the oldest user message and the answers after it.
        del conversation.turns[0]
        dropped += 1
        while conversation.turns and conversation.turns[0].role != "user":
            del conversation.turns[0]
            dropped += 1
    needed = count_tokens(conversation.messages())
    if needed > limit:
        raise ContextOverflowError(needed, n_ctx - reserve, n_ctx)
    return dropped


def chats_dir() -> Path:
    return paths.state_dir() / "chats"


def saved_path(name: str) -> Path:
    if not NAME.match(name):
        raise UsageError(f"invalid conversation name {name!r}: use letters, digits, . _ -")
    return chats_dir() / f"{name}.json"


def last_path(model: str) -> Path:
    """Where the last conversation with `model` is kept for `--continue`."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "model"
    return chats_dir() / "last" / f"{slug[:100]}.json"


def save(conversation: Conversation, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(conversation.to_dict(), ensure_ascii=False, indent=1), "utf-8")
    tmp.replace(path)


def load(path: Path) -> Conversation:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise InferError(f"no saved conversation at {path}") from None
    except (OSError, ValueError) as e:
        raise InferError(f"{path}: cannot read conversation: {e}") from None
    return Conversation.from_dict(data, str(path))
