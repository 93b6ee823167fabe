"""llama.cpp: the bindings, the engine (a loaded model, its context, sequences and samplers),
offload (how many layers fit on the GPUs), core_share (processes splitting the cores), tokens
(token-sequence helpers the engine and its users share), quantizer (llama.cpp's quantizer).

Who may import whom: modules here may import models/ (the GGUF header, split-file names) and the
shared base (errors, params, paths, files, progress); never generation/, tools/ or api. Only this
package touches llama_cpp (checked by the import-linter contracts in pyproject.toml), and only
this package touches the `_`-prefixed attributes of its objects: the rest uses the engine's
public methods (tests/test_layers.py checks both). Nothing is imported here: llama_cpp loads
only when a model does.
"""
