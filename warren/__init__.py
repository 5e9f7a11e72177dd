"""warren: an isolate-based serverless platform.

Layers, each a package: ``engine`` (V8 isolates), ``runtime`` (the JavaScript
environment and Worker instances), ``server`` (HTTP front, supervisor, runtime
processes), ``config`` (reading wrangler projects) and ``cli``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
