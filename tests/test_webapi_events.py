"""Event, EventTarget, CustomEvent, AbortController and AbortSignal in a real worker (``warren dev``).

The WPT-style suite below ports the important assertions of web-platform-tests'
``dom/events/*.any.js`` and ``dom/abort/*.any.js`` (our own code, written after
them, with a small testharness-like runner). It runs in one request of a real
worker and reports each test's outcome; every test must pass. The runner and
the helpers are shared with ``test_webapi_blob.py`` and ``test_webapi_streams.py``.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServiceProcess

# A testharness.js look-alike: test(fn, name), promise_test(fn, name), assert_*,
# and t.step_func / t.unreached_func (a failure inside a listener, which
# dispatchEvent only reports, still fails its test). runTests() resolves to
# {test name: null (passed) | failure message}.
HARNESS = r"""
const __tests = [];
function test(fn, name) { __tests.push({ fn, name }); }
function promise_test(fn, name) { __tests.push({ fn, name }); }
class AssertionError extends Error {}
function __show(v) {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "object" && v !== null) { try { return JSON.stringify(v); } catch { return String(v); } }
  return Object.is(v, -0) ? "-0" : String(v);
}
function __fail(description, message) { throw new AssertionError(`${description ? description + ": " : ""}${message}`); }
function assert_true(v, d) { if (v !== true) __fail(d, `expected true, got ${__show(v)}`); }
function assert_false(v, d) { if (v !== false) __fail(d, `expected false, got ${__show(v)}`); }
function assert_equals(a, e, d) { if (!Object.is(a, e)) __fail(d, `expected ${__show(e)}, got ${__show(a)}`); }
function assert_not_equals(a, e, d) { if (Object.is(a, e)) __fail(d, `got disallowed value ${__show(a)}`); }
function assert_array_equals(a, e, d) {
  if (a === null || typeof a !== "object" || a.length !== e.length) __fail(d, `expected ${__show(Array.from(e))}, got ${__show(a && Array.from(a))}`);
  for (let i = 0; i < e.length; i++) if (!Object.is(a[i], e[i])) __fail(d, `[${i}] expected ${__show(e[i])}, got ${__show(a[i])}`);
}
function assert_class_string(o, tag, d) { assert_equals(Object.prototype.toString.call(o), `[object ${tag}]`, d); }
function assert_unreached(d) { __fail(d, "reached unreachable code"); }
function __checkThrown(e, ctor, d) {
  if (!(e instanceof ctor) || e.constructor !== ctor) __fail(d, `expected ${ctor.name}, got ${e && e.name}: ${e && e.message}`);
}
function assert_throws_js(ctor, fn, d) {
  try { fn(); } catch (e) { __checkThrown(e, ctor, d); return; }
  __fail(d, `expected ${ctor.name} to be thrown`);
}
function assert_throws_dom(name, fn, d) {
  try { fn(); } catch (e) {
    if (!(e instanceof DOMException) || e.name !== name) __fail(d, `expected DOMException ${name}, got ${e && e.name}: ${e && e.message}`);
    return;
  }
  __fail(d, `expected DOMException ${name} to be thrown`);
}
async function promise_rejects_js(t, ctor, promise, d) {
  try { await promise; } catch (e) { __checkThrown(e, ctor, d); return; }
  __fail(d, `expected a rejection with ${ctor.name}`);
}
async function promise_rejects_exactly(t, value, promise, d) {
  try { await promise; } catch (e) { assert_equals(e, value, d); return; }
  __fail(d, "expected a rejection");
}
async function readAll(readable) {
  const reader = readable.getReader();
  const chunks = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return chunks;
    chunks.push(value);
  }
}
function concatBytes(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}
async function runTests() {
  const results = {};
  for (const { fn, name } of __tests) {
    const t = {
      failure: null,
      cleanups: [],
      step_func(f) {
        return function (...args) {
          try { return f.apply(this, args); } catch (e) { if (t.failure === null) t.failure = e; }
        };
      },
      unreached_func(d) { return t.step_func(() => assert_unreached(d)); },
      add_cleanup(f) { t.cleanups.push(f); },
    };
    try {
      let timer;
      const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new AssertionError("timed out")), 5000); });
      try {
        await Promise.race([Promise.resolve().then(() => fn(t)), timeout]);
      } finally {
        clearTimeout(timer);
      }
      if (t.failure !== null) throw t.failure;
      results[name] = null;
    } catch (e) {
      results[name] = e instanceof AssertionError ? e.message : `threw ${e && e.name}: ${e && e.message}`;
    }
    for (const cleanup of t.cleanups) cleanup();
  }
  return results;
}
"""


def worker_source(suite: str, routes: str = "") -> str:
    """A module worker: GET /wpt runs the suite; ``routes`` may answer other paths first."""
    return (
        HARNESS
        + textwrap.dedent(suite)
        + "\nexport default {\n  async fetch(request, env, ctx) {\n"
        + "    const url = new URL(request.url);\n"
        + textwrap.indent(textwrap.dedent(routes), "    ")
        + '\n    if (url.pathname === "/wpt") return Response.json(await runTests());\n'
        + '    return new Response("no such route", { status: 404 });\n  },\n};\n'
    )


def serve(directory: Path, suite: str, routes: str = "") -> ServiceProcess:
    """``warren dev`` on the worker, with CPU to spare for a whole suite in one request."""
    (directory / "worker.js").write_text(worker_source(suite, routes))
    (directory / "wrangler.toml").write_text('name = "webapi"\nmain = "worker.js"\n[limits]\ncpu_ms = 30000\n')
    return ServiceProcess(["dev", "worker.js"], directory)


def check_suite(server: ServiceProcess, label: str) -> None:
    response = server.get("/wpt")
    assert response.status_code == 200, (response.text, server.output)
    results: dict[str, str | None] = response.json()
    failures = {name: message for name, message in results.items() if message is not None}
    print(f"\nWPT-style {label}: {len(results) - len(failures)}/{len(results)} passed")
    assert len(results) > 10
    assert not failures, json.dumps(failures, indent=2)


EVENTS_SUITE = r"""
// --- dom/events/Event-constructors, Event-constants, Event-isTrusted, Event-type ---
test(() => {
  assert_throws_js(TypeError, () => new Event());
  const e = new Event("test");
  assert_equals(e.type, "test");
  assert_equals(e.target, null);
  assert_equals(e.srcElement, null);
  assert_equals(e.currentTarget, null);
  assert_equals(e.eventPhase, Event.NONE);
  assert_false(e.bubbles);
  assert_false(e.cancelable);
  assert_false(e.composed);
  assert_false(e.defaultPrevented);
  assert_true(e.returnValue);
  assert_false(e.isTrusted);
  assert_equals(typeof e.timeStamp, "number");
  assert_array_equals(e.composedPath(), []);
}, "Event constructor defaults");

test(() => {
  const e = new Event("I am an event", { bubbles: true, cancelable: false });
  assert_equals(e.type, "I am an event");
  assert_true(e.bubbles);
  assert_false(e.cancelable);
  assert_equals(new Event(null).type, "null");
  assert_equals(new Event(undefined).type, "undefined");
  assert_equals(new Event("").type, "");
  assert_equals(new Event("x", null).type, "x");
  assert_throws_js(TypeError, () => new Event("x", 1));
}, "Event constructor arguments");

test(() => {
  const read = [];
  const init = {};
  for (const key of ["composed", "cancelable", "bubbles"]) {
    Object.defineProperty(init, key, { get() { read.push(key); return true; } });
  }
  const e = new Event("x", init);
  assert_array_equals(read, ["bubbles", "cancelable", "composed"], "dictionary members in order");
  assert_true(e.composed);
}, "Event constructor reads its dictionary in Web IDL order");

test(() => {
  const names = ["NONE", "CAPTURING_PHASE", "AT_TARGET", "BUBBLING_PHASE"];
  names.forEach((name, value) => {
    assert_equals(Event[name], value, name);
    assert_equals(Event.prototype[name], value, name);
    assert_equals(new Event("x")[name], value, name);
  });
}, "Event constants");

test(() => {
  const d1 = Object.getOwnPropertyDescriptor(new Event("x"), "isTrusted");
  const d2 = Object.getOwnPropertyDescriptor(new Event("y"), "isTrusted");
  assert_equals(typeof d1.get, "function", "an own accessor");
  assert_false(d1.configurable);
  assert_true(d1.enumerable);
  assert_equals(d1.get, d2.get, "one getter for every event");
  assert_equals(d1.set, undefined);
}, "isTrusted is an unforgeable own accessor");

test(() => {
  assert_class_string(new Event("x"), "Event");
  assert_class_string(new EventTarget(), "EventTarget");
  assert_class_string(new CustomEvent("x"), "CustomEvent");
  assert_class_string(new AbortController(), "AbortController");
  assert_class_string(new AbortController().signal, "AbortSignal");
  assert_true(Object.getOwnPropertyDescriptor(Event.prototype, "type").enumerable);
  assert_true(Object.getOwnPropertyDescriptor(EventTarget.prototype, "dispatchEvent").enumerable);
}, "interfaces look like Web IDL interfaces");

test(() => {
  const getter = Object.getOwnPropertyDescriptor(Event.prototype, "type").get;
  for (const bad of [null, undefined, {}, Object.create(Event.prototype)]) {
    assert_throws_js(TypeError, () => getter.call(bad));
  }
  assert_throws_js(TypeError, () => EventTarget.prototype.dispatchEvent.call({}, new Event("x")));
  assert_throws_js(TypeError, () => Event("x"), "without new");
}, "brand checks");

// --- Event-defaultPrevented, Event-returnValue, Event-cancelBubble -----------
test(() => {
  const e = new Event("foo");
  e.preventDefault();
  assert_false(e.defaultPrevented, "not cancelable");
  e.returnValue = false;
  assert_false(e.defaultPrevented);
  const c = new Event("foo", { cancelable: true });
  c.preventDefault();
  assert_true(c.defaultPrevented);
  assert_false(c.returnValue);
  c.returnValue = true;
  assert_true(c.defaultPrevented, "returnValue = true does not undo it");
  const r = new Event("foo", { cancelable: true });
  r.returnValue = false;
  assert_true(r.defaultPrevented);
}, "preventDefault and returnValue");

test(() => {
  const target = new EventTarget();
  const e = new Event("foo", { cancelable: true });
  target.addEventListener("foo", (ev) => ev.preventDefault());
  assert_false(target.dispatchEvent(e), "dispatchEvent returns false when canceled");
  assert_true(e.defaultPrevented, "still prevented after dispatch");
  assert_true(new EventTarget().dispatchEvent(new Event("foo", { cancelable: true })));
}, "dispatchEvent returns !canceled; defaultPrevented survives dispatch");

test(() => {
  const e = new Event("foo");
  assert_false(e.cancelBubble);
  e.cancelBubble = true;
  assert_true(e.cancelBubble);
  e.cancelBubble = false;
  assert_true(e.cancelBubble, "setting false does not undo it");
  const s = new Event("foo");
  s.stopPropagation();
  assert_true(s.cancelBubble);
  const target = new EventTarget();
  let called = false;
  target.addEventListener("foo", () => { called = true; });
  const stopped = new Event("foo");
  stopped.stopPropagation();
  target.dispatchEvent(stopped);
  assert_false(called, "a stopped event reaches no listener");
  assert_false(stopped.cancelBubble, "the flag is cleared after dispatch");
}, "cancelBubble and stopPropagation");

test(() => {
  const target = new EventTarget();
  const calls = [];
  target.addEventListener("foo", (e) => { calls.push(1); e.stopImmediatePropagation(); });
  target.addEventListener("foo", () => calls.push(2));
  target.dispatchEvent(new Event("foo"));
  assert_array_equals(calls, [1]);
  target.dispatchEvent(new Event("foo"));
  assert_array_equals(calls, [1, 1], "the flag does not outlive the dispatch");
}, "stopImmediatePropagation");

test(() => {
  const target = new EventTarget();
  const calls = [];
  target.addEventListener("foo", (e) => { calls.push("capture"); e.stopPropagation(); }, true);
  target.addEventListener("foo", () => calls.push("bubble"));
  target.dispatchEvent(new Event("foo"));
  assert_array_equals(calls, ["capture"]);
}, "stopPropagation in a capture listener at the target skips the others");

// --- Event-initEvent, Event-init-while-dispatching ---------------------------
test(() => {
  const e = new Event("x");
  e.initEvent("y", true, true);
  assert_equals(e.type, "y");
  assert_true(e.bubbles);
  assert_true(e.cancelable);
  e.preventDefault();
  e.initEvent("z");
  assert_false(e.defaultPrevented, "initEvent clears the canceled flag");
  assert_false(e.bubbles);
  assert_throws_js(TypeError, () => e.initEvent());
}, "initEvent");

test(() => {
  const target = new EventTarget();
  const e = new Event("type", { bubbles: true, cancelable: true });
  target.addEventListener("type", (ev) => {
    ev.initEvent("changed", false, false);
    assert_equals(ev.type, "type");
    assert_true(ev.bubbles);
    assert_true(ev.cancelable);
  });
  target.dispatchEvent(e);
}, "initEvent does nothing while dispatching");

// --- EventTarget-constructible, EventTarget-this-of-listener -----------------
test((t) => {
  const target = new EventTarget();
  const event = new Event("foo", { bubbles: true, cancelable: false });
  let callCount = 0;
  function listener(e) {
    assert_equals(e, event);
    assert_equals(e.target, target);
    assert_equals(e.currentTarget, target);
    assert_equals(e.eventPhase, Event.AT_TARGET);
    assert_array_equals(e.composedPath(), [target]);
    assert_equals(this, target, "this is the target");
    callCount++;
  }
  target.addEventListener("foo", t.step_func(listener));
  target.dispatchEvent(event);
  assert_equals(callCount, 1);
  assert_equals(event.eventPhase, Event.NONE);
  assert_equals(event.currentTarget, null);
  assert_equals(event.target, target, "target stays after dispatch");
  assert_array_equals(event.composedPath(), []);
  target.dispatchEvent(event);
  assert_equals(callCount, 2, "an event can be dispatched again");
  target.removeEventListener("foo", listener);
}, "A constructed EventTarget can be used as expected");

test((t) => {
  class NicePerson extends EventTarget {
    thank() { this.dispatchEvent(new CustomEvent("thank", { detail: "you" })); }
  }
  const person = new NicePerson();
  let detail = null;
  person.addEventListener("thank", t.step_func((e) => { detail = e.detail; }));
  person.thank();
  assert_equals(detail, "you");
  assert_true(person instanceof EventTarget);
}, "EventTarget can be subclassed");

// --- EventTarget-add-remove-listener, -addEventListener, -removeEventListener -
test(() => {
  const target = new EventTarget();
  let count = 0;
  const listener = () => count++;
  target.addEventListener("x", listener);
  target.addEventListener("x", listener);
  target.addEventListener("x", listener, false);
  target.addEventListener("x", listener, { capture: false, once: true });
  target.dispatchEvent(new Event("x"));
  assert_equals(count, 1, "duplicates are ignored");
  target.addEventListener("x", listener, true);
  target.dispatchEvent(new Event("x"));
  assert_equals(count, 3, "the capture flag makes a second listener");
  target.removeEventListener("x", listener, { capture: true });
  target.dispatchEvent(new Event("x"));
  assert_equals(count, 4);
  target.removeEventListener("x", listener);
  target.dispatchEvent(new Event("x"));
  assert_equals(count, 4);
}, "adding and removing listeners, with and without capture");

test(() => {
  const target = new EventTarget();
  target.addEventListener("x", null);
  target.removeEventListener("x", null);
  assert_throws_js(TypeError, () => target.addEventListener("x"), "the callback is required");
  assert_throws_js(TypeError, () => target.addEventListener("x", 5));
  assert_throws_js(TypeError, () => target.dispatchEvent(null));
  assert_throws_js(TypeError, () => target.dispatchEvent({ type: "x" }));
  assert_equals(target.addEventListener("x", () => {}), undefined);
}, "argument checks");

test(() => {
  const target = new EventTarget();
  const calls = [];
  target.addEventListener("x", () => calls.push("bubble 1"));
  target.addEventListener("x", () => calls.push("capture"), { capture: true });
  target.addEventListener("x", () => calls.push("bubble 2"));
  target.dispatchEvent(new Event("x"));
  assert_array_equals(calls, ["capture", "bubble 1", "bubble 2"]);
}, "at the target, capture listeners run first, then the rest in order");

test(() => {
  const target = new EventTarget();
  const calls = [];
  const second = () => calls.push("second");
  target.addEventListener("x", () => {
    calls.push("first");
    target.removeEventListener("x", second);
    target.addEventListener("x", () => calls.push("added"));
  });
  target.addEventListener("x", second);
  target.dispatchEvent(new Event("x"));
  assert_array_equals(calls, ["first"], "removed during dispatch: not called; added: not yet");
  target.dispatchEvent(new Event("x"));
  assert_array_equals(calls, ["first", "first", "added"]);
}, "listeners added or removed during dispatch");

test(() => {
  const target = new EventTarget();
  const calls = [];
  target.addEventListener("x", () => { calls.push(1); throw new Error("listener boom"); });
  target.addEventListener("x", () => calls.push(2));
  assert_true(target.dispatchEvent(new Event("x")), "the exception is reported, not thrown");
  assert_array_equals(calls, [1, 2]);
}, "an exception in a listener does not stop the others");

test(() => {
  const target = new EventTarget();
  const e = new Event("x");
  target.addEventListener("x", () => {
    assert_throws_dom("InvalidStateError", () => target.dispatchEvent(e));
  });
  target.dispatchEvent(e);
}, "dispatching an event that is being dispatched throws InvalidStateError");

// --- EventListener-handleEvent ------------------------------------------------
test((t) => {
  const target = new EventTarget();
  const event = new Event("x");
  const listener = {
    handleEvent: t.step_func(function (e) {
      assert_equals(this, listener, "this is the listener object");
      assert_equals(e, event);
    }),
  };
  target.addEventListener("x", listener);
  target.dispatchEvent(event);
  let called = 0;
  const late = {};
  target.addEventListener("late", late);
  late.handleEvent = () => called++;
  target.dispatchEvent(new Event("late"));
  assert_equals(called, 1, "handleEvent is looked up when the event fires");
  const calls = [];
  const broken = new EventTarget();
  broken.addEventListener("x", { handleEvent: 42 });
  broken.addEventListener("x", () => calls.push("after"));
  broken.dispatchEvent(new Event("x"));
  assert_array_equals(calls, ["after"], "a non-callable handleEvent is reported and skipped");
  const fn = () => calls.push("function");
  fn.handleEvent = () => calls.push("handleEvent");
  broken.addEventListener("y", fn);
  broken.dispatchEvent(new Event("y"));
  assert_equals(calls[1], "function", "a function is called, not its handleEvent");
}, "EventListener objects with handleEvent");

// --- AddEventListenerOptions-once, -passive, -signal -------------------------
test(() => {
  const target = new EventTarget();
  let invoked = 0;
  const listener = () => { invoked++; target.dispatchEvent(new Event("x")); };
  target.addEventListener("x", listener, { once: true });
  target.dispatchEvent(new Event("x"));
  assert_equals(invoked, 1, "a once listener is removed before it is called");
  target.dispatchEvent(new Event("x"));
  assert_equals(invoked, 1);
  target.addEventListener("x", listener, { once: true });
  target.removeEventListener("x", listener);
  target.dispatchEvent(new Event("x"));
  assert_equals(invoked, 1, "a once listener is removed like any other");
  const order = [];
  target.addEventListener("y", () => order.push("a"), { once: true });
  target.addEventListener("y", () => order.push("b"), { once: true });
  target.dispatchEvent(new Event("y"));
  target.dispatchEvent(new Event("y"));
  assert_array_equals(order, ["a", "b"]);
}, "once");

test(() => {
  const target = new EventTarget();
  let prevented = null;
  target.addEventListener("x", (e) => { e.preventDefault(); prevented = e.defaultPrevented; }, { passive: true });
  const e = new Event("x", { cancelable: true });
  assert_true(target.dispatchEvent(e), "preventDefault is ignored in a passive listener");
  assert_false(prevented);
  target.addEventListener("x", (ev) => ev.preventDefault());
  assert_false(target.dispatchEvent(new Event("x", { cancelable: true })), "but not in the next one");
}, "passive");

test(() => {
  const target = new EventTarget();
  const controller = new AbortController();
  let count = 0;
  const listener = () => count++;
  target.addEventListener("x", listener, { signal: controller.signal });
  target.dispatchEvent(new Event("x"));
  controller.abort();
  target.dispatchEvent(new Event("x"));
  assert_equals(count, 1, "aborting the signal removes the listener");
  target.addEventListener("x", listener, { signal: controller.signal });
  target.dispatchEvent(new Event("x"));
  assert_equals(count, 1, "an aborted signal adds nothing");
  assert_throws_js(TypeError, () => target.addEventListener("x", listener, { signal: null }));
  assert_throws_js(TypeError, () => target.addEventListener("x", listener, { signal: {} }));
  const c2 = new AbortController();
  const other = new EventTarget();
  target.addEventListener("y", listener, { signal: c2.signal });
  other.addEventListener("y", listener, { signal: c2.signal });
  target.removeEventListener("y", listener);
  target.addEventListener("y", listener);
  c2.abort();
  target.dispatchEvent(new Event("y"));
  other.dispatchEvent(new Event("y"));
  assert_equals(count, 2, "a listener removed and re-added without the signal stays");
  const c3 = new AbortController();
  let calls = 0;
  target.addEventListener("z", () => { calls++; c3.abort(); }, { signal: c3.signal });
  target.addEventListener("z", () => calls++, { signal: c3.signal });
  target.dispatchEvent(new Event("z"));
  assert_equals(calls, 1, "aborting during dispatch removes the later listeners");
}, "signal");

// --- CustomEvent ---------------------------------------------------------------
test(() => {
  assert_throws_js(TypeError, () => new CustomEvent());
  const e = new CustomEvent("x");
  assert_equals(e.detail, null);
  const detail = { a: 1 };
  const d = new CustomEvent("x", { detail, bubbles: true });
  assert_equals(d.detail, detail);
  assert_true(d.bubbles);
  assert_true(d instanceof Event);
  d.initCustomEvent("y", false, false, 5);
  assert_equals(d.type, "y");
  assert_equals(d.detail, 5);
  assert_throws_js(TypeError, () => Object.getOwnPropertyDescriptor(CustomEvent.prototype, "detail").get.call(new Event("x")));
  const read = [];
  const init = {};
  for (const key of ["detail", "composed", "cancelable", "bubbles"]) {
    Object.defineProperty(init, key, { get() { read.push(key); return key === "detail" ? new CustomEvent("inner", { detail: 1 }) : true; } });
  }
  const outer = new CustomEvent("outer", init);
  assert_array_equals(read, ["bubbles", "cancelable", "composed", "detail"], "each member read once, in order");
  assert_equals(outer.detail.detail, 1);
}, "CustomEvent");

// --- dom/abort/event.any.js ---------------------------------------------------
test((t) => {
  const c = new AbortController();
  const s = c.signal;
  let state = "begin";
  assert_false(s.aborted);
  assert_equals(s.reason, undefined);
  s.addEventListener("abort", t.step_func(() => { assert_equals(state, "begin"); state = "aborted"; }));
  c.abort();
  assert_equals(state, "aborted", "the event fires synchronously");
  assert_true(s.aborted);
  c.abort();
}, "AbortController abort() should fire event synchronously");

test(() => {
  const controller = new AbortController();
  const signal = controller.signal;
  assert_equals(controller.signal, signal);
  controller.abort();
  assert_equals(controller.signal, signal);
}, "controller.signal should always return the same object");

test(() => {
  const controller = new AbortController();
  let count = 0;
  controller.signal.onabort = () => count++;
  controller.abort();
  controller.abort();
  assert_equals(count, 1);
}, "controller.abort() should do nothing the second time it is called");

test((t) => {
  const controller = new AbortController();
  controller.abort();
  controller.signal.onabort = t.unreached_func("event handler should not be called");
}, "event handler should not be called if added after controller.abort()");

test((t) => {
  const controller = new AbortController();
  const signal = controller.signal;
  let fired = false;
  signal.onabort = t.step_func((e) => {
    assert_equals(e.type, "abort");
    assert_equals(e.target, signal);
    assert_false(e.bubbles);
    assert_true(e.isTrusted, "the abort event is trusted");
    fired = true;
  });
  controller.abort();
  assert_true(fired);
}, "the abort event should have the right properties");

test(() => {
  const acSignalGet = Object.getOwnPropertyDescriptor(AbortController.prototype, "signal").get;
  const acAbort = AbortController.prototype.abort;
  for (const bad of [null, undefined, 0, NaN, true, "AbortController", Object.create(AbortController.prototype)]) {
    assert_throws_js(TypeError, acSignalGet.bind(bad));
    assert_throws_js(TypeError, acAbort.bind(bad));
  }
  const abortedGet = Object.getOwnPropertyDescriptor(AbortSignal.prototype, "aborted").get;
  for (const bad of [null, undefined, 0, NaN, true, "AbortSignal", Object.create(AbortSignal.prototype)]) {
    assert_throws_js(TypeError, abortedGet.bind(bad));
  }
  assert_throws_js(TypeError, () => new AbortSignal(), "AbortSignal has no public constructor");
}, "AbortController and AbortSignal perform brand checks");

// --- dom/abort/abort-signal reason, throwIfAborted, static abort ---------------
test(() => {
  const c = new AbortController();
  c.abort();
  assert_true(c.signal.reason instanceof DOMException);
  assert_equals(c.signal.reason.name, "AbortError");
  const reason = new Error("mine");
  const d = new AbortController();
  d.abort(reason);
  assert_equals(d.signal.reason, reason);
  const u = new AbortController();
  u.abort(undefined);
  assert_equals(u.signal.reason.name, "AbortError", "undefined means no reason");
  const n = new AbortController();
  n.abort(null);
  assert_equals(n.signal.reason, null, "null is a reason");
}, "abort reasons");

test(() => {
  const c = new AbortController();
  c.signal.throwIfAborted();
  const reason = { custom: true };
  c.abort(reason);
  try {
    c.signal.throwIfAborted();
    assert_unreached("should have thrown");
  } catch (e) {
    assert_equals(e, reason);
  }
}, "throwIfAborted");

test(() => {
  const signal = AbortSignal.abort();
  assert_true(signal.aborted);
  assert_equals(signal.reason.name, "AbortError");
  assert_equals(AbortSignal.abort("why").reason, "why");
}, "AbortSignal.abort()");

test(() => {
  const c = new AbortController();
  const handler = () => {};
  c.signal.onabort = handler;
  assert_equals(c.signal.onabort, handler);
  c.signal.onabort = 5;
  assert_equals(c.signal.onabort, null, "non-objects become null");
  let count = 0;
  c.signal.onabort = () => count++;
  c.signal.onabort = null;
  c.abort();
  assert_equals(count, 0, "a handler set to null is gone");
  const d = new AbortController();
  const order = [];
  d.signal.addEventListener("abort", () => order.push("first"));
  d.signal.onabort = () => order.push("handler");
  d.signal.addEventListener("abort", () => order.push("last"));
  d.signal.onabort = () => order.push("replaced handler");
  d.abort();
  assert_array_equals(order, ["first", "replaced handler", "last"], "the handler keeps its first position");
}, "onabort is an event handler attribute");

promise_test(async () => {
  const signal = AbortSignal.timeout(0);
  assert_false(signal.aborted);
  await new Promise((resolve) => { signal.onabort = resolve; });
  assert_true(signal.aborted);
  assert_true(signal.reason instanceof DOMException);
  assert_equals(signal.reason.name, "TimeoutError");
}, "AbortSignal.timeout() aborts with a TimeoutError");

test(() => {
  assert_throws_js(TypeError, () => AbortSignal.timeout(-1));
  assert_throws_js(TypeError, () => AbortSignal.timeout(NaN));
  assert_throws_js(TypeError, () => AbortSignal.timeout(Infinity));
  assert_throws_js(TypeError, () => AbortSignal.timeout());
  assert_false(AbortSignal.timeout(1e9).aborted);
}, "AbortSignal.timeout() checks its argument ([EnforceRange] unsigned long long)");

// --- dom/abort/resources/abort-signal-any-tests.js ---------------------------
test(() => { assert_false(AbortSignal.any([]).aborted); }, "AbortSignal.any() works with an empty array of signals");

test((t) => {
  const controller = new AbortController();
  const signal = controller.signal;
  const cloneSignal = AbortSignal.any([signal]);
  assert_false(cloneSignal.aborted);
  assert_equals(cloneSignal.reason, undefined);
  assert_not_equals(signal, cloneSignal);
  let eventFired = false;
  cloneSignal.onabort = t.step_func((e) => { assert_equals(e.target, cloneSignal); eventFired = true; });
  controller.abort("reason string");
  assert_true(signal.aborted);
  assert_true(cloneSignal.aborted);
  assert_true(eventFired);
  assert_equals(cloneSignal.reason, "reason string");
}, "AbortSignal.any() follows a single signal");

test((t) => {
  for (let i = 0; i < 3; ++i) {
    const controllers = [new AbortController(), new AbortController(), new AbortController()];
    const combined = AbortSignal.any(controllers.map((c) => c.signal));
    let fired = false;
    combined.onabort = t.step_func((e) => { assert_equals(e.target, combined); fired = true; });
    controllers[i].abort();
    assert_true(fired);
    assert_true(combined.aborted);
    assert_equals(combined.reason.name, "AbortError");
  }
}, "AbortSignal.any() follows multiple signals");

test(() => {
  const controllers = [new AbortController(), new AbortController(), new AbortController()];
  controllers[1].abort("reason 1");
  controllers[2].abort("reason 2");
  const signal = AbortSignal.any(controllers.map((c) => c.signal));
  assert_true(signal.aborted);
  assert_equals(signal.reason, "reason 1");
}, "AbortSignal.any() returns an aborted signal if passed an aborted signal");

test(() => {
  const controller = new AbortController();
  const signal = AbortSignal.any([controller.signal, controller.signal]);
  controller.abort("reason");
  assert_true(signal.aborted);
  assert_equals(signal.reason, "reason");
  const c1 = new AbortController();
  c1.abort("reason 1");
  const c2 = new AbortController();
  c2.abort("reason 2");
  assert_equals(AbortSignal.any([c1.signal, c2.signal, c1.signal]).reason, "reason 1");
}, "AbortSignal.any() with the same signal more than once");

test(() => {
  for (let i = 0; i < 3; ++i) {
    const controllers = [new AbortController(), new AbortController(), new AbortController()];
    const combined1 = AbortSignal.any([controllers[0].signal, controllers[1].signal]);
    const combined2 = AbortSignal.any([combined1, controllers[2].signal]);
    let fired = false;
    combined2.onabort = () => { fired = true; };
    controllers[i].abort();
    assert_true(fired);
    assert_true(combined2.aborted);
    assert_equals(combined2.reason.name, "AbortError");
  }
}, "AbortSignal.any() signals are composable");

promise_test(async () => {
  const controller = new AbortController();
  const combined = AbortSignal.any([controller.signal, AbortSignal.timeout(5)]);
  await new Promise((resolve) => { combined.onabort = resolve; });
  assert_true(combined.aborted);
  assert_equals(combined.reason.name, "TimeoutError");
}, "AbortSignal.any() works with signals returned by AbortSignal.timeout()");

test(() => {
  const controller = new AbortController();
  let combined = AbortSignal.any([controller.signal]);
  combined = AbortSignal.any([combined]);
  combined = AbortSignal.any([combined]);
  let fired = false;
  combined.onabort = () => { fired = true; };
  controller.abort("the reason");
  assert_true(fired);
  assert_equals(combined.reason, "the reason");
}, "AbortSignal.any() works with intermediate signals");

test(() => {
  const controller = new AbortController();
  const signals = [controller.signal];
  signals.push(AbortSignal.any([controller.signal]));
  signals.push(AbortSignal.any([controller.signal]));
  signals.push(AbortSignal.any([signals[0]]));
  signals.push(AbortSignal.any([signals[1]]));
  let result = "";
  signals.forEach((s, i) => s.addEventListener("abort", () => { result += i; }));
  controller.abort();
  assert_equals(result, "01234");
}, "Abort events for AbortSignal.any() signals fire in the right order");

test((t) => {
  const controller = new AbortController();
  const dependent = AbortSignal.any([controller.signal]);
  let dependentAbortedFirst = null;
  controller.signal.addEventListener("abort", t.step_func(() => { dependentAbortedFirst = dependent.aborted; }));
  controller.abort();
  assert_true(dependentAbortedFirst, "dependents are marked aborted before any abort event fires");
  assert_throws_js(TypeError, () => AbortSignal.any([controller.signal, {}]));
  assert_throws_js(TypeError, () => AbortSignal.any(null));
  assert_throws_js(TypeError, () => AbortSignal.any());
}, "AbortSignal.any() marks dependents aborted first, and checks its argument");

test(() => {
  // Many dependents of one long-lived signal: none listened to, all collectable.
  const longLived = new AbortController();
  for (let i = 0; i < 5000; i++) AbortSignal.any([longLived.signal]);
  const last = AbortSignal.any([longLived.signal]);
  let fired = false;
  last.onabort = () => { fired = true; };
  longLived.abort();
  assert_true(fired, "a listened-to dependent still fires");
}, "AbortSignal.any() on a long-lived signal");
"""


@pytest.fixture(scope="module")
def events_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    server = serve(tmp_path_factory.mktemp("events"), EVENTS_SUITE)
    try:
        yield server
    finally:
        server.stop()


def test_events_and_abort_wpt_style(events_server: ServiceProcess) -> None:
    check_suite(events_server, "dom/events + dom/abort")


def test_listener_exceptions_are_reported_in_the_log(events_server: ServiceProcess) -> None:
    # The suite's "an exception in a listener" test throws "listener boom" from
    # a listener; dispatchEvent reports it as an uncaught exception would be.
    events_server.get("/wpt")
    events_server.wait_for("listener boom")


def test_abort_signal_timeout_fires_after_the_response(dev: Any) -> None:
    """A timeout signal created by one request fires in a later event of the same invocation (waitUntil)."""
    server = dev(
        {
            "worker.js": """
            let last = "none";
            export default {
              async fetch(request, env, ctx) {
                if (new URL(request.url).pathname === "/last") return new Response(last);
                const signal = AbortSignal.timeout(20);
                const started = Date.now();
                ctx.waitUntil(new Promise((resolve) => {
                  signal.addEventListener("abort", () => {
                    last = `${signal.reason.name} after ${Date.now() - started >= 20}`;
                    resolve();
                  });
                }));
                return new Response(String(signal.aborted));
              },
            };
            """
        }
    )
    assert server.get("/").text == "false"
    server.wait_for(r"GET / 200")
    for _ in range(100):
        if server.get("/last").text != "none":
            break
        time.sleep(0.02)
    assert server.get("/last").text == "TimeoutError after true"
