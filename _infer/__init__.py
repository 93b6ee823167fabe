"""infer: run open LLMs locally from the command line."""

__version__ = "0.1.0"
