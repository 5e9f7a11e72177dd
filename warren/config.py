"""Reading a Worker project as wrangler does: a script file, or a directory with
``wrangler.toml`` / ``wrangler.json`` / ``wrangler.jsonc``.

Only turns files into a ``WorkerScript``; knows nothing of servers or isolates.
Which type a module file has follows wrangler's module rules (``[[rules]]``
before the defaults, with its ``fallthrough`` semantics); service-worker
scripts get their ``[wasm_modules]``, ``[text_blobs]`` and ``[data_blobs]`` as
globals (``WorkerScript.module_globals``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import json5

from warren.runtime import Module, WorkerScript
from warren.runtime.script import DEFAULT_CPU_MS, DEFAULT_MEMORY_MB, DEFAULT_SUBREQUEST_LIMIT

CONFIG_NAMES = ("wrangler.toml", "wrangler.json", "wrangler.jsonc")
SUPPORTED_KEYS = {
    "name", "main", "compatibility_date", "vars", "limits", "triggers",
    "rules", "wasm_modules", "text_blobs", "data_blobs",
    "services", "queues", "kv_namespaces", "durable_objects", "migrations",
}
SUPPORTED_LIMITS = {"cpu_ms", "subrequests"}
MAX_SUBREQUESTS = 10_000
MAX_CPU_MS = 300_000  # Workers' own ceiling for [limits] cpu_ms
MAX_SCRIPT_BYTES = 10 * 1024 * 1024
# wrangler's rule types -> the runtime's module kinds
RULE_TYPES = {"ESModule": "esm", "CommonJS": "commonjs", "Text": "text", "Data": "data", "CompiledWasm": "wasm"}
# Service-worker globals: config table -> module kind
BLOB_TABLES = {"wasm_modules": "wasm", "text_blobs": "text", "data_blobs": "data"}
# What JavaScript and JSON files are when no rule says otherwise (wrangler's
# bundler takes them in; warren runs them as modules of their own).
BUILTIN_KINDS = {".js": "esm", ".mjs": "esm", ".cjs": "commonjs", ".json": "json"}
# what the runtime treats as module syntax: a line starting with import/export
_MODULE_SYNTAX = re.compile(r"^[ \t]*(?:import[\s{*'\"]|export[\s{*])", re.M)
# a relative specifier after `from` (import/export … from) or `import` (side effect, dynamic import())
_RELATIVE_IMPORT = re.compile(r"""(?:\bfrom|\bimport)\s*\(?\s*(["'])(\.\.?/[^"'\n]+)\1""")
_RELATIVE_REQUIRE = re.compile(r"""\brequire\s*\(\s*(["'])(\.\.?/[^"'\n]+)\1\s*\)""")
# wrangler's spelling for "this .wasm file as a WebAssembly.Module" (its default rules match it)
_WASM_MODULE_SUFFIX = "?module"
_LINE_COMMENT = re.compile(r"^[ \t]*//.*$", re.M)  # whole-line comments only: `//` in strings is common


class ConfigError(Exception):
    """The project cannot be read; the message says which file and why."""


def _glob_pattern(glob: str) -> re.Pattern[str]:
    """A wrangler glob as a regular expression on a module's path: ``**/`` is any
    number of directories, ``*`` any run of characters but ``/``, ``{a,b}`` either."""
    glob = glob.removeprefix("./")
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
            continue
        char = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 1
        elif char == "*":
            out.append("[^/]*")
        elif char == "{":
            out.append("(?:")
            depth += 1
        elif char == "}" and depth:
            out.append(")")
            depth -= 1
        elif char == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(char))
        i += 1
    if depth:
        raise ValueError("unbalanced '{'")
    return re.compile("".join(out))


@dataclass(frozen=True)
class ModuleRule:
    """One of wrangler's ``[[rules]]``: files matching ``globs`` are modules of ``type``."""

    type: str  # a key of RULE_TYPES
    globs: tuple[str, ...]
    fallthrough: bool | None = None
    patterns: tuple[re.Pattern[str], ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Raises ValueError for a malformed glob."""
        object.__setattr__(self, "patterns", tuple(_glob_pattern(glob) for glob in self.globs))

    def matches(self, name: str) -> bool:
        return any(pattern.fullmatch(name) for pattern in self.patterns)

    def describe(self) -> str:
        return f"{{type = {self.type!r}, globs = {list(self.globs)!r}}}"


DEFAULT_RULES = (
    ModuleRule("Text", ("**/*.txt", "**/*.html", "**/*.sql")),
    ModuleRule("Data", ("**/*.bin",)),
    ModuleRule("CompiledWasm", ("**/*.wasm", "**/*.wasm?module")),
)


@dataclass(frozen=True)
class ModuleRules:
    """The project's rules followed by wrangler's defaults, as wrangler combines them.

    A rule without ``fallthrough = true`` is the last of its type: later rules of
    that type (defaults included) are removed, and a module only they would
    match is an error, not silently another type.
    """

    rules: tuple[ModuleRule, ...] = DEFAULT_RULES
    removed: tuple[ModuleRule, ...] = ()

    @classmethod
    def combine(cls, user_rules: tuple[ModuleRule, ...], warn: Callable[[str], None] | None = None) -> ModuleRules:
        active: list[ModuleRule] = []
        removed: list[ModuleRule] = []
        closed_by: dict[str, ModuleRule] = {}
        for rule in (*user_rules, *DEFAULT_RULES):
            closer = closed_by.get(rule.type)
            if closer is not None:
                removed.append(rule)
                if closer.fallthrough is None and warn is not None:
                    default = " (a default rule)" if rule in DEFAULT_RULES else ""
                    warn(
                        f"the module rule {closer.describe()} has no `fallthrough = true`, so "
                        f"{rule.describe()}{default} is ignored; add `fallthrough = true` to use both, "
                        "or `fallthrough = false` to silence this warning"
                    )
                continue
            active.append(rule)
            if rule.fallthrough is not True:
                closed_by[rule.type] = rule
        return cls(tuple(active), tuple(removed))

    def kind_of(self, name: str) -> str | None:
        """The module kind of the file ``name`` (relative path), or None if nothing matches it."""
        for rule in self.rules:
            if rule.matches(name):
                return RULE_TYPES[rule.type]
        for rule in self.removed:
            if rule.matches(name):
                raise ConfigError(
                    f"{name} matches the module rule {rule.describe()}, which is ignored because an "
                    f"earlier rule of type {rule.type!r} has no `fallthrough = true`"
                )
        return BUILTIN_KINDS.get(PurePosixPath(name).suffix)


@dataclass
class Project:
    """A worker project on disk: where its files are and how to build its script."""

    script_path: Path
    config_path: Path | None
    name: str
    compatibility_date: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    cpu_ms: float = DEFAULT_CPU_MS
    subrequests: int = DEFAULT_SUBREQUEST_LIMIT  # [limits] subrequests
    warnings: list[str] = field(default_factory=list)
    crons: list[str] = field(default_factory=list)  # [triggers] crons
    rules: ModuleRules = field(default_factory=ModuleRules)
    # [wasm_modules], [text_blobs], [data_blobs]: global name -> (module kind, file)
    blobs: dict[str, tuple[str, Path]] = field(default_factory=dict)
    # [[services]] and [[queues.producers]] as binding specs; [[queues.consumers]] (see _queues)
    service_bindings: list[dict[str, Any]] = field(default_factory=list)
    queue_bindings: list[dict[str, Any]] = field(default_factory=list)
    queue_consumers: list[dict[str, Any]] = field(default_factory=list)
    # [[kv_namespaces]] as binding specs ("namespace_id" empty where the config gives no id)
    kv_namespaces: list[dict[str, Any]] = field(default_factory=list)
    # [[durable_objects.bindings]] as binding specs (see durable_object_bindings)
    durable_objects: list[dict[str, Any]] = field(default_factory=list)
    # [[migrations]], checked (durable_object_classes), in order: what `warren deploy` uploads
    migrations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def watch_paths(self) -> list[Path]:
        """What to watch for changes: the script's directory, the config file and blobs elsewhere."""
        paths = [self.script_path.parent]
        if self.config_path is not None and self.config_path.parent != self.script_path.parent:
            paths.append(self.config_path)
        for _, path in self.blobs.values():
            if not path.is_relative_to(self.script_path.parent) and path not in paths:
                paths.append(path)
        return paths

    def modules(self, warn: Callable[[str], None] | None = None) -> list[ModuleFile]:
        """The entry, then every other module: what it imports, or for a service-worker
        script its blobs (each named by its path relative to the config's directory)."""
        files = collect_modules(self.script_path, warn, self.rules)
        if not self.blobs:
            return files
        if files[0].kind != "script":
            tables = ", ".join(f"[{table}]" for table in BLOB_TABLES)
            raise ConfigError(
                f"{files[0].name} is an ES module: {tables} are for service-worker scripts; "
                "import the files from the module instead (import mod from \"./x.wasm\")"
            )
        base = self.config_path.parent if self.config_path is not None else self.script_path.parent
        total = len(files[0].data)
        by_name: dict[str, ModuleFile] = {}
        for kind, path in self.blobs.values():
            name = path.relative_to(base).as_posix()
            existing = by_name.get(name)
            if existing is not None:
                if existing.kind != kind:
                    raise ConfigError(f"{name} is bound as both {existing.kind} and {kind}")
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
            total += len(data)
            if total > MAX_SCRIPT_BYTES:
                raise ConfigError(f"the worker is {total} bytes or more; the limit is {MAX_SCRIPT_BYTES}")
            by_name[name] = ModuleFile(name, kind, data)
        return [files[0], *by_name.values()]

    def module_globals(self) -> dict[str, str]:
        """Global name -> module name, for a service-worker script's blobs."""
        base = self.config_path.parent if self.config_path is not None else self.script_path.parent
        return {name: path.relative_to(base).as_posix() for name, (_, path) in self.blobs.items()}

    def script(self, memory_mb: int = DEFAULT_MEMORY_MB) -> WorkerScript:
        """Read the script and the modules it imports now; raises ConfigError if it cannot."""
        main, *others = self.modules()
        return WorkerScript(
            name=self.name,
            source=_text(main),
            filename=main.name,
            modules=tuple(Module(file.name, file.kind, _text(file)) for file in others),
            module_globals=self.module_globals(),
            compatibility_date=self.compatibility_date,
            vars=dict(self.vars),
            cpu_ms=self.cpu_ms,
            subrequest_limit=self.subrequests,
            memory_mb=memory_mb,
            bindings=(
                *self.service_bindings, *self.queue_bindings, *local_kv_namespaces(self.kv_namespaces),
                *self.durable_objects,
            ),
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
    if specifier.endswith(".wasm" + _WASM_MODULE_SUFFIX):
        specifier = specifier.removesuffix(_WASM_MODULE_SUFFIX)
    base = (importer.parent / specifier).resolve()
    candidates = [base, *(base.with_name(base.name + suffix) for suffix in (".js", ".mjs"))]
    candidates += [base / "index.js", base / "index.mjs"]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def collect_modules(
    entry: Path, warn: Callable[[str], None] | None = None, rules: ModuleRules | None = None
) -> list[ModuleFile]:
    """The entry module and what it imports by relative path, recursively; the entry first.

    Imports are found by a regular expression, not a parser (no bundling): a
    bare specifier (an npm package) is not followed. Each module's type comes
    from ``rules`` (default: wrangler's default rules). Raises ConfigError for
    a module outside the entry's directory, of no known type, or unreadable,
    and when the total passes the script size limit.
    """
    rules = rules if rules is not None else ModuleRules()
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
        kind = "esm" if path == entry else rules.kind_of(name)
        if kind is None:
            raise ConfigError(
                f"{name}: no module rule matches it (by default, modules are .js, .mjs, .cjs, .json, "
                ".txt, .html, .sql, .bin and .wasm files; add a [[rules]] entry for others)"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        total += len(data)
        if total > MAX_SCRIPT_BYTES:
            raise ConfigError(f"the worker is {total} bytes or more; the limit is {MAX_SCRIPT_BYTES}")
        if kind in ("esm", "commonjs"):
            try:
                source = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{name} is not UTF-8: {exc}") from None
            if path == entry and not _MODULE_SYNTAX.search(source):
                return [ModuleFile(name, "script", data)]  # a service-worker script imports nothing
            imports = _RELATIVE_IMPORT if kind == "esm" else _RELATIVE_REQUIRE
            for match in imports.finditer(_LINE_COMMENT.sub("", source)):
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


_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_SERVICE_KEYS = {"binding", "service", "entrypoint", "environment"}
_PRODUCER_KEYS = {"binding", "queue", "delivery_delay"}
# [[queues.consumers]] key -> (the stored setting, lowest, highest, default); as Workers limits them
CONSUMER_SETTINGS = {
    "max_batch_size": ("batch_size", 1, 100, 10),
    "max_batch_timeout": ("max_wait_ms", 0, 60, 5),
    "max_retries": ("max_retries", 0, 100, 3),
    "retry_delay": ("retry_delay", 0, 43200, 0),
}
_CONSUMER_KEYS = {"queue", "dead_letter_queue", "max_concurrency", *CONSUMER_SETTINGS}


def _binding_name(entry: dict[str, Any], where: str, taken: set[str]) -> str:
    name = entry.get("binding")
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ConfigError(f"{where}: 'binding' must be the JavaScript name of the binding (env.NAME)")
    if name in taken:
        raise ConfigError(f"{where}: the binding {name} is defined twice")
    taken.add(name)
    return name


def _entry_name(value: Any, what: str, where: str) -> str:
    from warren.store.errors import InvalidInput
    from warren.store.validation import queue_name, script_name

    try:
        return (queue_name if what == "queue" else script_name)(value)
    except InvalidInput as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _services(value: Any, where: str, warnings: list[str]) -> list[dict[str, Any]]:
    """``[[services]] binding, service, entrypoint?``: service bindings (issue #10)."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'services' must be a list of {{binding, service}} tables ([[services]])")
    bindings: list[dict[str, Any]] = []
    taken: set[str] = set()
    for index, entry in enumerate(value, 1):
        at = f"{where}: [[services]] #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table with 'binding' and 'service'")
        spec: dict[str, Any] = {"type": "service", "name": _binding_name(entry, at, taken)}
        spec["service"] = _entry_name(entry.get("service"), "service", at)
        entrypoint = entry.get("entrypoint")
        if entrypoint is not None:
            if not isinstance(entrypoint, str) or not _IDENTIFIER.fullmatch(entrypoint):
                raise ConfigError(f"{at}: 'entrypoint' must name an exported class (a JavaScript identifier)")
            spec["entrypoint"] = entrypoint
        for key in sorted(set(entry) - _SERVICE_KEYS):
            warnings.append(f"{at}: ignoring '{key}'")
        bindings.append(spec)
    return bindings


def _number(value: Any, what: str, low: int, high: int, where: str, whole: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{where}: {what} must be a number from {low} to {high}")
    if whole and not float(value).is_integer():
        raise ConfigError(f"{where}: {what} must be a whole number")
    return float(value)


def _queues(value: Any, where: str, warnings: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``[[queues.producers]] binding, queue, delivery_delay?`` (binding specs) and
    ``[[queues.consumers]] queue, max_batch_size, max_batch_timeout, max_retries,
    dead_letter_queue, retry_delay`` (consumer settings, as the store keeps them)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'queues' must be a table with 'producers' and/or 'consumers' lists")
    for key in sorted(set(value) - {"producers", "consumers"}):
        warnings.append(f"{where}: ignoring queues.{key}")
    producers, consumers = value.get("producers", []), value.get("consumers", [])
    if not isinstance(producers, list) or not isinstance(consumers, list):
        raise ConfigError(f"{where}: queues.producers and queues.consumers must be lists ([[queues.producers]])")
    bindings: list[dict[str, Any]] = []
    taken: set[str] = set()
    for index, entry in enumerate(producers, 1):
        at = f"{where}: [[queues.producers]] #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table with 'binding' and 'queue'")
        spec: dict[str, Any] = {"type": "queue", "name": _binding_name(entry, at, taken)}
        spec["queue_name"] = _entry_name(entry.get("queue"), "queue", at)
        if "delivery_delay" in entry:
            spec["delivery_delay"] = int(_number(entry["delivery_delay"], "delivery_delay", 0, 43200, at))
        for key in sorted(set(entry) - _PRODUCER_KEYS):
            warnings.append(f"{at}: ignoring '{key}'")
        bindings.append(spec)
    settings: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, entry in enumerate(consumers, 1):
        at = f"{where}: [[queues.consumers]] #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table with 'queue'")
        consumer: dict[str, Any] = {"queue": _entry_name(entry.get("queue"), "queue", at)}
        if consumer["queue"] in seen:
            raise ConfigError(f"{at}: the queue {consumer['queue']} is consumed twice")
        seen.add(consumer["queue"])
        for key, (setting, low, high, default) in CONSUMER_SETTINGS.items():
            number = _number(entry.get(key, default), key, low, high, at, whole=setting != "max_wait_ms")
            consumer[setting] = int(number * 1000) if setting == "max_wait_ms" else int(number)
        dead_letter = entry.get("dead_letter_queue")
        consumer["dead_letter_queue"] = _entry_name(dead_letter, "queue", at) if dead_letter is not None else ""
        if consumer["dead_letter_queue"] == consumer["queue"]:
            raise ConfigError(f"{at}: a queue cannot be its own dead letter queue")
        for key in sorted(set(entry) - _CONSUMER_KEYS):
            warnings.append(f"{at}: ignoring '{key}'")
        settings.append(consumer)
    return bindings, settings
_RULE_KEYS = {"type", "globs", "fallthrough"}


def _rules(value: Any, where: str, warnings: list[str]) -> tuple[ModuleRule, ...]:
    """``[[rules]]``: each ``{type, globs, fallthrough?}``, checked as wrangler checks them."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'rules' must be a list of {{type, globs, fallthrough}} tables ([[rules]])")
    rules = []
    for index, entry in enumerate(value, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: rule #{index} must be a table with 'type' and 'globs'")
        kind = entry.get("type")
        if kind not in RULE_TYPES:
            raise ConfigError(f"{where}: rule #{index} has type {kind!r}; it must be one of {', '.join(RULE_TYPES)}")
        globs = entry.get("globs")
        if not isinstance(globs, list) or not globs or not all(isinstance(glob, str) and glob for glob in globs):
            raise ConfigError(f"{where}: rule #{index} needs 'globs', a list of patterns like \"**/*.txt\"")
        fallthrough = entry.get("fallthrough")
        if fallthrough is not None and not isinstance(fallthrough, bool):
            raise ConfigError(f"{where}: rule #{index}'s 'fallthrough' must be true or false")
        for key in sorted(set(entry) - _RULE_KEYS):
            warnings.append(f"{where}: ignoring '{key}' in rule #{index}")
        try:
            rules.append(ModuleRule(kind, tuple(globs), fallthrough))
        except ValueError as exc:
            raise ConfigError(f"{where}: rule #{index} has a malformed glob: {exc}") from None
    return tuple(rules)


def _blobs(config: dict[str, Any], base: Path, where: str) -> dict[str, tuple[str, Path]]:
    """``[wasm_modules]``, ``[text_blobs]`` and ``[data_blobs]``: global name -> (kind, file)."""
    blobs: dict[str, tuple[str, Path]] = {}
    for table, kind in BLOB_TABLES.items():
        entries = config.get(table, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"{where}: [{table}] must be a table of global names to file paths")
        for name, file in entries.items():
            if not _IDENTIFIER.fullmatch(name):
                raise ConfigError(f"{where}: [{table}] {name!r} is not a JavaScript identifier")
            if name in blobs:
                raise ConfigError(f"{where}: the global {name} is bound twice")
            if not isinstance(file, str) or not file:
                raise ConfigError(f"{where}: [{table}] {name} must be the path of a file")
            path = (base / file).resolve()
            if not path.is_relative_to(base):
                raise ConfigError(f"{where}: [{table}] {name}: {file} is outside {base}")
            if not path.is_file():
                raise ConfigError(f"{where}: [{table}] {name}: {path} does not exist")
            blobs[name] = (kind, path)
    return blobs


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
    subrequests = DEFAULT_SUBREQUEST_LIMIT
    if "subrequests" in limits:
        value = limits["subrequests"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SUBREQUESTS:
            raise ConfigError(f"{config_path}: limits.subrequests must be a whole number, 1 to {MAX_SUBREQUESTS}")
        subrequests = value

    crons = _crons(config.get("triggers", {}), config_path)
    service_bindings = _services(config.get("services", []), str(config_path), warnings)
    queue_bindings, queue_consumers = _queues(config.get("queues", {}), str(config_path), warnings)
    kv_namespaces = kv_namespace_bindings(config.get("kv_namespaces", []), str(config_path), warnings)
    durable_objects = durable_object_bindings(config, name, str(config_path), warnings)

    where = str(config_path)
    rules = ModuleRules.combine(
        _rules(config.get("rules", []), where, warnings),
        lambda message: warnings.append(f"{config_path.name if config_path else ''}: {message}"),
    )
    base = config_path.parent if config_path is not None else script_path.parent
    blobs = _blobs(config, base, where)

    return Project(
        durable_objects=durable_objects,
        migrations=list(config.get("migrations", [])),  # checked by durable_object_bindings above
        kv_namespaces=kv_namespaces,
        service_bindings=service_bindings,
        queue_bindings=queue_bindings,
        queue_consumers=queue_consumers,
        rules=rules,
        blobs=blobs,
        crons=crons,
        script_path=script_path,
        config_path=config_path,
        name=name,
        compatibility_date=compatibility_date,
        vars=variables,
        cpu_ms=cpu_ms,
        subrequests=subrequests,
        warnings=warnings,
    )


_KV_NAMESPACE_KEYS = {"binding", "id", "preview_id"}


def kv_namespace_bindings(value: Any, where: str, warnings: list[str]) -> list[dict[str, Any]]:
    """``[[kv_namespaces]]``: ``{binding, id}`` tables, as ``kv_namespace`` binding specs.

    ``id`` may be left out for ``warren dev``, which then keeps the namespace's
    local data under the binding's name; ``warren deploy`` needs it.
    ``preview_id`` is accepted and ignored (there is no remote preview).
    """
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'kv_namespaces' must be a list of {{binding, id}} tables ([[kv_namespaces]])")
    specs: list[dict[str, Any]] = []
    for index, entry in enumerate(value, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: kv_namespaces #{index} must be a table with 'binding' and 'id'")
        binding = entry.get("binding")
        if not isinstance(binding, str) or not _IDENTIFIER.fullmatch(binding):
            raise ConfigError(f"{where}: kv_namespaces #{index} needs 'binding', a JavaScript identifier")
        if any(spec["name"] == binding for spec in specs):
            raise ConfigError(f"{where}: the KV binding {binding} is declared twice")
        namespace_id = entry.get("id", "")
        if not isinstance(namespace_id, str) or (namespace_id and not _NAMESPACE_ID.fullmatch(namespace_id)):
            raise ConfigError(f"{where}: kv_namespaces {binding}: 'id' must be a namespace id (letters, digits, -, _)")
        for key in sorted(set(entry) - _KV_NAMESPACE_KEYS):
            warnings.append(f"{where}: ignoring '{key}' in kv_namespaces {binding}")
        specs.append({"type": "kv_namespace", "name": binding, "namespace_id": namespace_id})
    return specs


_NAMESPACE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def local_kv_namespaces(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The specs as ``warren dev`` serves them: a namespace without an id is named after its binding."""
    return [{**spec, "namespace_id": spec["namespace_id"] or spec["name"]} for spec in specs]


def project_kv_namespaces(directory: Path) -> list[dict[str, Any]]:
    """The ``[[kv_namespaces]]`` of the wrangler config in ``directory`` (for ``warren kv --binding``)."""
    config_path = _find_config(directory)
    if config_path is None:
        raise ConfigError(f"{directory} holds none of {', '.join(CONFIG_NAMES)}")
    return kv_namespace_bindings(_read_config(config_path).get("kv_namespaces", []), str(config_path), [])


_DO_BINDING_KEYS = {"name", "class_name", "script_name", "environment"}
_MIGRATION_KEYS = {"tag", "new_classes", "new_sqlite_classes", "renamed_classes", "deleted_classes"}


def durable_object_classes(value: Any, where: str) -> dict[str, bool]:
    """``[[migrations]]`` applied in order: each class the worker declares -> whether it is SQLite-backed."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'migrations' must be a list of tables ([[migrations]])")
    classes: dict[str, bool] = {}
    tags: set[str] = set()
    for index, step in enumerate(value, 1):
        at = f"{where}: [[migrations]] #{index}"
        if not isinstance(step, dict):
            raise ConfigError(f"{at} must be a table with 'tag' and the classes it changes")
        tag = step.get("tag")
        if not isinstance(tag, str) or not tag:
            raise ConfigError(f"{at} needs 'tag', a string naming the migration")
        if tag in tags:
            raise ConfigError(f"{at}: the tag {tag!r} is used twice")
        tags.add(tag)
        unknown = sorted(set(step) - _MIGRATION_KEYS)
        if unknown:
            raise ConfigError(f"{at}: warren does not support {', '.join(unknown)} in migrations")
        for key, sqlite in (("new_classes", False), ("new_sqlite_classes", True)):
            for name in _class_names(step.get(key, []), f"{at}: {key}"):
                if name in classes:
                    raise ConfigError(f"{at}: the class {name} already exists (declared by an earlier migration)")
                classes[name] = sqlite
        renamed = step.get("renamed_classes", [])
        if not isinstance(renamed, list):
            raise ConfigError(f"{at}: renamed_classes must be a list of {{from, to}} tables")
        for entry in renamed:
            if not isinstance(entry, dict) or entry.get("from") not in classes:
                raise ConfigError(f"{at}: renamed_classes needs {{from, to}} with 'from' an existing class")
            target = _class_names([entry.get("to")], f"{at}: renamed_classes")[0]
            classes[target] = classes.pop(entry["from"])
        for name in _class_names(step.get("deleted_classes", []), f"{at}: deleted_classes"):
            if classes.pop(name, None) is None:
                raise ConfigError(f"{at}: deleted_classes names {name}, which no earlier migration created")
    return classes


def _class_names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and _IDENTIFIER.fullmatch(v) for v in value):
        raise ConfigError(f"{where} must be a list of class names (JavaScript identifiers)")
    return list(value)


def durable_object_bindings(
    config: dict[str, Any], script: str, where: str, warnings: list[str]
) -> list[dict[str, Any]]:
    """``[[durable_objects.bindings]] name, class_name, script_name?`` as ``durable_object_namespace`` specs.

    ``script_name`` defaults to this worker; a class of this worker gets ``sqlite``
    from ``[[migrations]]`` (``new_sqlite_classes``: the SQL API; ``new_classes``:
    key-value storage only).
    """
    section = config.get("durable_objects", {})
    if not isinstance(section, dict) or not isinstance(section.get("bindings", []), list):
        raise ConfigError(f"{where}: durable_objects.bindings must be a list of tables ([[durable_objects.bindings]])")
    classes = durable_object_classes(config.get("migrations", []), where)
    specs: list[dict[str, Any]] = []
    for index, entry in enumerate(section.get("bindings", []), 1):
        at = f"{where}: [[durable_objects.bindings]] #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table with 'name' and 'class_name'")
        name = entry.get("name")
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise ConfigError(f"{at} needs 'name', a JavaScript identifier (env.NAME)")
        if any(spec["name"] == name for spec in specs):
            raise ConfigError(f"{at}: the binding {name} is declared twice")
        class_name = _class_names([entry.get("class_name")], f"{at}: class_name")[0]
        target = entry.get("script_name", script)
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{at}: script_name must name a worker")
        for key in sorted(set(entry) - _DO_BINDING_KEYS):
            warnings.append(f"{at}: ignoring '{key}'")
        spec: dict[str, Any] = {
            "type": "durable_object_namespace", "name": name, "class_name": class_name, "script_name": target,
        }
        if target == script:
            if class_name not in classes:
                warnings.append(
                    f"{at}: no [[migrations]] entry declares the class {class_name}; it is served as "
                    f'SQLite-backed (add new_sqlite_classes = ["{class_name}"])'
                )
            spec["sqlite"] = classes.get(class_name, True)
        else:
            warnings.append(f"{at}: {class_name} is a class of the worker {target} (run it: --service {target}=DIR)")
        specs.append(spec)
    return specs


def uploaded_durable_object(spec: dict[str, Any], script: str) -> dict[str, Any]:
    """A Durable Object binding as an upload carries it: ``script_name`` only for another worker's class."""
    upload = {"type": "durable_object_namespace", "name": spec["name"], "class_name": spec["class_name"]}
    if spec.get("script_name") and spec["script_name"] != script:
        upload["script_name"] = spec["script_name"]
    return upload


def migrations_to_upload(
    migrations: list[dict[str, Any]], current_tag: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The upload's ``migrations`` field for a script whose applied tag is ``current_tag``, as wrangler
    computes it, and a warning (or None).

    No migrations, or the current tag is the last one: nothing to send. A tag
    found in the list: the steps after it, with ``old_tag``. No tag yet: every
    step. A tag not in the list: every step, with ``old_tag`` (the control
    plane then refuses the classes that already exist, as Cloudflare does).
    """
    if not migrations:
        return None, None
    steps = [{key: value for key, value in step.items() if key != "tag"} for step in migrations]
    payload: dict[str, Any] = {"new_tag": migrations[-1]["tag"]}
    tags = [step["tag"] for step in migrations]
    if current_tag is None:
        return {**payload, "steps": steps}, None
    if current_tag not in tags:
        warning = (
            f'the deployed worker has the migration tag "{current_tag}", which is not in [[migrations]]; '
            "uploading every migration"
        )
        return {"old_tag": current_tag, **payload, "steps": steps}, warning
    index = tags.index(current_tag)
    if index == len(tags) - 1:
        return None, None
    return {"old_tag": current_tag, **payload, "steps": steps[index + 1:]}, None
