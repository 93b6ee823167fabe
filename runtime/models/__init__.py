"""Models: finding, pulling, storing and listing GGUF files; never loads llama.cpp.

refs (parse references), registry (aliases: the shipped models.toml ⊕ the user's), hub (the
Hugging Face Hub client), selection (quant tag → files), pull (download + verify), blob_store (the
one content-addressed store of verified files, its temp files and collector), hub_cache (Hub
manifests and snapshot links), quantized_store (models `infer quantize` made), resolve
(reference → local file), inventory (what `infer list`/`show` print), gguf (the header reader).

Who may import whom: modules here import each other and the shared base at the top of
infer.runtime (errors, params, paths, files, progress); never llama/, generation/, tools/, api or
llama_cpp. Every layer above may import this one. Checked by the import-linter contracts in
pyproject.toml. Nothing is imported here: `import infer.runtime.models` stays cheap.
"""
