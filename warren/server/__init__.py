"""Server layer: the HTTP front, the supervisor and the runtime processes.

Owns: listening sockets (uvicorn, an ASGI server), request limits (body size,
header size), routing a request to a worker, the frame protocol to runtime
processes, restarting a runtime process that died and replaying what can be
replayed, and ``warren dev``'s serving loop with reload.

May call: warren.runtime (inside runtime processes only) and warren.config.
Must not touch: the V8 binding, and isolates in the supervisor process: V8's
out-of-memory abort would take the listening socket down with it.
"""
