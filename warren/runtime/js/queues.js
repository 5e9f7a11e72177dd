// Queues: the producer binding (`env.QUEUE.send(body, {contentType, delaySeconds})`,
// `sendBatch`) and the consumer's batch (`queue(batch, env, ctx)`). Messages are
// stored by the node (warren/bindings/queues.py, warren/triggers/consumer.py);
// this file encodes bodies, checks the limits Workers sets, and records what
// the consumer decided for each message (ack or retry) for the host.
// Needs services.js (internals.serialize) installed first.
globalThis.__warrenQueues = function installQueues(global, internals) {
  "use strict";

  const MAX_MESSAGE_BYTES = 128 * 1024;
  const MAX_BATCH_MESSAGES = 100;
  const MAX_BATCH_BYTES = 256 * 1024;
  const MAX_DELAY_SECONDS = 43200;  // 12 hours
  const CONTENT_TYPES = ["text", "bytes", "json", "v8"];
  const encoder = new global.TextEncoder();
  const decoder = new global.TextDecoder();

  function delayOf(options, fallback, what) {
    const value = options === undefined || options === null ? undefined : options.delaySeconds;
    if (value === undefined) return fallback;
    if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > MAX_DELAY_SECONDS) {
      throw new RangeError(`${what}: delaySeconds must be a whole number of seconds from 0 to ${MAX_DELAY_SECONDS}.`);
    }
    return value;
  }

  function encodeBody(body, contentType) {
    switch (contentType) {
      case "text":
        if (typeof body !== "string") throw new TypeError('A message with contentType "text" must have a string body.');
        return encoder.encode(body);
      case "json": {
        const text = JSON.stringify(body);
        if (text === undefined) throw new TypeError('This message body cannot be sent as JSON (contentType "json").');
        return encoder.encode(text);
      }
      case "bytes": {
        const bytes = internals.bytesOf(body);
        if (bytes === null) {
          throw new TypeError('A message with contentType "bytes" must have an ArrayBuffer or ArrayBufferView body.');
        }
        return bytes;
      }
      default:
        return encoder.encode(internals.serialize(body));
    }
  }

  function message(entry, defaults, index) {
    const what = index === null ? "Queue.send()" : `Queue.sendBatch() message ${index}`;
    if (entry === null || typeof entry !== "object") throw new TypeError(`${what}: each message is an object { body }.`);
    const options = index === null ? defaults.options : entry;
    const contentType = options && options.contentType !== undefined ? options.contentType : "v8";
    if (!CONTENT_TYPES.includes(contentType)) {
      throw new TypeError(`${what}: contentType must be one of ${CONTENT_TYPES.join(", ")}.`);
    }
    const body = encodeBody(entry.body, contentType);
    if (body.length > MAX_MESSAGE_BYTES) {
      throw new RangeError(`${what}: the message is ${body.length} bytes; the limit is ${MAX_MESSAGE_BYTES}.`);
    }
    return { contentType, delaySeconds: delayOf(options, defaults.delay, what), body: internals.bytesToLatin1(body) };
  }

  function producer(spec, call) {
    const fallback = Number.isInteger(spec.delivery_delay) ? spec.delivery_delay : 0;
    async function sendMessages(messages) {
      const total = messages.reduce((sum, entry) => sum + entry.body.length, 0);
      if (total > MAX_BATCH_BYTES) {
        throw new RangeError(`The batch is ${total} bytes; the limit is ${MAX_BATCH_BYTES}.`);
      }
      await call("send", { messages });
    }
    return Object.freeze({
      async send(body, options = undefined) {
        const defaults = { options, delay: fallback };
        await sendMessages([message({ body }, defaults, null)]);
      },
      async sendBatch(messages, options = undefined) {
        if (messages === null || typeof messages !== "object" || typeof messages[Symbol.iterator] !== "function") {
          throw new TypeError("Queue.sendBatch() takes an iterable of messages ({ body, contentType?, delaySeconds? }).");
        }
        const list = Array.from(messages);
        if (list.length > MAX_BATCH_MESSAGES) {
          throw new RangeError(`A batch holds at most ${MAX_BATCH_MESSAGES} messages; this one has ${list.length}.`);
        }
        const delay = delayOf(options, fallback, "Queue.sendBatch()");
        await sendMessages(list.map((entry, index) => message(entry, { delay }, index)));
      },
    });
  }

  internals.defineBinding("queue", producer);

  function decodeBody(contentType, latin1) {
    const bytes = internals.latin1ToBytes(latin1);
    switch (contentType) {
      case "text": return decoder.decode(bytes);
      case "json": return JSON.parse(decoder.decode(bytes));
      case "bytes": return bytes.buffer;
      default: return internals.deserialize(decoder.decode(bytes));
    }
  }

  // The batch a consumer gets, and what it decided: as on Workers, the first
  // decision for a message wins, and one for a message beats one for the batch.
  internals.queueBatch = function queueBatch(queueName, payloadBytes) {
    const payload = JSON.parse(decoder.decode(payloadBytes));
    const explicit = new Map();  // id -> "ack" | { retry: delaySeconds | null }
    let all = null;
    const messages = payload.messages.map((entry) => {
      const id = String(entry.id);
      const body = decodeBody(entry.contentType, entry.body);
      return Object.freeze({
        id,
        timestamp: new Date(entry.timestamp),
        body,
        attempts: entry.attempts,
        ack() { if (!explicit.has(id)) explicit.set(id, "ack"); },
        retry(options = undefined) {
          const delay = delayOf(options, null, "Message.retry()");
          if (!explicit.has(id)) explicit.set(id, { retry: delay });
        },
      });
    });
    const batch = Object.freeze({
      queue: queueName,
      messages: Object.freeze(messages),
      ackAll() { if (all === null) all = "ack"; },
      retryAll(options = undefined) {
        const delay = delayOf(options, null, "MessageBatch.retryAll()");
        if (all === null) all = { retry: delay };
      },
    });
    const decisions = (threw) => encoder.encode(JSON.stringify({ threw, all, explicit: Object.fromEntries(explicit) }));
    return { batch, decisions };
  };
};
