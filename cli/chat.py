"""The interactive chat: `infer chat MODEL` (or `infer run MODEL` with no prompt) on a terminal.

Line editing and history come from the stdlib readline; the conversation's KV cache stays in the
engine between turns, so a follow-up evaluates only its new tokens.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer.runtime import paths
from infer.runtime.errors import InferError, Interrupted, UsageError
from infer.runtime.generation.conversation import (
    Conversation,
    fit,
    last_path,
    load,
    save,
    saved_path,
)

from . import output
from .inputs import read_file
from .signals import cancel_on_sigint

if TYPE_CHECKING:
    from infer.runtime.llama.interface import Session
    from infer.runtime.params import GenerateOptions, SamplingParams

PROMPT, CONTINUATION = ">>> ", "... "
MULTILINE = '"""'
COMMANDS = {
    "/help": "show this help",
    "/bye": "leave (also /exit, Ctrl-D)",
    "/clear": "forget the conversation",
    "/system": "/system TEXT sets the system prompt (no TEXT: show it)",
    "/set": "/set NAME VALUE: temperature, top_p, top_k, min_p, repeat_penalty, seed, "
    "max_tokens, stop",
    "/show": "model, settings and context use",
    "/stats": "/stats on|off: time to first token and tok/s after each answer",
    "/format": "/format json|off: answers as a JSON object, or free text again",
    "/undo": "drop the last exchange",
    "/retry": "regenerate the last answer",
    "/read": "/read FILE sends the file's text",
    "/save": "/save NAME keeps the conversation",
    "/load": "/load NAME restores a saved conversation",
    "/context": "tokens used of the context window",
}
ALIASES = {"/exit": "/bye", "/quit": "/bye", "/?": "/help"}


@dataclass
class ChatSettings:
    sampling: SamplingParams
    options: GenerateOptions
    raw: bool = False
    template: str | None = None
    stats: bool = False
    markdown: bool = False


class Repl:
    def __init__(
        self,
        engine: Session,
        conversation: Conversation,
        settings: ChatSettings,
        model_path: Path,
        drafter: Session | str | None = None,  # --draft: "lookup" or the loaded draft model
    ) -> None:
        self.engine, self.conversation, self.settings = engine, conversation, settings
        self.model_path, self.drafter = model_path, drafter
        self.history_file: Path | None = None

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
                    self.engine.reset()
                    say("\n(stopped)")
        finally:
            self.save_history()

    def ask(self, text: str) -> None:
        self.conversation.add("user", text)
        self.answer()

    def answer(self) -> None:
        """Generate the assistant's reply to the conversation as it stands. Ctrl-C anywhere in
        here only sets the cancel event, so the engine's view of its KV cache stays true."""
        with cancel_on_sigint() as cancel:
            gen = self._prepare()
            if gen is None:
                return
            gen.cancel = cancel
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
        if self.settings.stats:
            output.print_stats(gen.stats)
        save(conv, last_path(conv.model))

    def _prepare(self) -> Any:
        """Fit the conversation into the window (saying what was dropped) and start generating;
        None, with the message printed, when the last message cannot fit at all."""
        from infer.runtime import generate, prompt_tokens

        s, conv, engine = self.settings, self.conversation, self.engine

        def count(messages: Any) -> int:
            return len(prompt_tokens(engine.model, messages, raw=s.raw, template=s.template))

        try:
            reserve = min(s.options.max_tokens or 256, engine.n_ctx // 4)
            dropped = fit(conv, count, engine.n_ctx, reserve)
            if dropped:
                say(f"(dropped the {dropped} oldest messages to fit the context window)")
            return generate(
                engine,
                conv.messages(),
                s.sampling,
                s.options,
                raw=s.raw,
                template=s.template,
                drafter=self.drafter,
            )
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
        key, _, value = arg.partition(" ")
        key = key.replace("-", "_").lower()
        value = value.strip()
        s = self.settings
        if not key or not value:
            raise UsageError("usage: /set NAME VALUE (see /help)")
        if key == "grammar":
            raise UsageError("the grammar is set by --grammar/--json-schema; /format json|off")
        if key in {f.name for f in fields(s.sampling)}:
            typ = int if key in ("top_k", "repeat_last_n", "seed") else float
            s.sampling = replace(s.sampling, **{key: _convert(typ, key, value)}).validate()
        elif key == "max_tokens":
            s.options = replace(s.options, max_tokens=_convert(int, key, value)).validate()
        elif key == "stop":
            s.options = replace(s.options, stop=shlex.split(value)).validate()
        else:
            raise UsageError(f"unknown setting '{key}' (see /help)")
        say(f"({key} = {value})")

    def cmd_show(self, arg: str) -> None:
        s, e = self.settings, self.engine
        p = s.sampling
        say(
            f"model: {self.conversation.model} ({self.model_path})\n"
            f"temperature {p.temperature} · top_p {p.top_p} · top_k {p.top_k} · min_p {p.min_p}"
            f" · repeat_penalty {p.repeat_penalty}"
            f" · seed {p.seed if p.seed is not None else 'random'}"
            f" · max_tokens {s.options.max_tokens or 'none'}"
            f" · stop {s.options.stop or 'none'}"
            f" · format {'constrained' if p.grammar else 'free text'}\n"
            f"system: {self.conversation.system or '(none)'}\n"
            f"context: {e.n_past} / {e.n_ctx} tokens · {len(self.conversation.turns)} messages"
        )

    def cmd_context(self, arg: str) -> None:
        e = self.engine
        say(f"context: {e.n_past} / {e.n_ctx} tokens ({100 * e.n_past // max(e.n_ctx, 1)}%)")

    def cmd_stats(self, arg: str) -> None:
        if arg not in ("on", "off"):
            raise UsageError("usage: /stats on|off")
        self.settings.stats = arg == "on"
        say(f"(stats {arg})")

    def cmd_format(self, arg: str) -> None:
        from infer.runtime.llama.grammar import constraint

        if arg not in ("json", "off"):
            raise UsageError("usage: /format json|off")
        grammar = constraint(format=arg, names=("", "", "/format"))
        self.settings.sampling = replace(self.settings.sampling, grammar=grammar)
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
    engine: Session, model: str, model_path: Path, settings: ChatSettings, system: str | None,
    resume: bool, drafter: Session | str | None = None,
) -> int:  # fmt: skip
    conversation = Conversation(model, system)
    if resume:
        try:
            conversation = load(last_path(model))
            say(f"(continuing the last conversation: {len(conversation.turns)} messages)")
        except InferError:
            say("(no earlier conversation with this model; starting a new one)")
    return Repl(engine, conversation, settings, model_path, drafter).loop()
