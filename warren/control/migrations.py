"""Durable Object class migrations (issue #8): what an upload's ``migrations`` do to a script's classes.

The upload's metadata may carry Cloudflare's ``migrations`` field:
``{"old_tag"?: str, "new_tag": str, "steps": [step, ...]}`` (or, as in
Cloudflare's older form, one step's keys beside the tags), a step being
``{"new_classes"?, "new_sqlite_classes"?, "renamed_classes"?: [{"from", "to"}],
"deleted_classes"?}``. ``old_tag`` must be the script's applied tag (none if it
has none), or the upload is refused as on Workers ("Migration tag precondition
failed"); the steps are applied in order to the script's classes.

A script's *class state* is what the last applied migration left, kept inside
each version (``Version.limits["durable_objects"]``, so it is part of the
version's content hash and every version keeps its own; a rollback brings back
the deployed version's classes and tag)::

    {"tag": "v2",
     "classes": {"Counter": {"sqlite": true, "renamed_from": ["OldCounter"]}},
     "deleted": ["Gone"]}

``renamed_from`` lists the names a class had before, newest first: an edge
node finds an object's storage there after a rename. ``deleted`` holds deleted
classes (and their earlier names): edge nodes remove their storage. A name is
used once per script: a class may not take the name of a deleted or renamed
class, since that name's storage may still be on a node.

The script's applied tag is the tag of its current deployment's main version.
A version uploaded without deploying (``POST …/versions``) cannot carry
migrations (as on Workers) and inherits the state of the deployed one.

Owns: checking migrations and computing the next state; pure, no store, no
HTTP. Must not touch: storage of objects (edge nodes delete and move it,
``warren.bindings.durable_objects``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from warren.store.errors import InvalidInput
from warren.store.model import Version

STATE_KEY = "durable_objects"  # the key of Version.limits holding the class state
MAX_TAG = 128
MAX_STEPS = 100
_STEP_KEYS = frozenset({"new_classes", "new_sqlite_classes", "renamed_classes", "deleted_classes"})
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,127}")


@dataclass(frozen=True)
class Migrations:
    old_tag: str | None
    new_tag: str
    steps: tuple[dict[str, Any], ...]


def state_of(version: Version | None) -> dict[str, Any] | None:
    """The class state a version carries, or None (uploaded before migrations, or never given any)."""
    if version is None:
        return None
    state = version.limits.get(STATE_KEY)
    return state if isinstance(state, dict) else None


def tag_of(version: Version | None) -> str | None:
    state = state_of(version)
    tag = state.get("tag") if state is not None else None
    return tag if isinstance(tag, str) else None


def _tag(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TAG or not value.isprintable():
        raise InvalidInput(f"migrations: {what} must be a tag: 1-{MAX_TAG} printable characters")
    return value


def _classes(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(name, str) and _IDENTIFIER.fullmatch(name) for name in value):
        raise InvalidInput(f"migrations: {where} must be a list of class names (JavaScript identifiers)")
    return list(value)


def parse(value: Any) -> Migrations:
    """The metadata's ``migrations`` field, checked for shape (raises InvalidInput)."""
    if not isinstance(value, dict):
        raise InvalidInput("metadata: 'migrations' must be an object {old_tag?, new_tag, steps}")
    unknown = sorted(set(value) - {"old_tag", "new_tag", "steps"} - _STEP_KEYS - {"transferred_classes"})
    if unknown:
        raise InvalidInput(f"migrations: unknown field(s) {', '.join(map(repr, unknown))}")
    old_tag = _tag(value["old_tag"], "old_tag") if value.get("old_tag") is not None else None
    new_tag = _tag(value.get("new_tag"), "new_tag")
    if "steps" in value:
        if set(value) & (_STEP_KEYS | {"transferred_classes"}):
            raise InvalidInput("migrations: give the classes either in 'steps' or beside the tags, not both")
        steps = value["steps"]
        if not isinstance(steps, list) or len(steps) > MAX_STEPS:
            raise InvalidInput(f"migrations: 'steps' must be a list of at most {MAX_STEPS} objects")
    else:
        single = {key: value[key] for key in value if key not in ("old_tag", "new_tag")}
        steps = [single] if single else []
    checked: list[dict[str, Any]] = []
    for index, step in enumerate(steps, 1):
        where = f"step #{index}"
        if not isinstance(step, dict):
            raise InvalidInput(f"migrations: {where} must be an object")
        if "transferred_classes" in step:
            raise InvalidInput(f"migrations: {where}: transferred_classes is not supported by warren")
        unknown = sorted(set(step) - _STEP_KEYS)
        if unknown:
            raise InvalidInput(f"migrations: {where}: unknown field(s) {', '.join(map(repr, unknown))}")
        renamed = step.get("renamed_classes", [])
        if not isinstance(renamed, list):
            raise InvalidInput(f"migrations: {where}: renamed_classes must be a list of {{from, to}} objects")
        pairs = []
        for entry in renamed:
            if not isinstance(entry, dict) or set(entry) - {"from", "to"}:
                raise InvalidInput(f"migrations: {where}: renamed_classes must be a list of {{from, to}} objects")
            source, target = _classes([entry.get("from"), entry.get("to")], f"{where}: renamed_classes")
            pairs.append({"from": source, "to": target})
        checked.append({
            "new_classes": _classes(step.get("new_classes", []), f"{where}: new_classes"),
            "new_sqlite_classes": _classes(step.get("new_sqlite_classes", []), f"{where}: new_sqlite_classes"),
            "renamed_classes": pairs,
            "deleted_classes": _classes(step.get("deleted_classes", []), f"{where}: deleted_classes"),
        })
    return Migrations(old_tag, new_tag, tuple(checked))


def _retired(state: dict[str, Any]) -> dict[str, str]:
    """Names no class may take again -> why."""
    retired = {name: "deleted" for name in state["deleted"]}
    for name, info in state["classes"].items():
        for earlier in info["renamed_from"]:
            retired[earlier] = f"renamed to {name}"
    return retired


def apply(current: dict[str, Any] | None, migrations: Migrations) -> dict[str, Any]:
    """The state after ``migrations`` (raises InvalidInput, naming the step and class, if any step cannot apply)."""
    current_tag = current.get("tag") if current is not None else None
    if migrations.old_tag != current_tag:
        shown = current_tag if current_tag is not None else "none (the worker has no migrations yet)"
        raise InvalidInput(
            f"Migration tag precondition failed; current tag is {shown}"
            + (f", the upload's old_tag is {migrations.old_tag}" if migrations.old_tag is not None else
               ", and the upload gives no old_tag")
        )
    state = copy.deepcopy(current) if current is not None else {"tag": None, "classes": {}, "deleted": []}
    if not migrations.steps:
        if migrations.new_tag != current_tag:
            raise InvalidInput("migrations: a new tag needs at least one step")
        return state
    if migrations.new_tag == current_tag:
        raise InvalidInput(f"migrations: new_tag {migrations.new_tag!r} is the tag already applied")
    classes: dict[str, dict[str, Any]] = state["classes"]
    for index, step in enumerate(migrations.steps, 1):
        at = f"migrations step #{index}"

        def free(name: str, kind: str, at: str = at) -> None:
            if name in classes:
                raise InvalidInput(f"{at}: cannot apply {kind} migration to class {name}: it already exists")
            why = _retired(state).get(name)
            if why is not None:
                raise InvalidInput(
                    f"{at}: cannot apply {kind} migration to class {name}: a class of that name was {why}, and "
                    "warren does not reuse the name (its objects' storage may remain on nodes); choose another"
                )

        for key, sqlite in (("new_classes", False), ("new_sqlite_classes", True)):
            for name in step[key]:
                free(name, key)
                classes[name] = {"sqlite": sqlite, "renamed_from": []}
        for pair in step["renamed_classes"]:
            source, target = pair["from"], pair["to"]
            if source not in classes:
                raise InvalidInput(f"{at}: cannot apply renamed_classes migration to non-existent class {source}")
            free(target, "renamed_classes")
            info = classes.pop(source)
            classes[target] = {"sqlite": info["sqlite"], "renamed_from": [source, *info["renamed_from"]]}
        for name in step["deleted_classes"]:
            if name not in classes:
                raise InvalidInput(f"{at}: cannot apply deleted_classes migration to non-existent class {name}")
            info = classes.pop(name)
            state["deleted"] = sorted({*state["deleted"], name, *info["renamed_from"]})
    state["tag"] = migrations.new_tag
    return state


def deleted_now(before: dict[str, Any] | None, after: dict[str, Any]) -> set[str]:
    """Classes of ``before`` (live) that ``after`` deleted."""
    live = set(before["classes"]) if before is not None else set()
    return live & set(after["deleted"])


def check_bindings(state: dict[str, Any], bindings: list[dict[str, Any]], script: str) -> None:
    """Every Durable Object binding to a class of the script itself must name a live class of ``state``."""
    for binding in bindings:
        if not isinstance(binding, dict) or binding.get("type") != "durable_object_namespace":
            continue
        if binding.get("script_name") not in (None, "", script):
            continue
        name = binding.get("class_name")
        if not isinstance(name, str) or name in state["classes"]:
            continue
        why = _retired(state).get(name)
        if why == "deleted":
            raise InvalidInput(
                f"Cannot apply deleted_classes migration to class {name} without also removing the binding "
                f"{binding.get('name')} that references it"
            )
        if why is not None:
            raise InvalidInput(f"binding {binding.get('name')}: the class {name} was {why}; bind the new name")
        raise InvalidInput(
            f"Cannot create binding {binding.get('name')} for class {name} because it is not currently "
            "configured to implement Durable Objects: add it to new_sqlite_classes (or new_classes) "
            "in a [[migrations]] entry"
        )


def check_user_limits(limits: dict[str, Any]) -> None:
    """The class state is written by the control plane only."""
    if STATE_KEY in limits:
        raise InvalidInput(f"limits.{STATE_KEY} is set by migrations, not by the upload")


def public(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The state as the API shows it (a copy)."""
    return copy.deepcopy(state) if state is not None else None
