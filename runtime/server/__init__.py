"""`infer serve`: the HTTP server, the runtime's top layer (docs/architecture.md has the map)."""
