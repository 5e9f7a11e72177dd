"""Runtime layer: what runs inside an isolate and the host side of its APIs.

Owns: the JavaScript every isolate gets before the tenant's script (js/ and the
vendored npm bundles in vendor/), turning a Worker script into something the
engine can run (module syntax, handlers), and the life of one Worker instance:
dispatching events, host operations (timers, request bodies), console output,
per-request CPU accounting and the outcome of each invocation.

May call: warren.engine. Must not touch: sockets, HTTP parsing, processes,
storage; it reports through the ``Reply`` callbacks it is given.
"""

from warren.runtime.script import Compiler, Module, ScriptLoadError, WorkerScript
from warren.runtime.worker import IncomingRequest, Reply, Worker

__all__ = ["Compiler", "IncomingRequest", "Module", "Reply", "ScriptLoadError", "Worker", "WorkerScript"]
