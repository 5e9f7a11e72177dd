"""Engine layer: V8 isolates behind a small interface.

Owns: creating and disposing isolates, compiling and running scripts, calling
named entry points, the CPU-time watchdog, the heap limit, and termination.

May call: the V8 binding (stpyv8). This package is the only place that imports
it, so another binding could replace it behind the same ``Isolate`` interface.

Must not touch: HTTP, sockets, asyncio, scripts' meaning. Values crossing this
boundary are plain Python primitives (str, int, float, bool, None); no object of
the binding ever leaves this package.
"""

from warren.engine._isolate import (
    CpuLimitExceeded,
    EngineError,
    Isolate,
    IsolateTerminated,
    MemoryLimitExceeded,
    ScriptError,
    configure,
    set_abort_hook,
)

__all__ = [
    "CpuLimitExceeded",
    "EngineError",
    "Isolate",
    "IsolateTerminated",
    "MemoryLimitExceeded",
    "ScriptError",
    "configure",
    "set_abort_hook",
]
