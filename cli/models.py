"""`infer pull`, `list`, `show`, `rm`: the model cache. Results on stdout, progress on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import output
from .options import ModelArg

if TYPE_CHECKING:
    from infer.runtime.models.resolve import ResolvedModel
    from infer.runtime.progress import PullProgress

ListJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (stable field names) instead of a table.")
]
ModelsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="MODEL...",
        help="Models: owner/repo[:QUANT][@REV], hf://owner/repo/file.gguf or an alias",
    ),
]


def pull(model: ModelArg) -> None:
    """Download MODEL from the Hugging Face Hub into the cache, checking every file's sha256."""
    from infer.runtime.models.pull import pull as pull_model
    from infer.runtime.models.resolve import bundled_path, hub_target

    ref, spec = hub_target(model)
    if spec and spec.bundled and bundled_path(spec.bundled):
        package = spec.bundled.split("/")[0]
        output.warn(f"'{spec.name}' comes with the installed '{package}' package: nothing to pull")
        return
    with pull_progress() as progress:
        m = pull_model(ref, progress=progress)
    files = f"{len(m.files)} files" if len(m.files) > 1 else m.files[0].path
    output.write_answer(f"pulled {m.name} ({files}, {human_size(m.size)}, sha256 verified)\n")


def list_models(
    json_out: ListJsonOpt = False,
    aliases: Annotated[
        bool, typer.Option("--aliases", help="List the models.toml aliases and their status.")
    ] = False,
) -> None:
    """List the models in the cache: name, quantization, size, when pulled, aliases."""
    from infer.runtime.models import inventory

    if aliases:
        rows = inventory.aliases()
        if json_out:
            output.write_answer(json.dumps({"aliases": rows}, indent=2) + "\n")
            return
        table = [[r["name"], r["status"], r["hub"] or r["bundled"], r["description"]] for r in rows]
        output.write_answer(_table(["ALIAS", "STATUS", "SOURCE", "DESCRIPTION"], table))
        return
    listing = inventory.cached_models()
    if json_out:
        output.write_answer(json.dumps(listing, indent=2) + "\n")
        return
    models = listing["models"]
    rows = [
        [m["name"] + _state(m), m["quantization"] or "?",
         human_size(m["size"]), _ago(m["modified"]), ", ".join(m["aliases"])]
        for m in models
    ]  # fmt: skip
    if rows:
        output.write_answer(_table(["NAME", "QUANT", "SIZE", "MODIFIED", "ALIASES"], rows))
    count = f"{len(models)} model{'s' if len(models) != 1 else ''}"
    footer = f"{count}, {human_size(listing['total_bytes'])} in {listing['cache_dir']}"
    if listing["partial_bytes"]:
        footer += f" (+ {human_size(listing['partial_bytes'])} of interrupted downloads)"
    output.write_answer(footer + "\n")
    for m in models:
        if "damaged" in m:
            output.warn(
                f"{m['name']}: damaged manifest {m['path']} ({m['damaged']}); repair it with "
                f"infer pull {m['name']}, or remove it with infer rm {m['name']}"
            )


def _state(model: dict[str, Any]) -> str:
    if "damaged" in model:
        return " (damaged)"
    return "" if model["complete"] else " (incomplete)"


def show(
    model: ModelArg,
    template: Annotated[
        bool, typer.Option("--template", help="Print the chat template only.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """Show a model's metadata (read from the GGUF header, never loading weights) and source."""
    from infer.runtime.errors import InferError
    from infer.runtime.models.inventory import describe
    from infer.runtime.models.resolve import resolve

    info = describe(resolve(model))
    if template:
        if not info["chat_template"]:
            raise InferError(f"{info['name']} has no chat template (use `infer run --raw`)")
        output.write_answer(info["chat_template"].rstrip("\n") + "\n")
    elif json_out:
        output.write_answer(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    else:
        output.write_answer(_show_text(info))


def _show_text(info: dict[str, Any]) -> str:
    template = info["chat_template"]
    rows = [
        ("name", info["name"]),
        ("architecture", info["architecture"]),
        ("parameters", _count(info["parameters"])),
        ("quantization", info["quantization"]),
        ("context length", info["context_length"]),
        ("layers", info["layers"]),
        ("embedding size", info["embedding_size"]),
        ("chat template", f"yes ({len(template)} characters)" if template else "no"),
        ("license", info["license"]),
        ("size", human_size(info["size"])),
        ("path", info["path"]),
    ]
    src = info["source"]
    if src["type"] == "hub":
        rows += [("source", f"hf://{src['repo']}"), ("revision", src["revision"] or "main")]
        rows += [("commit", src["commit"]), ("pulled", src["pulled_at"])]
        for f in src["files"]:
            rows += [("file", f["path"]), ("sha256", f["sha256"])]
    elif src["type"] == "quantized":
        rows += [("source", f"quantized from {src['from']}"), ("created", src["created_at"])]
        rows.append(("sha256", src["sha256"]))
    else:
        rows.append(("source", f"bundled ({src['package']})" if "package" in src else "file"))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {'-' if v is None else v}\n" for k, v in rows)


def rm(models: ModelsArg) -> None:
    """Remove models from the cache, and every file no other cached model uses."""
    from infer.runtime.errors import NotInCacheError
    from infer.runtime.models import hub_cache, quantized_store
    from infer.runtime.models.resolve import hub_target, quantized_target

    for text in models:
        local = quantized_target(text)  # made by `infer quantize`
        if local is not None:
            freed = quantized_store.remove(local)
            output.write_answer(f"removed {local.name} ({human_size(freed)} freed)\n")
            continue
        ref, _ = hub_target(text)
        m = hub_cache.find(ref) or hub_cache.find_damaged(ref)
        if m is None:
            raise NotInCacheError(f"'{text}' is not in the cache (infer list shows what is)")
        freed = hub_cache.remove(
            m, on_wait=lambda: output.warn("waiting for a running pull to end")
        )
        what = m.name if isinstance(m, hub_cache.Manifest) else f"the damaged manifest {m.path}"
        output.write_answer(f"removed {what} ({human_size(freed)} freed)\n")


def resolve_or_pull(model: str, *, offline: bool = False) -> ResolvedModel:
    """For `infer run`: the model's local file, pulling it first if the cache lacks it (unless
    offline: `--offline` here, or HF_HUB_OFFLINE in the environment)."""
    from infer.runtime.models.resolve import ensure_local

    with pull_progress() as progress:
        return ensure_local(model, progress=progress, offline=True if offline else None)


# --- formatting ---------------------------------------------------------------------------
def human_size(n: int) -> str:
    """Decimal units, as the Hub and Ollama show them."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover - unreachable


def _count(n: int) -> str:
    for limit, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            return f"{n / limit:.1f}{unit} ({n:,})"
    return str(n)


def _ago(iso: str) -> str:
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    s = max(0, int((datetime.now(timezone.utc) - then).total_seconds()))
    for span, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if s >= span:
            return f"{s // span} {unit}{'s' if s // span != 1 else ''} ago"
    return "just now"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines) + "\n"


# --- progress -----------------------------------------------------------------------------
@contextmanager
def pull_progress() -> Iterator[PullProgress]:
    """A rich progress bar on a terminal; plain occasional lines otherwise (or with NO_COLOR)."""
    reporter: _Bar | _Lines = _Bar() if output.use_color(sys.stderr) else _Lines()
    try:
        yield reporter
    finally:
        reporter.close()


class _Lines:
    """Plain lines on stderr: one when a file starts, one every few seconds, one at the end."""

    EVERY = 5.0

    def __init__(self) -> None:
        self.name, self.total, self.done, self.first = "", 0, 0, 0
        self.t0 = self.last = 0.0

    def note(self, message: str) -> None:
        sys.stderr.write(f"infer: {message}\n")
        sys.stderr.flush()

    def start(self, filename: str, total: int, done: int) -> None:
        self.name, self.total, self.done = filename, total, done
        self.t0 = self.last = time.monotonic()
        resumed = f", resuming at {human_size(done)}" if done else ""
        self.note(f"downloading {filename} ({human_size(total)}{resumed})")
        self.first = done

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= self.EVERY:
            self.last = now
            pct = 100 * self.done // max(self.total, 1)
            speed = (self.done - self.first) / max(now - self.t0, 1e-6)
            self.note(
                f"{self.name}: {pct}% of {human_size(self.total)}, {human_size(int(speed))}/s"
            )

    def finish(self) -> None:
        if self.total and self.done == self.total:
            took = max(time.monotonic() - self.t0, 1e-6)
            speed = human_size(int((self.done - self.first) / took))
            self.note(f"{self.name}: {human_size(self.total)} in {took:.1f} s ({speed}/s)")
        self.total = 0

    def close(self) -> None:
        pass


class _Bar:
    """rich's progress bar (bytes, speed, ETA), started on the first download only, so a run
    of a cached model draws nothing."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None

    def note(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            sys.stderr.write(f"infer: {message}\n")

    def start(self, filename: str, total: int, done: int) -> None:
        if self.progress is None:
            from rich import progress as rp
            from rich.console import Console

            self.progress = rp.Progress(
                rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
                rp.TransferSpeedColumn(), rp.TimeRemainingColumn(), console=Console(stderr=True),
            )  # fmt: skip
            self.progress.start()
        if self.task is not None and self.progress.tasks[-1].description == filename:
            self.progress.reset(self.task, total=total, completed=done)
        else:
            self.task = self.progress.add_task(filename, total=total, completed=done)

    def advance(self, nbytes: int) -> None:
        self.progress.update(self.task, advance=nbytes)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.refresh()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
