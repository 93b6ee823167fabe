"""`python -m infer` and the `infer` command's entry point.

Ctrl-C while Python is still importing infer's modules (its first ~0.1 s) would otherwise end
in a KeyboardInterrupt traceback: it exits 130 quietly, as it does later."""

import sys


def entry() -> None:
    try:
        from infer.cli.app import main

        main()  # maps Ctrl-C to 130 itself once its handlers are in place
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)


if __name__ == "__main__":
    entry()
