"""The interactive chat: `infer chat MODEL` (or `infer run MODEL` with no prompt) on a terminal.

Line editing and history come from the stdlib readline; the conversation's KV cache stays in the
engine between turns, so a follow-up evaluates only its new tokens. The REPL asks an Answerer
(runtime/answer.py): the local model, or a remote that is sent the whole conversation each turn.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer.runtime import paths
from infer.runtime.answer import AnswerRequest
from infer.runtime.errors import InferError, Interrupted, OptionError, UsageError
from infer.runtime.generation.conversation import (
    Conversation,
    fit,
    last_path,
    load,
    save,
    saved_path,
)
from infer.runtime.options import OPTIONS

from . import output
from .inputs import read_file
from .signals import cancel_on_sigint

if TYPE_CHECKING:
    from infer.runtime.answer import Answer, Answerer
    from infer.runtime.media import Media, MediaKind

PROMPT, CONTINUATION = ">>> ", "... "
MULTILINE = '"""'
COMMANDS = {
    "/help": "show this help",
    "/bye": "leave (also /exit, Ctrl-D)",
    "/clear": "forget the conversation",
    "/system": "/system TEXT sets the system prompt (no TEXT: show it)",
    "/set": "/set NAME VALUE: " + ", ".join([*(o.name for o in OPTIONS), "max_tokens", "stop"]),
    "/show": "model, settings and context use",
    "/stats": "/stats on|off: time to first token and tok/s after each answer",
    "/format": "/format json|off: answers as a JSON object, or free text again",
    "/undo": "drop the last exchange",
    "/retry": "regenerate the last answer",
    "/read": "/read FILE sends the file's text",
    "/image": "/image FILE attaches an image to your next message (a vision model's)",
    "/audio": "/audio FILE attaches an audio clip to your next message",
    "/save": "/save NAME keeps the conversation",
    "/load": "/load NAME restores a saved conversation",
    "/context": "tokens used of the context window",
}
ALIASES = {"/exit": "/bye", "/quit": "/bye", "/?": "/help"}


@dataclass
class ChatSettings:
    """What each question is asked with (`request`, its messages filled in per turn: the
    options the user set, limits, constraint) and how answers are shown."""

    request: AnswerRequest
    stats: bool = False
    markdown: bool = False

    @classmethod
    def of(cls, request: AnswerRequest, *, stats: bool, markdown: bool) -> ChatSettings:
        return cls(request, stats, markdown)


class Repl:
    def __init__(
        self, answerer: Answerer, conversation: Conversation, settings: ChatSettings
    ) -> None:
        self.answerer, self.conversation, self.settings = answerer, conversation, settings
        self.history_file: Path | None = None
        # Images and audio: those waiting for the next message (/image, /audio, --image), and
        # those each user message carries, by the message object (turns are not renumbered
        # when the window drops old ones). Saved conversations keep only the text.
        self.pending: list[Media] = []
        self.media: dict[int, tuple[Media, ...]] = {}

    # --- input ------------------------------------------------------------------------------

    def setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # pragma: no cover - Windows without pyreadline
            return
        readline.parse_and_bind("tab: complete")
        # Pasted text with newlines arrives as one message instead of one per line.
        readline.parse_and_bind("set enable-bracketed-paste on")
        readline.set_completer_delims(" \t\n")
        names = sorted([*COMMANDS, *ALIASES])

        def complete(text: str, state: int) -> str | None:
            matches = [n for n in names if n.startswith(text)] if text.startswith("/") else []
            return matches[state] if state < len(matches) else None

        readline.set_completer(complete)
        if os.environ.get("INFER_NOHISTORY"):
            return
        self.history_file = paths.state_dir() / "history"
        try:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            if self.history_file.exists():
                readline.read_history_file(str(self.history_file))
        except OSError:
            self.history_file = None
        readline.set_history_length(2000)

    def save_history(self) -> None:
        if self.history_file is None:
            return
        import readline

        with contextlib.suppress(OSError):
            readline.write_history_file(str(self.history_file))

    def read_message(self) -> str | None:
        """One message: a line, lines joined by a trailing backslash, or a \"\"\" block.
        None at end of input (Ctrl-D)."""
        try:
            line = input(PROMPT)
        except EOFError:
            return None
        if line.strip().startswith(MULTILINE):
            first = line.strip()[len(MULTILINE) :]
            lines = [first] if first else []
            while True:
                try:
                    more = input(CONTINUATION)
                except EOFError:
                    break
                if more.rstrip().endswith(MULTILINE):
                    lines.append(more.rstrip()[: -len(MULTILINE)])
                    break
                lines.append(more)
            return "\n".join(lines).strip("\n")
        parts = []
        while line.endswith("\\"):
            parts.append(line[:-1])
            try:
                line = input(CONTINUATION)
            except EOFError:
                break
        parts.append(line)
        return "\n".join(parts)

    # --- the loop ---------------------------------------------------------------------------

    def loop(self) -> int:
        self.setup_readline()
        say(
            f"Chatting with {self.conversation.model}. /help for commands, /bye or Ctrl-D to leave."
        )
        try:
            while True:
                try:
                    text = self.read_message()
                except KeyboardInterrupt:
                    output.write_answer("\n")
                    say("(Use /bye or Ctrl-D to leave.)")
                    continue
                if text is None:
                    output.write_answer("\n")
                    return 0
                if not text.strip():
                    continue
                try:
                    if text.startswith("/") and not text.startswith("//"):
                        if not self.command(text):
                            return 0
                        continue
                    self.ask(text.removeprefix("/") if text.startswith("//") else text)
                except KeyboardInterrupt:
                    # A second Ctrl-C: the answer was abandoned mid-step; start the cache afresh.
                    self.answerer.reset()
                    say("\n(stopped)")
        finally:
            self.save_history()

    def ask(self, text: str) -> None:
        self.conversation.add("user", text)
        if self.pending:
            self.media[id(self.conversation.turns[-1])] = tuple(self.pending)
            self.pending = []
        self.answer()

    def answer(self) -> None:
        """Generate the assistant's reply to the conversation as it stands. Ctrl-C anywhere in
        here only sets the cancel event, so the engine's view of its KV cache stays true."""
        with cancel_on_sigint() as cancel:
            gen = self._prepare(cancel)
            if gen is None:
                return
            try:
                self.render(gen)
            except Interrupted:
                say("(stopped)")
            except InferError as e:
                output.error(str(e))
        conv = self.conversation
        conv.add("assistant", gen.text)
        if gen.stats.finish_reason == "context":
            say("(the answer filled the context window; older messages will be dropped)")
        remote = self.answerer.where if self.answerer.window() is None else None
        if self.settings.stats and (remote is None or gen.stats.generated_tokens):
            output.print_stats(gen.stats, remote)
        save(conv, last_path(conv.model))

    def _request(self, messages: Any) -> AnswerRequest:
        from infer.runtime.media import place

        turns = tuple(
            {"role": m.role, "content": place(m.content, self.media[id(m)])}
            if id(m) in self.media
            else {"role": m.role, "content": m.content}
            for m in messages
        )
        return replace(self.settings.request, messages=turns)

    def _prepare(self, cancel: Any) -> Answer | None:
        """Fit the conversation into the window where the answerer keeps one (saying what was
        dropped) and start the answer; None, with the message printed, when the last message
        cannot fit at all."""
        s, conv, answerer = self.settings, self.conversation, self.answerer
        try:
            window = answerer.window()
            if window is not None:
                reserve = min(s.request.max_tokens or 256, window.size // 4)

                def count(messages: Any) -> int:
                    return answerer.count(self._request(messages))

                dropped = fit(conv, count, window.size, reserve)
                if dropped:
                    say(f"(dropped the {dropped} oldest messages to fit the context window)")
            return answerer.answer(self._request(conv.messages()), cancel)
        except InferError as e:
            conv.undo()
            output.error(str(e))
            return None

    def render(self, gen: Any) -> None:
        if self.settings.markdown:
            from .markdown import stream_markdown

            stream_markdown(gen)
            return
        text = ""
        try:
            for piece in gen:
                output.write_answer(piece)
                text += piece
        finally:
            if not text.endswith("\n"):
                output.write_answer("\n")

    # --- slash commands ---------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, arg = line.strip().partition(" ")
        name = ALIASES.get(name.lower(), name.lower())
        arg = arg.strip()
        if name == "/bye":
            return False
        handler = getattr(self, "cmd_" + name[1:], None) if name in COMMANDS else None
        if handler is None:
            say(f"Unknown command {name}. Type /help for the list.")
            return True
        try:
            handler(arg)
        except InferError as e:
            output.error(str(e))
        return True

    def cmd_help(self, arg: str) -> None:
        lines = [f"  {n:<9} {h}" for n, h in COMMANDS.items()]
        lines.append(
            '  """      start and end a multi-line message; a trailing \\ continues a line'
        )
        say("\n".join(lines))

    def cmd_clear(self, arg: str) -> None:
        self.conversation.turns.clear()
        say("(conversation cleared)")

    def cmd_system(self, arg: str) -> None:
        if not arg:
            say(f"system prompt: {self.conversation.system or '(none)'}")
            return
        self.conversation.system = arg
        say("(system prompt set)")

    def cmd_set(self, arg: str) -> None:
        from infer.runtime.options import BY_NAME, check
        from infer.runtime.params import GenerateOptions

        key, _, value = arg.partition(" ")
        key = key.replace("-", "_").lower()
        value = value.strip()
        request = self.settings.request
        if not key or not value:
            raise UsageError("usage: /set NAME VALUE (see /help)")
        if key == "grammar":
            raise UsageError("the grammar is set by --grammar/--json-schema; /format json|off")
        if key in BY_NAME:
            try:
                number = check(key, _convert(BY_NAME[key].kind, key, value))
            except OptionError as e:
                raise UsageError(str(e)) from None
            field: dict[str, Any] = {key: number}  # one option, named at run time
            request = replace(request, overrides=replace(request.overrides, **field))
        elif key == "max_tokens":
            GenerateOptions(max_tokens=_convert(int, key, value)).validate()
            request = replace(request, max_tokens=int(value))
        elif key == "stop":
            stop = shlex.split(value)
            GenerateOptions(stop=stop).validate()
            request = replace(request, stop=tuple(stop))
        else:
            raise UsageError(f"unknown setting '{key}' (see /help)")
        self.settings.request = request
        say(f"({key} = {value})")

    def cmd_show(self, arg: str) -> None:
        r, answerer = self.settings.request, self.answerer
        values = answerer.settings(r.overrides)
        window = answerer.window()
        stop = list(r.stop) or "none"
        if window is None:  # a remote: what was set, the server's defaults for the rest
            say(
                f"model: {answerer.model} on {answerer.where}\n"
                f"settings: {values or 'the remote defaults'}"
                f" · max_tokens {r.max_tokens or 'the remote default'} · stop {stop}"
                f" · format {'json' if r.response_format else 'free text'}\n"
                f"system: {self.conversation.system or '(none)'}\n"
                f"{len(self.conversation.turns)} messages (the remote keeps the context)"
            )
            return
        shown = " · ".join(f"{k} {v}" for k, v in values.items() if k != "seed")
        seed = values.get("seed")
        constrained = r.grammar or r.response_format
        say(
            f"model: {answerer.model} ({answerer.where})\n"
            f"{shown} · seed {seed if seed is not None else 'random'}"
            f" · max_tokens {r.max_tokens or 'none'} · stop {stop}"
            f" · format {'constrained' if constrained else 'free text'}\n"
            f"system: {self.conversation.system or '(none)'}\n"
            f"context: {window.used} / {window.size} tokens · "
            f"{len(self.conversation.turns)} messages"
        )

    def cmd_context(self, arg: str) -> None:
        window = self.answerer.window()
        if window is None:
            say(f"{len(self.conversation.turns)} messages, sent whole with each question")
            return
        used, size = window.used, window.size
        say(f"context: {used} / {size} tokens ({100 * used // max(size, 1)}%)")

    def cmd_stats(self, arg: str) -> None:
        if arg not in ("on", "off"):
            raise UsageError("usage: /stats on|off")
        self.settings.stats = arg == "on"
        say(f"(stats {arg})")

    def cmd_format(self, arg: str) -> None:
        if arg not in ("json", "off"):
            raise UsageError("usage: /format json|off")
        response_format = {"type": "json_object"} if arg == "json" else None
        request = replace(self.settings.request, grammar="", response_format=response_format)
        self.settings.request = request
        say(f"(format {arg})")

    def cmd_undo(self, arg: str) -> None:
        say("(dropped the last exchange)" if self.conversation.undo() else "(nothing to undo)")

    def cmd_retry(self, arg: str) -> None:
        if self.conversation.pop_answer() is None:
            say("(nothing to retry)")
            return
        self.answer()

    def cmd_read(self, arg: str) -> None:
        if not arg:
            raise UsageError("usage: /read FILE")
        path = Path(os.path.expanduser(arg))
        # Bounded, and only a regular file: a FIFO or a device (/dev/zero) would block or grow
        # forever, and no one can pipe into a chat that has the terminal as its stdin.
        text = read_file(path, regular_only=True)
        say(f"(sending {path.name}: {len(text)} characters)")
        self.ask(text)

    def cmd_image(self, arg: str) -> None:
        self._attach("image", arg)

    def cmd_audio(self, arg: str) -> None:
        self._attach("audio", arg)

    def _attach(self, kind: MediaKind, arg: str) -> None:
        if not arg:
            raise UsageError(f"usage: /{kind} FILE")
        from .media import read_media

        self.pending.append(read_media(kind, os.path.expanduser(arg), len(self.pending)))
        say(f"({kind} {Path(arg).name} goes with your next message)")

    def cmd_save(self, arg: str) -> None:
        path = saved_path(arg)
        save(self.conversation, path)
        say(f"(saved to {path})")

    def cmd_load(self, arg: str) -> None:
        loaded = load(saved_path(arg))
        self.conversation.system, self.conversation.turns = loaded.system, loaded.turns
        say(f"(loaded {len(loaded.turns)} messages)")


def _convert(typ: type, key: str, value: str) -> Any:
    try:
        return typ(value)
    except ValueError:
        raise UsageError(f"{key}: '{value}' is not a valid {typ.__name__}") from None


def say(message: str) -> None:
    """REPL notices go to stderr, like every status line."""
    output.say(message)


def start(
    answerer: Answerer,
    settings: ChatSettings,
    system: str | None,
    resume: bool,
    media: tuple[Media, ...] = (),
) -> int:
    """The chat; `media` (--image, --audio) go with the first message."""
    model = answerer.model
    conversation = Conversation(model, system)
    if resume:
        try:
            conversation = load(last_path(model))
            say(f"(continuing the last conversation: {len(conversation.turns)} messages)")
        except InferError:
            say("(no earlier conversation with this model; starting a new one)")
    repl = Repl(answerer, conversation, settings)
    repl.pending = list(media)
    return repl.loop()
