"""Commands built on everything below: bench, perplexity, quantize, embed (docs/architecture.md
has the map). Nothing is imported here."""
