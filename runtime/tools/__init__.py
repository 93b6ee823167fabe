"""Tools built on everything below: bench (`infer bench`), perplexity (`infer perplexity`),
quantize (`infer quantize`).

Who may import whom: modules here may import api, generation/, llama/, models/ and the shared base;
nothing in infer.runtime imports tools/ (the CLI does). Checked by the import-linter contracts in
pyproject.toml. Nothing is imported here.
"""
