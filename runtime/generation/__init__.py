"""Generation on a loaded model (docs/architecture.md has the map). Named `generation`, not
`generate`: `infer.runtime.generate` is the library's function, which a subpackage of that name
would shadow once imported. Nothing is imported here."""
