"""The public surface only grows on purpose."""

import warren
import warren.engine
import warren.runtime


def test_exported_names() -> None:
    assert warren.__all__ == ["__version__"]
    assert sorted(warren.engine.__all__) == [
        "CpuLimitExceeded",
        "EngineError",
        "Isolate",
        "IsolateTerminated",
        "MemoryLimitExceeded",
        "ScriptError",
        "configure",
        "set_abort_hook",
    ]
    assert sorted(warren.runtime.__all__) == [
        "Compiler",
        "IncomingRequest",
        "Module",
        "Reply",
        "ScriptLoadError",
        "Worker",
        "WorkerScript",
    ]


def test_only_the_engine_imports_the_v8_binding() -> None:
    from pathlib import Path

    package = Path(warren.__file__).parent
    importers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "_STPyV8" in path.read_text() or "import STPyV8" in path.read_text()
    )
    assert importers == ["engine/_isolate.py"]
