"""llama.cpp, and the only package that touches it (docs/architecture.md has the map).
Nothing is imported here: llama_cpp loads only when a model does."""
