"""`infer serve`: an OpenAI-compatible HTTP server over the runtime.

    http.py / routes   (starlette) requests → backend.TextRequest, answers in OpenAI's shapes
    backend.py         the contract between the HTTP side and the models: submit, stream, cancel
    pool.py            the models a server holds: loaded at start or on demand, LRU unloaded
    scheduler.py       continuous batching: one decode thread per model, many sequences per step

The top layer of infer.runtime beside tools/: it may import everything below (api, generation,
llama, models, the base); nothing in the runtime imports it. Only this package imports starlette.
"""
