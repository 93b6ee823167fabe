"""Generation on a loaded model: templates (chat templates in a sandbox), conversation (chat
state), loop (prompt tokens → text, Stats), speculative and draft_policy (--draft), batch
(--batch scheduling), batch_file (batch files parsed into validated prompts), prompt_cache and
prompt_store (KV state saved across runs).

Who may import whom: modules here may import llama/ (through the engine's interface), models/ and
the shared base; never tools/ or api. Checked by the import-linter contracts in pyproject.toml.
Named `generation`, not `generate`: `infer.runtime.generate` is the library's function, which a
subpackage of that name would shadow once imported. Nothing is imported here.
"""
