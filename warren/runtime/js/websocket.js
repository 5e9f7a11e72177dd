// WebSockets as on Cloudflare Workers: WebSocketPair, WebSocket (accept, send,
// close, readyState, events), MessageEvent, CloseEvent and ErrorEvent, and the
// coupling of `new Response(null, { status: 101, webSocket: client })` to the
// invocation that returns it.
//
// Loaded as a classic script after events.js and before bootstrap.js. Its only
// top-level effect is `globalThis.__warrenWebSocket`, which the bootstrap takes
// and calls once with the global object, the runtime's `internals` and `host`,
// the one host function of WebSockets (warren/runtime/websockets.py):
//   host("couple", requestId, socketId, headersJSON) -> "" or why it is refused
//   host("send", socketId, binary, latin1OrText)     -> 0, or 1: too much queued
//   host("close", socketId, code, reason); host("ack", socketId, bytes);
//   host("ended", socketId)  (the client's close or error was dispatched)
//   host("relay", requestId, token, headersJSON) -> "" or why it is refused: a
//     WebSocket that a Durable Object or a service accepted (held by the node
//     under `token`, see warren/server/websockets.py) is returned to the client
// The host enters with internals.webSocketEvent(socketId, "message" | "close" |
// "error", ...) for the end the worker kept, and for a WebSocket the worker opened
// itself (an *origin socket*: fetch() with "Upgrade: websocket", or new
// WebSocket(url)), whose id the host gave (negative; the same host calls reach it).
// An origin socket returned in the worker's own 101 is piped to its client by the
// host (host("pipe", requestId, socketId, headersJSON)), with no JavaScript per
// message; what had already reached the isolate for it is handed back
// (host("forward", socketId, binary, data), host("forwardClose", socketId, code, reason)).
//
// As in workerd: messages are refused before accept() (TypeError), close codes
// are checked, what arrives before accept() waits for it, and a close from the
// other side is answered at once (compatibility flag web_socket_auto_reply_to_close):
// readyState is CLOSED when the close event fires, and close() then does nothing.
// Both ends may also stay in the isolate (accept() on each): messages then go
// from one to the other directly.

globalThis.__warrenWebSocket = function install(global, internals, host, defineLazyGlobals) {
  'use strict';

  // Taken now, while the globals are the runtime's own: the classes below are made
  // only when a script first touches one of their names (most workers never do).
  const { requireArgs, toDictionary, finishInterface, defineGlobal } = internals.idl;
  const Event = global.Event;
  const EventTarget = global.EventTarget;
  const dispatchEvent = EventTarget.prototype.dispatchEvent;
  const TextEncoder = global.TextEncoder;
  const DOMException = global.DOMException;
  const toWellFormed = String.prototype.toWellFormed;
  const promiseThen = Promise.prototype.then;
  const resolved = Promise.resolve();
  const NAMES = ['WebSocketPair', 'WebSocket', 'MessageEvent', 'CloseEvent', 'ErrorEvent'];

  internals.isWebSocket = () => false; // until the classes exist, nothing is one
  let ensure = () => {};
  if (typeof defineLazyGlobals !== 'function') make();
  else ensure = defineLazyGlobals(NAMES, make);
  // A stub's 101 may reach a worker that never touched the classes: make them now
  // (make() replaces this function with the real one).
  internals.relayedWebSocket = (token) => {
    ensure();
    return internals.relayedWebSocket(token);
  };
  internals.originWebSocket = (id, protocol) => {
    ensure();
    return internals.originWebSocket(id, protocol);
  };

  function make() {
    const encoder = new TextEncoder();
    const URLClass = internals.URL;

    const NOT_ACCEPTED =
      'You must call one of accept() or state.acceptWebSocket() on this WebSocket before sending messages.';
    const MAX_QUEUED = 2 * 1024 * 1024; // bytes waiting for the other end (before it is returned or accepted)
    const MAX_REASON_BYTES = 123;
    const MAX_ATTACHMENT_BYTES = 16 * 1024; // as on Workers (serializeAttachment)

    function later(callback) {
      promiseThen.call(resolved, callback);
    }

    // ===========================================================================
    // Events
    // ===========================================================================

    let closeEvent; // (event) -> the CloseEvent, or throws
    let errorFields; // (event) -> an ErrorEvent's fields, or throws

    class MessageEvent extends Event {
      #data;

      constructor(type, eventInitDict = undefined) {
        requireArgs(arguments.length, 1, "Failed to construct 'MessageEvent'");
        const init = toDictionary(eventInitDict, "Failed to construct 'MessageEvent'");
        super(type, init);
        this.#data = init.data === undefined ? null : init.data;
      }

      get data() {
        if (!(#data in this)) throw new TypeError('Illegal invocation');
        return this.#data;
      }
    }
    finishInterface(MessageEvent, 'MessageEvent');

    class CloseEvent extends Event {
      #code;
      #reason;
      #wasClean;

      constructor(type, eventInitDict = undefined) {
        requireArgs(arguments.length, 1, "Failed to construct 'CloseEvent'");
        const init = toDictionary(eventInitDict, "Failed to construct 'CloseEvent'");
        super(type, init);
        this.#code = init.code === undefined ? 0 : Math.trunc(Number(init.code)) || 0;
        this.#reason = init.reason === undefined ? '' : `${init.reason}`;
        this.#wasClean = Boolean(init.wasClean);
      }

      get code() { return closeEvent(this).#code; }
      get reason() { return closeEvent(this).#reason; }
      get wasClean() { return closeEvent(this).#wasClean; }

      static {
        closeEvent = (e) => {
          if (typeof e !== 'object' || e === null || !(#code in e)) throw new TypeError('Illegal invocation');
          return e;
        };
      }
    }
    finishInterface(CloseEvent, 'CloseEvent');

    class ErrorEvent extends Event {
      #fields;

      constructor(type, eventInitDict = undefined) {
        requireArgs(arguments.length, 1, "Failed to construct 'ErrorEvent'");
        const init = toDictionary(eventInitDict, "Failed to construct 'ErrorEvent'");
        super(type, init);
        this.#fields = {
          message: init.message === undefined ? '' : `${init.message}`,
          filename: init.filename === undefined ? '' : `${init.filename}`,
          lineno: init.lineno === undefined ? 0 : Number(init.lineno) >>> 0,
          colno: init.colno === undefined ? 0 : Number(init.colno) >>> 0,
          error: init.error,
        };
      }

      get message() { return errorFields(this).message; }
      get filename() { return errorFields(this).filename; }
      get lineno() { return errorFields(this).lineno; }
      get colno() { return errorFields(this).colno; }
      get error() { return errorFields(this).error; }

      static {
        errorFields = (e) => {
          if (typeof e !== 'object' || e === null || !(#fields in e)) throw new TypeError('Illegal invocation');
          return e.#fields;
        };
      }
    }
    finishInterface(ErrorEvent, 'ErrorEvent');

    // ===========================================================================
    // WebSocket
    // ===========================================================================

    const CONSTANTS = [
      ['READY_STATE_CONNECTING', 0], ['CONNECTING', 0],
      ['READY_STATE_OPEN', 1], ['OPEN', 1],
      ['READY_STATE_CLOSING', 2], ['CLOSING', 2],
      ['READY_STATE_CLOSED', 3], ['CLOSED', 3],
    ];

    let constructing = false;
    let socketRecord; // (ws) -> its record, or undefined
    let nextId = 1;
    // Server ends coupled to an invocation, by id: the host's events find them here.
    const coupled = new Map();

    function rec(ws) {
      const record = socketRecord(ws);
      if (record === undefined) throw new TypeError('Illegal invocation');
      return record;
    }

    class WebSocket extends EventTarget {
      #r = null;

      constructor(url = undefined, protocols = undefined) {
        const outgoing = !constructing;
        let target = null;
        let asked = [];
        if (outgoing) {
          requireArgs(arguments.length, 1, "Failed to construct 'WebSocket'");
          ({ target, asked } = clientTarget(url, protocols));
        }
        super();
        this.#r = {
          id: nextId++,
          ws: this,
          peer: null,
          accepted: false,
          released: false, // returned in a Response: the client's end
          coupled: false, // its traffic goes to the host (its peer was returned)
          closedOutgoing: false,
          closedIncoming: false,
          aborted: false, // sending failed or the socket errored: sends are dropped
          error: null,
          inbox: [], // what arrived before accept() (or, on a returned end, what its peer sent before)
          inboxBytes: 0,
          attachment: undefined,
          relay: null, // the node's token for a socket another invocation accepted (a stub's 101)
          requestId: 0, // the invocation it is coupled to
          handler: null, // (kind, item, taken) from state.acceptWebSocket(): events go there, not to listeners
          origin: false, // opened by the worker: the host holds the connection under `id`
          connecting: false, // new WebSocket(url) until the origin has answered
          closeWhenOpen: null, // a close() made while connecting, sent once open
          url: null,
          protocol: '',
        };
        if (outgoing) connect(this.#r, target, asked);
      }

      static {
        socketRecord = (o) => (typeof o === 'object' && o !== null && #r in o ? o.#r : undefined);
      }

      accept(options = undefined) {
        const r = rec(this);
        toDictionary(options, "Failed to execute 'accept' on 'WebSocket'");
        if (r.released) throw new TypeError("Can't accept() WebSocket that was already used in a response.");
        if (r.relay !== null) {
          throw new TypeError(
            'This WebSocket was accepted by a Durable Object or a service; warren can only return it in a ' +
            'Response (new Response(null, { status: 101, webSocket })), not accept() it here.');
        }
        if (r.accepted) return;
        r.accepted = true;
        if (r.inbox.length > 0) later(() => flushInbox(r));
      }

      send(message) {
        const r = rec(this);
        requireArgs(arguments.length, 1, "Failed to execute 'send' on 'WebSocket'");
        if (r.connecting) throw new DOMException("Can't send on a WebSocket that is still connecting.", 'InvalidStateError');
        if (r.closedOutgoing) throw new TypeError("Can't call WebSocket send() after close().");
        if (r.aborted || r.released) return;
        if (!r.accepted) throw new TypeError(NOT_ACCEPTED);
        const bytes = internals.bytesOf(message);
        if (r.coupled) {
          // Straight to the host: no copy, no size to count here.
          toHost(r, bytes !== null ? { kind: 'message', binary: true, bytes }
            : { kind: 'message', binary: false, text: toWellFormed.call(`${message}`) });
          return;
        }
        deliver(r, bytes !== null
          ? { kind: 'message', binary: true, bytes: bytes.slice(), size: bytes.length }
          : textItem(`${message}`));
      }

      close(code = undefined, reason = undefined) {
        const r = rec(this);
        if (r.closedOutgoing || r.aborted || r.released) return;
        if (!r.accepted) throw new TypeError(NOT_ACCEPTED);
        let c = 1005;
        if (code !== undefined) {
          c = Math.trunc(Number(code));
          if (!(c >= 1000 && c < 5000 && c !== 1004 && c !== 1005 && c !== 1006 && c !== 1015)) {
            throw new TypeError(`Invalid WebSocket close code: ${Number.isFinite(c) ? c : code}.`);
          }
        }
        let why = '';
        if (reason !== undefined) {
          if (code === undefined) throw new TypeError('If you specify a WebSocket close reason, you must also specify a code.');
          why = toWellFormed.call(`${reason}`);
          if (encoder.encode(why).length > MAX_REASON_BYTES) {
            throw new TypeError(`The WebSocket close reason must be at most ${MAX_REASON_BYTES} bytes of UTF-8.`);
          }
        }
        r.closedOutgoing = true;
        if (r.connecting) {
          r.closeWhenOpen = { kind: 'close', code: c, reason: why, clean: true, size: 0 };
          return;
        }
        deliver(r, { kind: 'close', code: c, reason: why, clean: true, size: 0 });
      }

      get readyState() {
        const r = rec(this);
        if (r.connecting) return 0;
        if (r.error !== null || (r.closedIncoming && r.closedOutgoing)) return 3;
        if (r.closedIncoming || r.closedOutgoing) return 2;
        return 1;
      }

      get url() { return rec(this).url; }
      get protocol() { return rec(this).protocol; }
      get extensions() { rec(this); return ''; }

      serializeAttachment(value) {
        const r = rec(this);
        requireArgs(arguments.length, 1, "Failed to execute 'serializeAttachment' on 'WebSocket'");
        const size = encoder.encode(internals.serialize(value)).length;
        if (size > MAX_ATTACHMENT_BYTES) {
          throw new RangeError(
            `A WebSocket attachment may be at most ${MAX_ATTACHMENT_BYTES} bytes serialized; this one is ${size}.`);
        }
        r.attachment = global.structuredClone(value);
      }

      deserializeAttachment() {
        const r = rec(this);
        return r.attachment === undefined ? null : global.structuredClone(r.attachment);
      }
    }
    finishInterface(WebSocket, 'WebSocket');
    for (const [name, value] of CONSTANTS) {
      const desc = { value, writable: false, enumerable: true, configurable: false };
      Object.defineProperty(WebSocket, name, desc);
      Object.defineProperty(WebSocket.prototype, name, desc);
    }

    function textItem(text) {
      const wellFormed = toWellFormed.call(text);
      // The size the host will count: UTF-8 bytes (at most 3 per UTF-16 unit; exact below 1/3 of the limit).
      const size = wellFormed.length * 3 < MAX_QUEUED ? encoder.encode(wellFormed).length : wellFormed.length * 3;
      return { kind: 'message', binary: false, text: wellFormed, size };
    }

    function newSocket() {
      constructing = true;
      try {
        return new WebSocket();
      } finally {
        constructing = false;
      }
    }

    // What `r` sends goes to the host once its peer was returned in a response,
    // else to its peer in the isolate (queued there until the peer is accepted).
    function deliver(r, item) {
      if (r.coupled) {
        toHost(r, item);
        return;
      }
      const peer = r.peer;
      if (peer.accepted) {
        later(() => receive(peer, item));
        return;
      }
      if (peer.inboxBytes + item.size > MAX_QUEUED) {
        throw new RangeError('Too much data sent on this WebSocket before the other end was accepted or returned.');
      }
      peer.inbox.push(item);
      peer.inboxBytes += item.size;
    }

    function toHost(r, item) {
      if (item.kind === 'close') {
        host('close', r.id, item.code, item.reason);
        return;
      }
      const refused = item.binary
        ? host('send', r.id, true, internals.bytesToLatin1(item.bytes))
        : host('send', r.id, false, item.text);
      if (refused) {
        // The client is not taking what was sent: the socket fails, as a broken connection would.
        const error = new Error('WebSocket send queue is full: the client is not reading what this worker sends.');
        host('close', r.id, 1011, 'Send queue full');
        fail(r, error);
      }
    }

    function fail(r, error) {
      if (r.error !== null) return;
      r.error = error;
      r.aborted = true;
      if (r.handler !== null) {
        later(() => r.handler('error', { error }, () => {}));
        return;
      }
      later(() => dispatch(r, new ErrorEvent('error', { message: error.message, error })));
    }

    function dispatch(r, event) {
      dispatchEvent.call(r.ws, event);
    }

    function flushInbox(r) {
      const items = r.inbox;
      r.inbox = [];
      r.inboxBytes = 0;
      for (const item of items) receive(r, item);
    }

    // One event for `r` (accepted): from its peer in the isolate or from the host.
    function receive(r, item) {
      if (item.kind === 'message') {
        // Acknowledged once taken: the edge may then read more from the client (a slow
        // handler slows its client instead of queueing without bound).
        const taken = item.fromHost ? () => host('ack', r.id, item.size) : () => {};
        if (r.closedIncoming || r.error !== null) { taken(); return; }
        emit(r, 'message', { data: item.binary ? item.bytes.buffer : item.text }, taken);
        return;
      }
      if (item.kind === 'error') {
        r.closedIncoming = true;
        fail(r, new Error(item.message));
        return;
      }
      if (r.closedIncoming) return;
      r.closedIncoming = true;
      if (r.error !== null) return; // as in workerd, an error event is the socket's last
      // The other side's close is answered at once: nothing more may be sent.
      const answered = r.closedOutgoing;
      r.closedOutgoing = true;
      if (!answered && !item.fromHost && r.peer !== null && !r.coupled) {
        later(() => receive(r.peer, { kind: 'close', code: item.code, reason: item.reason, clean: true, size: 0 }));
      }
      emit(r, 'close', { code: item.code, reason: item.reason, wasClean: item.clean }, () => {});
    }

    // To the listeners, or for a socket taken with state.acceptWebSocket() to the
    // object's handler (which calls `taken` once the event has reached the object).
    function emit(r, kind, fields, taken) {
      if (r.handler !== null) {
        r.handler(kind, fields, taken);
        return;
      }
      try {
        dispatch(r, kind === 'message' ? new MessageEvent('message', fields) : new CloseEvent('close', fields));
      } finally {
        taken();
      }
    }

    class WebSocketPair {
      constructor() {
        const first = newSocket();
        const second = newSocket();
        const a = socketRecord(first);
        const b = socketRecord(second);
        a.peer = b;
        b.peer = a;
        const readOnly = (value) => ({ value, writable: false, enumerable: true, configurable: false });
        Object.defineProperty(this, 0, readOnly(first));
        Object.defineProperty(this, 1, readOnly(second));
      }

      *[Symbol.iterator]() {
        yield this[0];
        yield this[1];
      }
    }
    finishInterface(WebSocketPair, 'WebSocketPair');

    // --- the host's side ----------------------------------------------------------

    internals.isWebSocket = (x) => socketRecord(x) !== undefined;

    // dispatchFetch: `ws` was returned in a 101 response to invocation `requestId`;
    // its peer, the end the worker keeps, talks to the client from now on.
    internals.respondWebSocket = function respondWebSocket(requestId, ws, headersJSON) {
      const p = rec(ws);
      if (p.accepted) throw new TypeError("Can't return WebSocket in a Response after calling accept().");
      if (p.released) throw new TypeError("Can't return WebSocket that was already used in a response.");
      if (p.relay !== null) {
        const refused = host('relay', requestId, p.relay, headersJSON);
        if (refused) throw new TypeError(refused);
        p.released = true;
        return;
      }
      if (p.origin) {
        pipeOrigin(requestId, p, headersJSON);
        return;
      }
      const s = p.peer;
      const refused = host('couple', requestId, s.id, headersJSON);
      if (refused) throw new TypeError(refused);
      p.released = true;
      s.coupled = true;
      s.requestId = requestId;
      coupled.set(s.id, s);
      // What the worker sent before returning the response goes first.
      const early = p.inbox;
      p.inbox = [];
      p.inboxBytes = 0;
      for (const item of early) toHost(s, item);
    };

    // An origin socket answers the worker's own client: the host pipes one to the other.
    // What reached this end first (it was never accepted) goes to the client first.
    const piped = new Set();
    function pipeOrigin(requestId, p, headersJSON) {
      if (p.connecting) throw new TypeError('This WebSocket is still connecting: it cannot be returned yet.');
      const refused = host('pipe', requestId, p.id, headersJSON);
      if (refused) throw new TypeError(refused);
      p.released = true;
      coupled.delete(p.id);
      piped.add(p.id);
      const early = p.inbox;
      p.inbox = [];
      p.inboxBytes = 0;
      for (const item of early) forwardToClient(p.id, item);
    }

    function forwardToClient(id, item) {
      if (item.kind === 'message') {
        host('forward', id, item.binary, item.binary ? internals.bytesToLatin1(item.bytes) : item.text);
        return;
      }
      piped.delete(id);
      host('forwardClose', id, item.kind === 'error' ? 1006 : item.code, item.kind === 'error' ? '' : item.reason);
    }

    // new WebSocket(url, protocols): ws:, wss: (or http:, https:) URLs without a fragment, and
    // distinct subprotocol tokens, as the WHATWG standard checks them.
    function clientTarget(url, protocols) {
      let parsed;
      try {
        parsed = new URLClass(`${url}`);
      } catch {
        throw new DOMException(`WebSocket URL is invalid: ${url}`, 'SyntaxError');
      }
      const schemes = { 'ws:': 'http:', 'wss:': 'https:', 'http:': 'http:', 'https:': 'https:' };
      const scheme = schemes[parsed.protocol];
      if (scheme === undefined) {
        throw new DOMException(`WebSocket URL has an unsupported scheme: ${parsed.protocol}`, 'SyntaxError');
      }
      if (parsed.hash !== '') throw new DOMException('WebSocket URL must not have a fragment.', 'SyntaxError');
      const asked = protocols === undefined ? [] : typeof protocols === 'string' ? [protocols] : Array.from(protocols, String);
      const seen = new Set();
      for (const token of asked) {
        if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(token) || seen.has(token.toLowerCase())) {
          throw new DOMException(`WebSocket subprotocol is invalid or repeated: ${token}`, 'SyntaxError');
        }
        seen.add(token.toLowerCase());
      }
      const http = `${scheme}${parsed.href.slice(parsed.protocol.length)}`;
      const wsUrl = `${scheme === 'https:' ? 'wss:' : 'ws:'}${parsed.href.slice(parsed.protocol.length)}`;
      return { target: { http, ws: wsUrl }, asked };
    }

    // The connection is the host's, through the worker's own fetch(): it counts as a subrequest.
    function connect(r, target, asked) {
      r.connecting = true;
      r.url = target.ws;
      r.accepted = true;
      const headers = { Upgrade: 'websocket' };
      if (asked.length > 0) headers['Sec-WebSocket-Protocol'] = asked.join(', ');
      const failed = (message) => {
        r.connecting = false;
        r.closedOutgoing = true;
        r.closedIncoming = true;
        fail(r, new Error(message));
        later(() => dispatch(r, new CloseEvent('close', { code: 1006, reason: '', wasClean: false })));
      };
      promiseThen.call(internals.fetch(target.http, { headers }), (response) => {
        const socket = response.webSocket;
        if (socket === null) {
          failed(`WebSocket connection to ${target.ws} failed: the server answered ${response.status}.`);
          return;
        }
        const o = rec(socket);
        coupled.delete(o.id);
        adoptOrigin(r, o.id, o.protocol);
        o.released = true;
        r.connecting = false;
        dispatch(r, new Event('open'));
        if (r.closeWhenOpen !== null) toHost(r, r.closeWhenOpen);
      }, (error) => failed(`WebSocket connection to ${target.ws} failed: ${error?.message ?? error}`));
    }

    function adoptOrigin(r, id, protocol) {
      r.id = id;
      r.origin = true;
      r.coupled = true;
      r.protocol = `${protocol ?? ''}`;
      coupled.set(id, r);
    }

    // The host opened a WebSocket for the worker's fetch(): the 101 Response's webSocket.
    internals.originWebSocket = function originWebSocket(id, protocol) {
      const ws = newSocket();
      adoptOrigin(socketRecord(ws), id, protocol);
      return ws;
    };

    // The client's end of a WebSocket that a Durable Object or a service accepted:
    // what a stub's fetch() returns with its 101, to be returned in turn.
    internals.relayedWebSocket = function relayedWebSocket(token) {
      const ws = newSocket();
      socketRecord(ws).relay = `${token}`;
      return ws;
    };

    // state.acceptWebSocket() (durable_objects.js): `ws` is accepted and its
    // events go to `handler(kind, fields, taken)` instead of its listeners.
    internals.acceptWithHandler = function acceptWithHandler(ws, handler) {
      const r = rec(ws);
      if (r.released) throw new TypeError("Can't accept() WebSocket that was already used in a response.");
      if (r.relay !== null || r.peer === null) {
        throw new TypeError('state.acceptWebSocket() needs the server end of a new WebSocketPair().');
      }
      if (r.accepted) throw new TypeError('This WebSocket was already accepted.');
      r.handler = handler;
      r.accepted = true;
      if (r.inbox.length > 0) later(() => flushInbox(r));
    };

    // The invocation a server end is coupled to (0 until its peer is returned).
    internals.webSocketRequestId = (ws) => rec(ws).requestId;
    internals.webSocketOpen = (ws) => {
      const r = rec(ws);
      return r.error === null && !(r.closedIncoming && r.closedOutgoing);
    };

    internals.webSocketEvent = function webSocketEvent(id, type, a, b, c) {
      if (piped.has(id)) { // on its way here when the socket was returned: to the client
        if (type === 'message') host('forward', id, b, a);
        else forwardToClient(id, type === 'error' ? { kind: 'error' } : { kind: 'close', code: a, reason: `${b}` });
        return;
      }
      const r = coupled.get(id);
      if (r === undefined) {
        if (type !== 'message') host('ended', id);
        return;
      }
      let item;
      if (type === 'message') {
        item = b ? { kind: 'message', binary: true, bytes: internals.latin1ToBytes(a), size: c, fromHost: true }
          : { kind: 'message', binary: false, text: a, size: c, fromHost: true };
      } else {
        coupled.delete(id);
        item = type === 'error'
          ? { kind: 'error', message: `${a}`, size: 0, fromHost: true }
          : { kind: 'close', code: a, reason: `${b}`, clean: Boolean(c), size: 0, fromHost: true };
        // The host's side is over whether or not the script has accepted the socket yet.
        host('ended', id);
      }
      if (r.accepted) receive(r, item);
      else r.inbox.push(item);
    };

    defineGlobal('WebSocketPair', WebSocketPair);
    defineGlobal('WebSocket', WebSocket);
    defineGlobal('MessageEvent', MessageEvent);
    defineGlobal('CloseEvent', CloseEvent);
    defineGlobal('ErrorEvent', ErrorEvent);
  }
};
