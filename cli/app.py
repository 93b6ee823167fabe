"""The root of the command line: registers the commands, and maps every error to one line on
stderr and an exit code (0 ok · 1 runtime error · 2 usage error · 130 interrupted · 143 SIGTERM ·
129 SIGHUP)."""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import typer

from . import output
from .bench import bench
from .cache import cache_app
from .embed import embed
from .help import HelpCommand, HelpGroup, SectionedHelpCommand
from .models import list_models, pull, rm, show
from .options import flag_of
from .perplexity import perplexity
from .quantize import quantize
from .rerank import rerank
from .rpc_server import rpc_server
from .run import chat, run
from .serve import serve

if TYPE_CHECKING:
    from infer.runtime.errors import InferError

app = typer.Typer(
    name="infer",
    help="Run open LLMs locally: GGUF models from the Hugging Face Hub, in-process via llama.cpp.",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    cls=HelpGroup,
    rich_markup_mode=None,  # plain-text help (cli/help.py): rich's costs half the start-up
)
app.command(cls=SectionedHelpCommand)(run)
app.command(cls=HelpCommand)(pull)
app.command("list", cls=HelpCommand)(list_models)
app.command("ls", cls=HelpCommand, hidden=True)(list_models)
app.command(cls=HelpCommand)(show)
app.command(cls=HelpCommand)(rm)
app.command(cls=SectionedHelpCommand)(chat)
app.command(cls=HelpCommand)(bench)
app.command(cls=HelpCommand)(quantize)
app.command(cls=HelpCommand)(perplexity)
app.command(cls=SectionedHelpCommand)(serve)
app.command(cls=SectionedHelpCommand)(embed)
app.command(cls=SectionedHelpCommand)(rerank)
app.command("rpc-server", cls=SectionedHelpCommand)(rpc_server)
app.add_typer(cache_app, name="cache")


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print infer's version and exit."),
) -> None:
    if version:
        from infer import __version__

        output.write_answer(f"infer {__version__}\n")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        output.write_answer(ctx.get_help() + "\n")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    if not _standard_streams_open():
        output.error("stdout is closed: nowhere to write the answer")
        sys.exit(1)
    sys.exit(_run(argv))


def _standard_streams_open() -> bool:
    """A caller may start infer with stdin, stdout or stderr closed (`>&-`, `2>&-`). Put
    /dev/null on each closed descriptor first: otherwise the next file infer opens (the model)
    takes fd 1 or 2 and llama.cpp's logs land in it, and with sys.stderr None every error
    message would itself fail and turn into exit 1. Returns False when stdout was closed: the
    answer has nowhere to go, so infer stops before doing any work."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # pragma: no cover - the lowest free descriptor is this one
                os.dup2(null, fd)
                os.close(null)
            closed.append(fd)
    if 2 in closed:  # Python saw fd 2 closed at start-up and left sys.stderr None
        sys.stderr = open(  # noqa: SIM115 - stderr stays open until the process exits
            2, "w", encoding="utf-8", errors="backslashreplace", closefd=False
        )
    return 1 not in closed


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    """The runtime's warnings (InferWarning) as one line on stderr, like errors; any other
    warning as Python shows it."""
    from infer.runtime.errors import InferWarning, OptionWarning

    if isinstance(message, OptionWarning):
        output.warn(message.worded(flag_of))  # the option named by its flag
    elif issubclass(category, InferWarning):
        output.warn(str(message))
    else:
        _python_showwarning(message, category, *args, **kwargs)


_python_showwarning = warnings.showwarning


def _run(argv: list[str] | None) -> int:
    from typer.main import get_command

    warnings.showwarning = _show_warning

    from infer.runtime.errors import InferError, Interrupted, OutputError, StorageError, Terminated

    from .signals import terminate_cleanly

    try:
        with terminate_cleanly():
            result = get_command(app).main(args=argv, prog_name="infer", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except Terminated as e:  # the `finally`s ran (no temp file left): exit as if killed by it
        return e.exit_code
    except typer.Exit as e:  # the pinned Typer (0.26-0.28) vendors click: its Exit is this
        return e.exit_code
    except typer.TyperException as e:  # click's ClickException (Typer's vendored click) is one
        output.error(_usage_message(e))
        return int(getattr(e, "exit_code", 2))
    except OutputError as e:  # stdout full or unwritable: say so once, not again at exit
        _discard_stdout()
        output.error(str(e))
        return exit_code(e)
    except Interrupted:
        return 130
    except InferError as e:
        if os.environ.get("INFER_DEBUG"):
            raise
        output.error(e.worded(flag_of))  # options named by their flags
        return exit_code(e)
    except (KeyboardInterrupt, typer.Abort):
        output.say("")
        return 130
    except (output.OutputClosed, BrokenPipeError):
        # The reader went away (`| head`): stop quietly; silence the flush at exit too.
        _discard_stdout()
        return 0
    except OSError as e:  # a file no typed error covers: still name it and what to do
        if os.environ.get("INFER_DEBUG") or not e.filename:
            return _unexpected(e)
        output.error(str(StorageError(e.filename, e, "use")))
        return 1
    except Exception as e:  # a bug: still one line, unless debugging
        return _unexpected(e)


def exit_code(e: InferError) -> int:
    """The exit code of a runtime error: 2 for a usage error, 130 for Ctrl-C, else 1. The
    runtime's errors carry no codes: exit codes are the command line's business."""
    from infer.runtime.errors import Interrupted, UsageError

    codes = ((Interrupted, 130), (UsageError, 2))
    return next((code for kind, code in codes if isinstance(e, kind)), 1)


def _unexpected(e: Exception) -> int:
    if os.environ.get("INFER_DEBUG"):
        raise e
    output.error(f"unexpected {type(e).__name__}: {e} (INFER_DEBUG=1 shows the traceback)")
    return 1


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null, so that what is still buffered is dropped at exit instead of
    failing again ("Exception ignored ..." and exit code 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


USAGE_EXIT = 2  # click's UsageError (and only it, of click's errors) exits with 2


def _usage_message(e: Any) -> str:
    message = e.format_message().replace("\n", " ")
    ctx = getattr(e, "ctx", None)
    if getattr(e, "exit_code", None) == USAGE_EXIT and ctx is not None:  # a click UsageError
        message += f" (see '{ctx.command_path} --help')"
    return message
