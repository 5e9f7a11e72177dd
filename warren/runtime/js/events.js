// Events for Warren isolates: Event, CustomEvent, EventTarget, AbortController
// and AbortSignal (WHATWG DOM, "Events" and "Aborting ongoing activities").
//
// Loaded as a classic script after webapi.js and before bootstrap.js. Its only
// top-level effect is `globalThis.__warrenEvents`, which the bootstrap takes
// and calls once with the global object and the runtime's private `internals`.
//
// There is no event path here: targets are never nested, so an event is only
// ever dispatched at its target (capture listeners first, as the DOM orders
// them there). As on Workers, `timeStamp` is always 0 (no clock for timing
// attacks). An exception thrown by a listener is reported, not rethrown.
//
// Also sets `internals.idl`, the few Web IDL helpers that blob.js and
// encoding_streams.js (loaded next) share with this file.

globalThis.__warrenEvents = function install(global, internals) {
  'use strict';

  const DOMException = global.DOMException;

  function defineGlobal(name, value) {
    Object.defineProperty(global, name, { value, writable: true, enumerable: false, configurable: true });
  }

  function requireArgs(count, needed, what) {
    if (count < needed) {
      throw new TypeError(`${what}: ${needed} argument${needed > 1 ? 's' : ''} required, but only ${count} present.`);
    }
  }

  function toDictionary(v, what) {
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' && typeof v !== 'function') {
      throw new TypeError(`${what}: the options argument must be an object.`);
    }
    return v;
  }

  // Web IDL makes operations and attributes enumerable and gives every
  // interface a toStringTag; plain classes do neither.
  function finishInterface(cls, tag) {
    for (const target of [cls.prototype, cls]) {
      for (const key of Object.getOwnPropertyNames(target)) {
        if (key === 'constructor' || key === 'prototype' || key === 'length' || key === 'name') continue;
        const desc = Object.getOwnPropertyDescriptor(target, key);
        if (desc.configurable) {
          desc.enumerable = true;
          Object.defineProperty(target, key, desc);
        }
      }
    }
    Object.defineProperty(cls.prototype, Symbol.toStringTag, { value: tag, configurable: true });
  }

  // Brand checks through the intrinsic getters, so that objects faking
  // `buffer`/`byteLength` cannot pass for buffers.
  const getter = (obj, key) => Object.getOwnPropertyDescriptor(obj, key).get;
  const TypedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype);
  const typedArrayTag = getter(TypedArrayPrototype, Symbol.toStringTag);
  const typedArrayBuffer = getter(TypedArrayPrototype, 'buffer');
  const typedArrayOffset = getter(TypedArrayPrototype, 'byteOffset');
  const typedArrayByteLength = getter(TypedArrayPrototype, 'byteLength');
  const dataViewBuffer = getter(DataView.prototype, 'buffer');
  const dataViewOffset = getter(DataView.prototype, 'byteOffset');
  const dataViewByteLength = getter(DataView.prototype, 'byteLength');
  const arrayBufferByteLength = getter(ArrayBuffer.prototype, 'byteLength');
  function isArrayBuffer(v) {
    try { arrayBufferByteLength.call(v); return true; } catch { return false; }
  }

  // A Uint8Array over the bytes of a BufferSource (no copy), or null.
  function bufferSourceBytes(v) {
    if (typeof v !== 'object' || v === null) return null;
    if (typedArrayTag.call(v) !== undefined) {
      return new Uint8Array(typedArrayBuffer.call(v), typedArrayOffset.call(v), typedArrayByteLength.call(v));
    }
    if (isArrayBuffer(v)) return new Uint8Array(v);
    try {
      return new Uint8Array(dataViewBuffer.call(v), dataViewOffset.call(v), dataViewByteLength.call(v));
    } catch {
      return null;
    }
  }

  internals.idl = { requireArgs, toDictionary, finishInterface, bufferSourceBytes, defineGlobal };

  function report(error) {
    const reportError = internals.reportError;
    if (typeof reportError === 'function') reportError(error);
  }

  // ===========================================================================
  // Event
  // ===========================================================================

  const NONE = 0;
  const AT_TARGET = 2;
  const PHASES = ['NONE', 'CAPTURING_PHASE', 'AT_TARGET', 'BUBBLING_PHASE'];

  let eventRecord; // (event) -> its internal record, or undefined

  function ev(event) {
    const record = eventRecord(event);
    if (record === undefined) throw new TypeError('Illegal invocation');
    return record;
  }

  // [LegacyUnforgeable]: an own accessor on each instance, one getter for all.
  const isTrustedDescriptor = {
    get: function isTrusted() { return ev(this).trusted; },
    enumerable: true,
    configurable: false,
  };

  // CustomEventInit is converted once, here, with its `detail` (Web IDL reads
  // a dictionary's members once, in order): CustomEvent asks for it.
  let wantDetail = false;
  let detailRead;

  class Event {
    #r;

    constructor(type, eventInitDict = undefined) {
      const readDetail = wantDetail;
      wantDetail = false;
      requireArgs(arguments.length, 1, "Failed to construct 'Event'");
      const t = `${type}`;
      const init = toDictionary(eventInitDict, "Failed to construct 'Event'");
      const bubbles = Boolean(init.bubbles);
      const cancelable = Boolean(init.cancelable);
      const composed = Boolean(init.composed);
      if (readDetail) detailRead = init.detail;
      this.#r = {
        type: t,
        bubbles,
        cancelable,
        composed,
        target: null,
        currentTarget: null,
        phase: NONE,
        stopPropagation: false,
        stopImmediate: false,
        canceled: false,
        inPassive: false,
        dispatching: false,
        trusted: false,
      };
      Object.defineProperty(this, 'isTrusted', isTrustedDescriptor);
    }

    static {
      eventRecord = (e) => (typeof e === 'object' && e !== null && #r in e ? e.#r : undefined);
    }

    get type() { return ev(this).type; }
    get target() { return ev(this).target; }
    get srcElement() { return ev(this).target; }
    get currentTarget() { return ev(this).currentTarget; }
    get eventPhase() { return ev(this).phase; }
    get bubbles() { return ev(this).bubbles; }
    get cancelable() { return ev(this).cancelable; }
    get composed() { return ev(this).composed; }
    get defaultPrevented() { return ev(this).canceled; }
    get timeStamp() { ev(this); return 0; }

    composedPath() {
      const r = ev(this);
      return r.dispatching && r.currentTarget !== null ? [r.currentTarget] : [];
    }

    stopPropagation() { ev(this).stopPropagation = true; }

    get cancelBubble() { return ev(this).stopPropagation; }
    set cancelBubble(value) { if (value) ev(this).stopPropagation = true; else ev(this); }

    stopImmediatePropagation() {
      const r = ev(this);
      r.stopPropagation = r.stopImmediate = true;
    }

    get returnValue() { return !ev(this).canceled; }
    set returnValue(value) { if (!value) cancel(ev(this)); else ev(this); }

    preventDefault() { cancel(ev(this)); }

    initEvent(type, bubbles = false, cancelable = false) {
      const r = ev(this);
      requireArgs(arguments.length, 1, "Failed to execute 'initEvent' on 'Event'");
      initEvent(r, `${type}`, bubbles, cancelable);
    }
  }

  function initEvent(r, type, bubbles, cancelable) {
    if (r.dispatching) return;
    r.stopPropagation = r.stopImmediate = r.canceled = r.trusted = false;
    r.target = null;
    r.type = type;
    r.bubbles = Boolean(bubbles);
    r.cancelable = Boolean(cancelable);
  }

  function cancel(r) {
    if (r.cancelable && !r.inPassive) r.canceled = true;
  }

  function defineConstants(cls, names) {
    names.forEach((name, value) => {
      const desc = { value, writable: false, enumerable: true, configurable: false };
      Object.defineProperty(cls, name, desc);
      Object.defineProperty(cls.prototype, name, desc);
    });
  }

  finishInterface(Event, 'Event');
  defineConstants(Event, PHASES);

  class CustomEvent extends Event {
    #detail;

    constructor(type, eventInitDict = undefined) {
      requireArgs(arguments.length, 1, "Failed to construct 'CustomEvent'");
      wantDetail = true;
      super(type, eventInitDict);
      const detail = detailRead;
      detailRead = undefined;
      this.#detail = detail === undefined ? null : detail;
    }

    get detail() {
      if (!(#detail in this)) throw new TypeError('Illegal invocation');
      return this.#detail;
    }

    initCustomEvent(type, bubbles = false, cancelable = false, detail = null) {
      if (!(#detail in this)) throw new TypeError('Illegal invocation');
      requireArgs(arguments.length, 1, "Failed to execute 'initCustomEvent' on 'CustomEvent'");
      const r = ev(this);
      if (r.dispatching) return;
      initEvent(r, `${type}`, bubbles, cancelable);
      this.#detail = detail;
    }
  }
  finishInterface(CustomEvent, 'CustomEvent');

  // ===========================================================================
  // EventTarget
  // ===========================================================================

  // (target, create) -> Map(type -> listener[]), or undefined if not a target.
  // Targets get a map of their own on their first listener (most signals never do).
  let listenersOf;
  const NO_LISTENERS = new Map();

  function flattenOptions(options) {
    if (typeof options === 'object' && options !== null) return Boolean(options.capture);
    return Boolean(options);
  }

  function checkCallback(callback, what) {
    if (callback !== null && typeof callback !== 'object' && typeof callback !== 'function') {
      throw new TypeError(`${what}: The callback provided as parameter 2 is not an object.`);
    }
  }

  class EventTarget {
    // type -> [{ callback, capture, once, passive, removed, signal, unsubscribe }], in order
    #listeners = null;

    static {
      listenersOf = (t, create = false) => {
        if (typeof t !== 'object' || t === null || !(#listeners in t)) return undefined;
        if (t.#listeners === null) {
          if (!create) return NO_LISTENERS;
          t.#listeners = new Map();
        }
        return t.#listeners;
      };
    }

    addEventListener(type, callback, options = undefined) {
      targetListeners(this);
      requireArgs(arguments.length, 2, "Failed to execute 'addEventListener' on 'EventTarget'");
      type = `${type}`;
      checkCallback(callback, "Failed to execute 'addEventListener' on 'EventTarget'");
      let capture = false;
      let once = false;
      let passive = false;
      let signal = null;
      if (typeof options === 'object' && options !== null) {
        // Dictionary members in Web IDL order: inherited first, then by name.
        capture = Boolean(options.capture);
        once = Boolean(options.once);
        passive = Boolean(options.passive);
        const s = options.signal;
        if (s !== undefined) {
          if (signalRecord(s) === undefined) {
            throw new TypeError(
              "Failed to execute 'addEventListener' on 'EventTarget': member signal is not of type 'AbortSignal'.");
          }
          signal = s;
        }
      } else {
        capture = Boolean(options);
      }
      addListener(this, type, callback, capture, once, passive, signal);
    }

    removeEventListener(type, callback, options = undefined) {
      const map = targetListeners(this);
      requireArgs(arguments.length, 2, "Failed to execute 'removeEventListener' on 'EventTarget'");
      type = `${type}`;
      checkCallback(callback, "Failed to execute 'removeEventListener' on 'EventTarget'");
      const capture = flattenOptions(options);
      const list = map.get(type);
      const listener = list === undefined ? undefined : list.find((l) => l.callback === callback && l.capture === capture);
      if (listener !== undefined) removeListener(this, type, listener);
    }

    dispatchEvent(event) {
      targetListeners(this);
      requireArgs(arguments.length, 1, "Failed to execute 'dispatchEvent' on 'EventTarget'");
      const r = eventRecord(event);
      if (r === undefined) {
        throw new TypeError("Failed to execute 'dispatchEvent' on 'EventTarget': parameter 1 is not of type 'Event'.");
      }
      if (r.dispatching) {
        throw new DOMException(
          "Failed to execute 'dispatchEvent' on 'EventTarget': The event is already being dispatched.",
          'InvalidStateError');
      }
      r.trusted = false;
      return dispatch(this, event, r);
    }
  }
  finishInterface(EventTarget, 'EventTarget');

  function targetListeners(target) {
    const map = listenersOf(target);
    if (map === undefined) throw new TypeError('Illegal invocation');
    return map;
  }

  function addListener(target, type, callback, capture, once, passive, signal) {
    if (callback === null) return null;
    if (signal !== null && signalRecord(signal).aborted) return null;
    const map = listenersOf(target, true);
    let list = map.get(type);
    if (list === undefined) map.set(type, (list = []));
    for (const l of list) if (l.callback === callback && l.capture === capture) return null;
    const listener = { callback, capture, once, passive, removed: false, unsubscribe: null };
    list.push(listener);
    if (signal !== null) listener.unsubscribe = addAlgorithm(signal, () => removeListener(target, type, listener));
    listenersChanged(target, type);
    return listener;
  }

  function removeListener(target, type, listener) {
    if (listener.removed) return;
    listener.removed = true;
    if (listener.unsubscribe !== null) listener.unsubscribe();
    const map = listenersOf(target);
    const list = map.get(type);
    const i = list === undefined ? -1 : list.indexOf(listener);
    if (i >= 0) {
      list.splice(i, 1);
      if (list.length === 0) map.delete(type);
    }
    listenersChanged(target, type);
  }

  function dispatch(target, event, r) {
    r.dispatching = true;
    r.target = target;
    r.currentTarget = target;
    r.phase = AT_TARGET;
    const list = listenersOf(target).get(r.type);
    if (list !== undefined) {
      // A copy: listeners added while dispatching wait for the next event;
      // removed ones are skipped through their `removed` flag.
      const listeners = list.slice();
      invoke(target, event, r, listeners, true);
      invoke(target, event, r, listeners, false);
    }
    r.phase = NONE;
    r.currentTarget = null;
    r.dispatching = false;
    r.stopPropagation = r.stopImmediate = false;
    return !r.canceled;
  }

  function invoke(target, event, r, listeners, capturePass) {
    if (r.stopPropagation) return;
    for (const listener of listeners) {
      if (listener.removed || listener.capture !== capturePass) continue;
      if (listener.once) removeListener(target, r.type, listener);
      if (listener.passive) r.inPassive = true;
      try {
        const callback = listener.callback;
        if (typeof callback === 'function') {
          callback.call(target, event);
        } else {
          const handleEvent = callback.handleEvent;
          if (typeof handleEvent !== 'function') {
            throw new TypeError("The listener's handleEvent property is not a function.");
          }
          handleEvent.call(callback, event);
        }
      } catch (error) {
        report(error);
      }
      r.inPassive = false;
      if (r.stopImmediate) return;
    }
  }

  // ===========================================================================
  // AbortSignal, AbortController
  // ===========================================================================

  let signalRecord; // (signal) -> its internal record, or undefined
  let constructing = false;

  function sig(signal) {
    const record = signalRecord(signal);
    if (record === undefined) throw new TypeError('Illegal invocation');
    return record;
  }

  function newSignal() {
    constructing = true;
    try {
      return new AbortSignal();
    } finally {
      constructing = false;
    }
  }

  // AbortSignal.any() makes "dependent" signals. Their sources reach them
  // only through a WeakRef, so that a long-lived source (a signal kept in a
  // global) does not keep every dependent ever made alive; a dependent that
  // someone listens to is held strongly ("pinned") by its sources, because it
  // must not disappear before it can fire (DOM, "AbortSignal garbage collection").
  class AbortSignal extends EventTarget {
    #s = {
      aborted: false,
      reason: undefined,
      algorithms: null, // Set of functions run on abort, before the event
      onabort: null, // { handler, listener } for the event handler attribute
      dependent: false,
      sources: null, // dependent signals: their source signals
      self: null, // dependent signals: the WeakRef their sources hold
      dependents: null, // source signals: Set of WeakRefs to dependents
      pruneAt: 16,
      pinned: null, // source signals: Set of dependents being listened to
    };

    constructor() {
      if (!constructing) throw new TypeError('Illegal constructor');
      super();
    }

    static {
      signalRecord = (s) => (typeof s === 'object' && s !== null && #s in s ? s.#s : undefined);
    }

    static abort(reason = undefined) {
      const signal = newSignal();
      const s = signalRecord(signal);
      s.aborted = true;
      s.reason = reason === undefined ? defaultReason() : reason;
      return signal;
    }

    static timeout(milliseconds) {
      requireArgs(arguments.length, 1, "Failed to execute 'timeout' on 'AbortSignal'");
      const ms = enforceRange(milliseconds, "Failed to execute 'timeout' on 'AbortSignal'");
      const signal = newSignal();
      // The timer holds the signal until it fires or the invocation ends (its
      // timers are then dropped, so the signal never aborts), as on Workers.
      internals.setTimeout(() => {
        signalAbort(signal, new DOMException('The operation was aborted due to timeout', 'TimeoutError'));
      }, ms);
      return signal;
    }

    static any(signals) {
      requireArgs(arguments.length, 1, "Failed to execute 'any' on 'AbortSignal'");
      const what = "Failed to execute 'any' on 'AbortSignal'";
      if (typeof signals !== 'object' || signals === null || typeof signals[Symbol.iterator] !== 'function') {
        throw new TypeError(`${what}: The provided value cannot be converted to a sequence.`);
      }
      const list = [];
      for (const signal of signals) {
        if (signalRecord(signal) === undefined) {
          throw new TypeError(`${what}: Failed to convert value to 'AbortSignal'.`);
        }
        list.push(signal);
      }
      return anySignal(list);
    }

    get aborted() { return sig(this).aborted; }

    get reason() { return sig(this).reason; }

    throwIfAborted() {
      const s = sig(this);
      if (s.aborted) throw s.reason;
    }

    get onabort() {
      const h = sig(this).onabort;
      return h === null ? null : h.handler;
    }

    set onabort(value) {
      const s = sig(this);
      const handler = typeof value === 'object' || typeof value === 'function' ? value : null;
      if (handler === null) {
        if (s.onabort !== null) {
          const { listener } = s.onabort;
          s.onabort = null;
          removeListener(this, 'abort', listener);
        }
        return;
      }
      if (s.onabort !== null) {
        s.onabort.handler = handler;
        return;
      }
      // HTML "event handler": one listener, registered on first set, that
      // calls whatever the attribute holds when the event fires.
      const state = { handler, listener: null };
      s.onabort = state;
      state.listener = addListener(this, 'abort', function (event) {
        if (typeof state.handler !== 'function') return;
        const result = state.handler.call(this, event);
        if (result === false) cancel(ev(event));
      }, false, false, false, null);
    }
  }
  finishInterface(AbortSignal, 'AbortSignal');

  function defaultReason() {
    return new DOMException('signal is aborted without reason', 'AbortError');
  }

  // Web IDL [EnforceRange] unsigned long long.
  function enforceRange(value, what) {
    let n = +value;
    if (!Number.isFinite(n)) throw new TypeError(`${what}: Value is not a finite number.`);
    n = Math.trunc(n);
    if (n < 0 || n > Number.MAX_SAFE_INTEGER) throw new TypeError(`${what}: Value is outside the accepted range.`);
    return n;
  }

  function anySignal(signals) {
    const result = newSignal();
    const r = signalRecord(result);
    for (const signal of signals) {
      const s = signalRecord(signal);
      if (s.aborted) {
        r.aborted = true;
        r.reason = s.reason;
        return result;
      }
    }
    r.dependent = true;
    r.sources = [];
    r.self = new WeakRef(result);
    const follow = (source) => {
      if (r.sources.includes(source)) return;
      r.sources.push(source);
      const s = signalRecord(source);
      if (s.dependents === null) s.dependents = new Set();
      if (s.dependents.size >= s.pruneAt) {
        for (const ref of s.dependents) if (ref.deref() === undefined) s.dependents.delete(ref);
        s.pruneAt = Math.max(16, s.dependents.size * 2);
      }
      s.dependents.add(r.self);
    };
    for (const signal of signals) {
      const s = signalRecord(signal);
      if (s.dependent) s.sources.forEach(follow);
      else follow(signal);
    }
    return result;
  }

  function hasAbortListeners(signal, s) {
    return (s.algorithms !== null && s.algorithms.size > 0) || listenersOf(signal).has('abort');
  }

  function updatePin(signal) {
    const s = signalRecord(signal);
    if (!s.dependent || s.aborted) return;
    const listened = hasAbortListeners(signal, s);
    for (const source of s.sources) {
      const src = signalRecord(source);
      if (listened) (src.pinned ??= new Set()).add(signal);
      else if (src.pinned !== null) src.pinned.delete(signal);
    }
  }

  function listenersChanged(target, type) {
    if (type === 'abort' && signalRecord(target) !== undefined) updatePin(target);
  }

  // Returns a function that takes the algorithm back.
  function addAlgorithm(signal, algorithm) {
    const s = signalRecord(signal);
    if (s.aborted) return () => {};
    const entry = () => algorithm();
    (s.algorithms ??= new Set()).add(entry);
    updatePin(signal);
    return () => {
      if (s.algorithms !== null && s.algorithms.delete(entry)) updatePin(signal);
    };
  }

  function signalAbort(signal, reason) {
    const s = signalRecord(signal);
    if (s.aborted) return;
    s.aborted = true;
    s.reason = reason === undefined ? defaultReason() : reason;
    const toAbort = [];
    if (s.dependents !== null) {
      for (const ref of s.dependents) {
        const dependent = ref.deref();
        if (dependent === undefined) continue;
        const d = signalRecord(dependent);
        if (d.aborted) continue;
        d.aborted = true;
        d.reason = s.reason;
        toAbort.push(dependent);
      }
    }
    runAbortSteps(signal);
    for (const dependent of toAbort) runAbortSteps(dependent);
  }

  function runAbortSteps(signal) {
    const s = signalRecord(signal);
    // Nothing can abort this signal again: drop the links either way.
    if (s.dependent) {
      for (const source of s.sources) {
        const src = signalRecord(source);
        if (src.dependents !== null) src.dependents.delete(s.self);
        if (src.pinned !== null) src.pinned.delete(signal);
      }
      s.sources = [];
    }
    s.dependents = null;
    s.pinned = null;
    const algorithms = s.algorithms;
    s.algorithms = null;
    if (algorithms !== null) {
      for (const algorithm of algorithms) {
        try { algorithm(); } catch (error) { report(error); }
      }
    }
    const event = new Event('abort');
    const r = eventRecord(event);
    r.trusted = true;
    dispatch(signal, event, r);
  }

  class AbortController {
    #signal = newSignal();

    get signal() {
      if (!(#signal in this)) throw new TypeError('Illegal invocation');
      return this.#signal;
    }

    abort(reason = undefined) {
      if (!(#signal in this)) throw new TypeError('Illegal invocation');
      signalAbort(this.#signal, reason);
    }
  }
  finishInterface(AbortController, 'AbortController');

  defineGlobal('Event', Event);
  defineGlobal('CustomEvent', CustomEvent);
  defineGlobal('EventTarget', EventTarget);
  defineGlobal('AbortController', AbortController);
  defineGlobal('AbortSignal', AbortSignal);

  // For fetch() and Request.signal. The originals, whatever tenants do to the globals.
  internals.AbortController = AbortController;
  internals.AbortSignal = AbortSignal;
  internals.isAbortSignal = (x) => signalRecord(x) !== undefined;
  internals.signalAborted = (signal) => sig(signal).aborted;
  internals.signalReason = (signal) => sig(signal).reason;
  // `callback()` runs when the signal aborts, before its abort event; never if
  // it has already aborted (check signalAborted first). Returns an unsubscribe.
  internals.onAbort = (signal, callback) => {
    sig(signal);
    return addAlgorithm(signal, callback);
  };
  internals.abortSignal = (signal, reason) => signalAbort(signal, reason);
};
