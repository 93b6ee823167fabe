"""`infer pull`, `list`, `show`, `rm`: the model cache. Results on stdout, progress on stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import output
from .options import ApiKeyFileOpt, ApiKeyOpt, ModelArg, TimeoutOpt
from .output import human_size

if TYPE_CHECKING:
    from infer.runtime.models.resolve import ResolvedModel
    from infer.runtime.progress import PullProgress

ListJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (stable field names) instead of a table.")
]
ListRemoteOpt = Annotated[
    str | None,
    typer.Option(
        "--remote",
        envvar="INFER_REMOTE",
        metavar="URL",
        help="List the models of the OpenAI-compatible server at URL instead of the cache "
        "(INFER_REMOTE too; INFER_REMOTE= infer list shows the cache).",
        show_default=False,
    ),
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
    if m.mmproj is not None:
        files += f" + projector {m.mmproj.path}"
    output.write_answer(f"pulled {m.name} ({files}, {human_size(m.size)}, sha256 verified)\n")


def list_models(
    json_out: ListJsonOpt = False,
    aliases: Annotated[
        bool, typer.Option("--aliases", help="List the models.toml aliases and their status.")
    ] = False,
    remote: ListRemoteOpt = None,
    api_key: ApiKeyOpt = None,
    api_key_file: ApiKeyFileOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """List the models in the cache: name, quantization, size, when pulled, aliases. With
    --remote, the models an OpenAI-compatible server serves."""
    if remote:
        from .remote_list import list_remote

        return list_remote(
            remote, json_out=json_out, api_key=api_key, api_key_file=api_key_file, timeout=timeout
        )
    from infer.runtime.models import inventory

    if aliases:
        rows = inventory.aliases()
        if json_out:
            output.write_answer(json.dumps({"aliases": rows}, indent=2) + "\n")
            return
        table = [[r["name"], r["status"], r["hub"] or r["bundled"], r["description"]] for r in rows]
        output.write_answer(output.table(["ALIAS", "STATUS", "SOURCE", "DESCRIPTION"], table))
        return
    listing = inventory.cached_models()
    if json_out:
        output.write_answer(json.dumps(listing, indent=2) + "\n")
        return
    models = listing["models"]
    lines = [
        [
            m["name"] + _state(m),
            m["quantization"] or "?",
            "+".join(m.get("capabilities") or ["-"]),  # what it takes besides text
            human_size(m["size"]),
            output.relative_time(m["modified"]),
            ", ".join(m["aliases"]),
        ]
        for m in models
    ]
    if lines:
        output.write_answer(
            output.table(["NAME", "QUANT", "MEDIA", "SIZE", "MODIFIED", "ALIASES"], lines)
        )
    count = f"{len(models)} model{'s' if len(models) != 1 else ''}"
    footer = f"{count}, {human_size(listing['total_bytes'])} in {listing['cache_dir']}"
    if listing["partial_bytes"]:
        footer += f" (+ {human_size(listing['partial_bytes'])} of interrupted downloads)"
    output.write_answer(footer + "\n")
    for m in models:
        if "damaged" in m:
            repair = "" if m.get("quantized") else f"repair it with infer pull {m['name']}, or "
            output.warn(
                f"{m['name']}: damaged manifest {m['path']} ({m['damaged']}); {repair}"
                f"remove it with infer rm {m['name']}"
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
        ("parameters", output.human_count(info["parameters"])),
        ("quantization", info["quantization"]),
        ("context length", info["context_length"]),
        ("layers", info["layers"]),
        ("embedding size", info["embedding_size"]),
        ("chat template", f"yes ({len(template)} characters)" if template else "no"),
        ("media", ", ".join(info["capabilities"]) or "none (text only)"),
        ("projector", info["mmproj"] or "none"),
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
    return output.key_values(rows)


def rm(models: ModelsArg) -> None:
    """Remove models from the cache, and every file no other cached model uses."""
    from infer.runtime.errors import NotInCacheError
    from infer.runtime.models import hub_cache, quantized_store
    from infer.runtime.models.resolve import hub_target, quantized_target

    for text in models:
        local = quantized_target(text)  # made by `infer quantize`
        damaged = quantized_store.find_damaged(text) if local is None else None
        if damaged is not None:
            freed = quantized_store.remove_damaged(
                damaged, on_wait=lambda: output.warn("waiting for a running pull to end")
            )
            output.write_answer(
                f"removed the damaged manifest {damaged.path} ({human_size(freed)} freed)\n"
            )
            continue
        if local is not None:
            freed = quantized_store.remove(
                local, on_wait=lambda: output.warn("waiting for a running pull to end")
            )
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


# --- progress -----------------------------------------------------------------------------
@contextmanager
def pull_progress() -> Iterator[PullProgress]:
    """Bytes, speed and ETA on a bar (started on the first download only, so a run of a cached
    model draws nothing); plain lines otherwise: when a file starts, every few seconds, at the
    end."""
    with output.Reporter("{task.description}", "bar", "bytes", "speed", "remaining") as reporter:
        yield _PullReport(reporter)


class _PullReport:
    def __init__(self, reporter: output.Reporter) -> None:
        self.reporter = reporter
        self.name, self.total, self.done, self.first = "", 0, 0, 0
        self.t0 = 0.0

    def note(self, message: str) -> None:
        self.reporter.note(message)

    def start(self, filename: str, total: int, done: int) -> None:
        self.name, self.total, self.done, self.first = filename, total, done, done
        self.reporter.begin(filename, total=total, completed=done)
        self.t0 = self.reporter.clock()
        resumed = f", resuming at {human_size(done)}" if done else ""
        self.reporter.line(f"downloading {filename} ({human_size(total)}{resumed})", force=True)

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self.reporter.update(advance=nbytes)
        if self.reporter.mode == "lines":
            pct = 100 * self.done // max(self.total, 1)
            speed = human_size(int(self._speed()))
            self.reporter.line(f"{self.name}: {pct}% of {human_size(self.total)}, {speed}/s")

    def _speed(self) -> float:
        return (self.done - self.first) / max(self.reporter.clock() - self.t0, 1e-6)

    def finish(self) -> None:
        self.reporter.refresh()
        if self.total and self.done == self.total:
            took = max(self.reporter.clock() - self.t0, 1e-6)
            speed = human_size(int((self.done - self.first) / took))
            self.reporter.line(
                f"{self.name}: {human_size(self.total)} in {took:.1f} s ({speed}/s)", force=True
            )
        self.total = 0
