"""Reading a Worker project as wrangler does: a script file, or a directory with
``wrangler.toml`` / ``wrangler.json`` / ``wrangler.jsonc``.

Only turns files into a ``WorkerScript``; knows nothing of servers or isolates.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5

from warren.runtime import Module, WorkerScript
from warren.runtime.script import DEFAULT_CPU_MS, DEFAULT_MEMORY_MB

CONFIG_NAMES = ("wrangler.toml", "wrangler.json", "wrangler.jsonc")
SUPPORTED_KEYS = {"name", "main", "compatibility_date", "vars", "limits", "triggers"}
SUPPORTED_LIMITS = {"cpu_ms"}
MAX_CPU_MS = 300_000  # Workers' own ceiling for [limits] cpu_ms
MAX_SCRIPT_BYTES = 10 * 1024 * 1024
# wrangler's default module rules: file suffix -> the runtime's module kind
MODULE_RULES = {".js": "esm", ".mjs": "esm", ".json": "json", ".txt": "text", ".html": "text", ".wasm": "wasm"}
# what the runtime treats as module syntax: a line starting with import/export
_MODULE_SYNTAX = re.compile(r"^[ \t]*(?:import[\s{*'\"]|export[\s{*])", re.M)
# a relative specifier after `from` (import/export … from) or `import` (side effect, dynamic import())
_RELATIVE_IMPORT = re.compile(r"""(?:\bfrom|\bimport)\s*\(?\s*(["'])(\.\.?/[^"'\n]+)\1""")
_LINE_COMMENT = re.compile(r"^[ \t]*//.*$", re.M)  # whole-line comments only: `//` in strings is common


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
    crons: list[str] = field(default_factory=list)  # [triggers] crons

    @property
    def watch_paths(self) -> list[Path]:
        """What to watch for changes: the script's directory and the config file."""
        paths = [self.script_path.parent]
        if self.config_path is not None and self.config_path.parent != self.script_path.parent:
            paths.append(self.config_path)
        return paths

    def script(self, memory_mb: int = DEFAULT_MEMORY_MB) -> WorkerScript:
        """Read the script and the modules it imports now; raises ConfigError if it cannot."""
        main, *others = collect_modules(self.script_path)
        return WorkerScript(
            name=self.name,
            source=_text(main),
            filename=main.name,
            modules=tuple(Module(file.name, file.kind, _text(file)) for file in others),
            compatibility_date=self.compatibility_date,
            vars=dict(self.vars),
            cpu_ms=self.cpu_ms,
            memory_mb=memory_mb,
        )


def _text(file: ModuleFile) -> str:
    # Binary modules cross to the runtime as latin-1 text, one character per byte.
    if file.kind in ("wasm", "data"):
        return file.data.decode("latin-1")
    try:
        return file.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file.name} is not UTF-8: {exc}") from None


@dataclass(frozen=True)
class ModuleFile:
    """A module on disk: its name (path relative to the entry's directory), kind and bytes.

    ``kind`` is one of the runtime's module kinds, or ``script`` for an entry
    without module syntax (a service-worker script).
    """

    name: str
    kind: str
    data: bytes


def _resolve_import(importer: Path, specifier: str) -> Path | None:
    base = (importer.parent / specifier).resolve()
    candidates = [base]
    if base.suffix not in MODULE_RULES:
        candidates += [base.with_name(base.name + suffix) for suffix in (".js", ".mjs")]
        candidates += [base / "index.js", base / "index.mjs"]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def collect_modules(entry: Path, warn: Callable[[str], None] | None = None) -> list[ModuleFile]:
    """The entry module and what it imports by relative path, recursively; the entry first.

    Imports are found by a regular expression, not a parser (no bundling): a
    bare specifier (an npm package) is not followed. Raises ConfigError for a
    module outside the entry's directory, of an unknown type, or unreadable,
    and when the total passes the script size limit.
    """
    entry = entry.resolve()
    root = entry.parent
    files: list[ModuleFile] = []
    seen: set[Path] = set()
    pending = [entry]
    total = 0
    while pending:
        path = pending.pop(0)
        if path in seen:
            continue
        seen.add(path)
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            raise ConfigError(f"{path} is outside {root}, the entry module's directory") from None
        kind = MODULE_RULES.get(path.suffix)
        if kind is None:
            raise ConfigError(f"{name}: modules may be {', '.join(MODULE_RULES)} files")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        total += len(data)
        if total > MAX_SCRIPT_BYTES:
            raise ConfigError(f"the worker is {total} bytes or more; the limit is {MAX_SCRIPT_BYTES}")
        if kind == "esm":
            try:
                source = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{name} is not UTF-8: {exc}") from None
            if path == entry and not _MODULE_SYNTAX.search(source):
                return [ModuleFile(name, "script", data)]  # a service-worker script imports nothing
            for match in _RELATIVE_IMPORT.finditer(_LINE_COMMENT.sub("", source)):
                found = _resolve_import(path, match.group(2))
                if found is None:
                    if warn is not None:
                        warn(f"{name} imports {match.group(2)!r}, which does not exist")
                elif found not in seen:
                    pending.append(found)
        files.append(ModuleFile(name, kind, data))
    return files


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


def _crons(triggers: Any, config_path: Path | None) -> list[str]:
    """``[triggers] crons``, each checked to be a cron expression (as wrangler's, five fields)."""
    from croniter import croniter

    if not isinstance(triggers, dict) or not isinstance(triggers.get("crons", []), list):
        raise ConfigError(f"{config_path}: [triggers] crons must be a list of cron expressions")
    crons = []
    for expression in triggers.get("crons", []):
        if not isinstance(expression, str) or len(expression.split()) != 5 or not croniter.is_valid(expression):
            raise ConfigError(f"{config_path}: {expression!r} is not a cron expression like \"*/5 * * * *\"")
        crons.append(expression)
    return crons


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

    crons = _crons(config.get("triggers", {}), config_path)

    return Project(
        crons=crons,
        script_path=script_path,
        config_path=config_path,
        name=name,
        compatibility_date=compatibility_date,
        vars=variables,
        cpu_ms=cpu_ms,
        warnings=warnings,
    )
