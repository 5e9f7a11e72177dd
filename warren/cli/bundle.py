"""Bundling a worker with esbuild before upload, when esbuild is installed (as wrangler does).

esbuild resolves what the runtime cannot: npm packages (bare specifiers) from
the project's node_modules. Where esbuild is not found, ``warren deploy``
uploads the modules as they are. Looked for, in order: ``$WARREN_ESBUILD``,
``node_modules/.bin/esbuild`` in the project or above it, then ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from warren.config import ConfigError, ModuleFile, collect_modules


def find_esbuild(project_dir: Path) -> str | None:
    configured = os.environ.get("WARREN_ESBUILD")
    if configured:
        return configured
    for directory in (project_dir, *project_dir.parents):
        candidate = directory / "node_modules" / ".bin" / "esbuild"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("esbuild")


def bundle(entry: Path, esbuild: str) -> list[ModuleFile]:
    """One ES module holding the entry and everything it imports, plus its wasm modules.

    WebAssembly stays a module of its own (the runtime compiles it), so
    ``*.wasm`` imports are left to the runtime, with their relative names.
    """
    entry = entry.resolve()
    files = collect_modules(entry)
    if files[0].kind != "esm":
        return files  # a service-worker script: nothing to bundle
    with tempfile.TemporaryDirectory(prefix="warren-bundle-") as workdir:
        output = Path(workdir) / files[0].name
        command = [
            esbuild,
            str(entry),
            "--bundle",
            "--format=esm",
            "--platform=neutral",
            "--target=es2022",
            "--main-fields=module,main",
            "--conditions=workerd,worker,browser",
            "--external:cloudflare:*",
            "--external:*.wasm",
            "--loader:.txt=text",
            "--loader:.html=text",
            "--log-level=error",
            f"--outfile={output}",
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=entry.parent)
        except OSError as exc:
            raise ConfigError(f"cannot run esbuild ({esbuild}): {exc}") from None
        if result.returncode != 0:
            raise ConfigError(f"esbuild could not bundle {files[0].name}:\n{result.stderr.strip()}")
        bundled = ModuleFile(files[0].name, "esm", output.read_bytes())
    return [bundled, *(file for file in files[1:] if file.kind == "wasm")]
