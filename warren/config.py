"""Reading a Worker project as wrangler does: a script file, or a directory with
``wrangler.toml`` / ``wrangler.json`` / ``wrangler.jsonc``.

Only turns files into a ``WorkerScript``; knows nothing of servers or isolates.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5

from warren.runtime import Module, WorkerScript
from warren.runtime.script import DEFAULT_CPU_MS, DEFAULT_MEMORY_MB

CONFIG_NAMES = ("wrangler.toml", "wrangler.json", "wrangler.jsonc")
SUPPORTED_KEYS = {"name", "main", "compatibility_date", "vars", "limits"}
SUPPORTED_LIMITS = {"cpu_ms"}
MAX_CPU_MS = 300_000  # Workers' own ceiling for [limits] cpu_ms
MAX_SCRIPT_BYTES = 10 * 1024 * 1024
MODULE_RULES = {".js": "esm", ".mjs": "esm", ".json": "json", ".txt": "text", ".html": "text", ".wasm": "wasm"}


class ConfigError(Exception):
    """The project cannot be read; the message says which file and why."""


@dataclass
class Project:
    """A worker project on disk: where its files are and how to build its script."""

    script_path: Path
    config_path: Path | None
    name: str
    compatibility_date: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    cpu_ms: float = DEFAULT_CPU_MS
    warnings: list[str] = field(default_factory=list)

    @property
    def watch_paths(self) -> list[Path]:
        """What to watch for changes: the script's directory and the config file."""
        paths = [self.script_path.parent]
        if self.config_path is not None and self.config_path.parent != self.script_path.parent:
            paths.append(self.config_path)
        return paths

    def script(self, memory_mb: int = DEFAULT_MEMORY_MB) -> WorkerScript:
        """Read the script file now; raises ConfigError if it cannot be read."""
        try:
            data = self.script_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {self.script_path}: {exc.strerror}") from None
        if len(data) > MAX_SCRIPT_BYTES:
            raise ConfigError(f"{self.script_path} is {len(data)} bytes; the limit is {MAX_SCRIPT_BYTES}")
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{self.script_path} is not UTF-8: {exc}") from None
        probe = WorkerScript(name=self.name, source=source, filename=self.script_path.name)
        modules = self.other_modules(len(data)) if probe.is_module else ()
        return WorkerScript(
            name=self.name,
            source=source,
            modules=modules,
            filename=self.script_path.name,
            compatibility_date=self.compatibility_date,
            vars=dict(self.vars),
            cpu_ms=self.cpu_ms,
            memory_mb=memory_mb,
        )


    def other_modules(self, budget_used: int = 0) -> tuple[Module, ...]:
        """Every other module file under the main script's directory, named by relative path.

        As wrangler's default module rules: .js/.mjs are ES modules, .txt/.html
        text, .json JSON, .wasm WebAssembly. Hidden directories and node_modules
        are skipped; the total stays within the script size limit.
        """
        root = self.script_path.parent
        modules = []
        total = budget_used
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path == self.script_path or not path.is_file() or path.suffix not in MODULE_RULES:
                continue
            if any(part.startswith(".") or part == "node_modules" for part in relative.parts):
                continue
            data = path.read_bytes()
            total += len(data)
            if total > MAX_SCRIPT_BYTES:
                raise ConfigError(f"the worker's modules add up to more than {MAX_SCRIPT_BYTES} bytes")
            kind = MODULE_RULES[path.suffix]
            try:
                text = data.decode("latin-1") if kind == "wasm" else data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path} is not UTF-8: {exc}") from None
            modules.append(Module(relative.as_posix(), kind, text))
        return tuple(modules)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json5.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is malformed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table/object at the top level")
    return data


def _find_config(directory: Path) -> Path | None:
    for name in CONFIG_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def load_project(target: str | Path) -> Project:
    """A project from a script file (looking for a config beside it) or a directory."""
    path = Path(target).resolve()
    if path.is_dir():
        config_path = _find_config(path)
        if config_path is None:
            raise ConfigError(f"{path} holds none of {', '.join(CONFIG_NAMES)}")
    elif path.is_file():
        config_path = _find_config(path.parent)
    else:
        raise ConfigError(f"{target}: no such file or directory")

    config = _read_config(config_path) if config_path is not None else {}
    warnings = [
        f"{config_path.name}: ignoring '{key}', which warren does not support yet"
        for key in config
        if key not in SUPPORTED_KEYS and config_path is not None
    ]

    if path.is_dir():
        main = config.get("main")
        if not isinstance(main, str) or not main:
            raise ConfigError(f"{config_path}: 'main' must name the worker's entry script")
        script_path = (path / main).resolve()
    else:
        script_path = path
    if not script_path.is_file():
        raise ConfigError(f"{config_path or path}: the entry script {script_path} does not exist")

    name = config.get("name", script_path.stem if config_path is None else None)
    if not isinstance(name, str) or not name:
        name = script_path.parent.name or "worker"
    compatibility_date = config.get("compatibility_date", "")
    if not isinstance(compatibility_date, str):
        raise ConfigError(f"{config_path}: 'compatibility_date' must be a string like \"2024-09-23\"")

    variables = config.get("vars", {})
    if not isinstance(variables, dict):
        raise ConfigError(f"{config_path}: [vars] must be a table of names to values")

    cpu_ms: float = DEFAULT_CPU_MS
    limits = config.get("limits", {})
    if not isinstance(limits, dict):
        raise ConfigError(f"{config_path}: [limits] must be a table")
    for key in limits:
        if key not in SUPPORTED_LIMITS:
            warnings.append(f"{config_path.name if config_path else ''}: ignoring limits.{key}")
    if "cpu_ms" in limits:
        value = limits["cpu_ms"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_CPU_MS:
            raise ConfigError(f"{config_path}: limits.cpu_ms must be a number of milliseconds, 1 to {MAX_CPU_MS}")
        cpu_ms = float(value)

    return Project(
        script_path=script_path,
        config_path=config_path,
        name=name,
        compatibility_date=compatibility_date,
        vars=variables,
        cpu_ms=cpu_ms,
        warnings=warnings,
    )
