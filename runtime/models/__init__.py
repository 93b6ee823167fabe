"""Models: finding, pulling, storing and listing GGUF files; never loads llama.cpp
(docs/architecture.md has the map). Nothing is imported here: it stays cheap to import."""
