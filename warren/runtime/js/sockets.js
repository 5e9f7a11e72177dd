// `import { connect } from "cloudflare:sockets"`: outgoing TCP, as on Workers.
//
// Loaded as a classic script before bootstrap.js. Its only top-level effect is
// `globalThis.__warrenSockets`, which the bootstrap takes and calls the first time a
// module imports "cloudflare:sockets", with the runtime's `internals` and its host
// operations:
//   ops.connect({hostname, port, tls, sink}) -> Promise<{socket, readable, remoteAddress, localAddress}>
//   ops.startTls({socket, sink}) -> Promise<{socket, readable}>
//   ops.sink() -> a new host body this side writes (ops.write(sink, latin1 | null, last), ops.sinkReady)
//   ops.reader(handle) -> { read() -> Promise<Uint8Array | null>, release() }
// The connection is the runtime process's (warren/runtime/worker.py, `_connect`): through
// the node's subrequest guard, counted as a subrequest, closed when its request ends.

globalThis.__warrenSockets = function install(internals, ops) {
  'use strict';

  const { ReadableStream, WritableStream } = internals.streams;
  const promiseThen = Promise.prototype.then;
  const TRANSPORTS = new Set(['off', 'on', 'starttls']);

  function parseAddress(address) {
    if (typeof address === 'string') {
      const match = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(address);
      if (match === null) throw new TypeError(`The address "${address}" is not of the form host:port.`);
      return { hostname: match[1].replace(/^\[|\]$/g, ''), port: Number(match[2]) };
    }
    if (typeof address !== 'object' || address === null) {
      throw new TypeError('connect() takes "host:port" or { hostname, port }.');
    }
    return { hostname: `${address.hostname}`, port: Number(address.port) };
  }

  function deferred() {
    let resolve, reject;
    const promise = new Promise((yes, no) => { resolve = yes; reject = no; });
    promiseThen.call(promise, undefined, () => {}); // a rejection nobody awaits is not "unhandled"
    return { promise, resolve, reject };
  }

  class Socket {
    #readable;
    #writable;
    #opened = deferred();
    #closed = deferred();
    #id = 0;
    #hostname;
    #transport;
    #upgraded = false;
    #done = false;
    #reader = null;
    #sink = -1;

    constructor(hostname, transport, connection, sink) {
      this.#hostname = hostname;
      this.#transport = transport;
      this.#sink = sink;
      const ready = promiseThen.call(connection, (value) => {
        this.#id = value.socket;
        this.#reader = ops.reader(value.readable);
        if (value.remoteAddress !== undefined) {
          this.#opened.resolve({ remoteAddress: value.remoteAddress, localAddress: value.localAddress });
        }
        return this.#reader;
      });
      promiseThen.call(ready, undefined, (error) => this.#fail(error));
      this.#readable = new ReadableStream({
        type: 'bytes',
        pull: async (controller) => {
          const reader = await ready;
          const chunk = await reader.read();
          if (chunk === null) {
            controller.close();
            this.#finish();
          } else {
            controller.enqueue(chunk);
          }
        },
        cancel: () => {
          promiseThen.call(ready, (reader) => reader.release(), () => {});
          this.#finish();
        },
      });
      this.#writable = new WritableStream({
        write: async (chunk) => {
          await ready;
          const bytes = internals.bytesOf(chunk);
          if (bytes === null) throw new TypeError('A socket takes bytes: an ArrayBuffer or a view of one.');
          if (this.#done) throw new TypeError('The socket is closed.');
          ops.write(this.#sink, internals.bytesToLatin1(bytes), false);
          if (!(await ops.sinkReady(this.#sink))) throw new TypeError('The socket is closed.');
        },
        close: async () => {
          await ready;
          ops.write(this.#sink, null, true);
        },
        abort: () => ops.release(this.#sink),
      });
    }

    static start(hostname, port, transport) {
      const sink = ops.sink();
      return new Socket(hostname, transport, ops.connect({ hostname, port, tls: transport === 'on', sink }), sink);
    }

    #fail(error) {
      if (this.#done) return;
      this.#done = true;
      this.#opened.reject(error);
      this.#closed.reject(error);
    }

    #finish() {
      if (this.#done) return;
      this.#done = true;
      this.#closed.resolve();
    }

    get readable() { return this.#readable; }
    get writable() { return this.#writable; }
    get opened() { return this.#opened.promise; }
    get closed() { return this.#closed.promise; }
    get upgraded() { return this.#upgraded; }
    get secureTransport() { return this.#transport; }

    close() {
      if (this.#reader !== null) this.#reader.release();
      if (this.#sink >= 0) ops.release(this.#sink);
      this.#finish();
      return this.#closed.promise;
    }

    startTls(options = undefined) {
      if (this.#transport !== 'starttls') {
        throw new TypeError('startTls() needs a socket opened with { secureTransport: "starttls" }.');
      }
      if (this.#upgraded) throw new TypeError('startTls() can only be called once.');
      if (this.#id === 0) throw new TypeError('startTls() needs the socket to be open first (await socket.opened).');
      const expected = options?.expectedServerHostname;
      this.#upgraded = true;
      const sink = ops.sink();
      const head = { socket: this.#id, sink };
      if (expected !== undefined) head.hostname = `${expected}`;  // the certificate's name, if not the host's
      const connection = ops.startTls(head);
      // The plain streams are over: their reader gives up, and what the secure socket reads
      // and writes is the new one's. The plain socket counts as closed once it has upgraded.
      const secure = new Socket(this.#hostname, 'on', promiseThen.call(connection, (value) => {
        secure.#opened.resolve({});
        return value;
      }), sink);
      secure.#upgraded = true;
      this.#finish();
      return secure;
    }
  }
  Object.defineProperty(Socket.prototype, Symbol.toStringTag, { value: 'Socket', configurable: true });

  return function connect(address, options = undefined) {
    const { hostname, port } = parseAddress(address);
    if (hostname === '' || hostname.length > 253) throw new TypeError(`Invalid hostname "${hostname}".`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new TypeError(`Invalid port ${port}.`);
    const opts = options === undefined || options === null ? {} : options;
    const transport = opts.secureTransport === undefined ? 'off' : `${opts.secureTransport}`;
    if (!TRANSPORTS.has(transport)) {
      throw new TypeError(`secureTransport must be "off", "on" or "starttls", not "${transport}".`);
    }
    return Socket.start(hostname, port, transport);
  };
};
