"""infer's command line: Typer commands that parse options, call infer.runtime, and render."""
