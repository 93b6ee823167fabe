"""llama.cpp: the bindings, the engine (a loaded model, its context, sequences and samplers),
offload (how many layers fit on the GPUs), core_share (processes splitting the cores), tokens
(token-sequence helpers the engine and its users share).

Who may import whom: modules here may import models/ (the GGUF header, split-file names) and the
shared base (errors, params, paths, files, progress); never generation/, tools/ or api. Only this
package touches llama_cpp. Checked by the import-linter contracts in pyproject.toml. Nothing is
imported here: llama_cpp loads only when a model does.
"""
