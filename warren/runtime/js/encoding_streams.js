// TextEncoderStream, TextDecoderStream (WHATWG Encoding) and CompressionStream,
// DecompressionStream (WHATWG Compression: "gzip", "deflate", "deflate-raw")
// for Warren isolates.
//
// Loaded as a classic script after blob.js and before bootstrap.js. Its only
// top-level effect is `globalThis.__warrenEncodingStreams`, which the
// bootstrap calls once with the global object and the runtime's private
// `internals`. The vendored streams and fflate (`internals.streams`,
// `internals.compression`) only exist once the bundle is linked, so they are
// looked up when a stream is constructed.
//
// Compression uses fflate's compressors as they are. Decompression uses only
// fflate's raw inflater: the gzip and zlib framing is parsed here, so that
// checksums, lengths, truncated input and bytes after the end are errors (the
// spec and the web-platform tests require them; fflate's own Gunzip/Unzlib
// check none of them).

globalThis.__warrenEncodingStreams = function install(global, internals) {
  'use strict';

  const { requireArgs, finishInterface, bufferSourceBytes, defineGlobal } = internals.idl;

  const TextDecoderCtor = global.TextDecoder;
  const encodeMethod = global.TextEncoder.prototype.encode;
  const decodeMethod = TextDecoderCtor.prototype.decode;
  const decoderGetter = (key) => Object.getOwnPropertyDescriptor(TextDecoderCtor.prototype, key).get;
  const decoderEncoding = decoderGetter('encoding');
  const decoderFatal = decoderGetter('fatal');
  const decoderIgnoreBOM = decoderGetter('ignoreBOM');
  const encoder = new global.TextEncoder();
  const EMPTY = new Uint8Array(0);

  const illegal = () => new TypeError('Illegal invocation');

  // ===========================================================================
  // TextEncoderStream, TextDecoderStream
  // ===========================================================================

  class TextEncoderStream {
    #readable;
    #writable;

    constructor() {
      // A high surrogate that ended the previous chunk waits for its pair.
      let pending = '';
      const transform = new internals.streams.TransformStream({
        transform(chunk, controller) {
          let s = pending + `${chunk}`;
          pending = '';
          const last = s.charCodeAt(s.length - 1);
          if (last >= 0xd800 && last <= 0xdbff) {
            pending = s.slice(-1);
            s = s.slice(0, -1);
          }
          if (s !== '') controller.enqueue(encodeMethod.call(encoder, s));
        },
        flush(controller) {
          if (pending !== '') controller.enqueue(new Uint8Array([0xef, 0xbf, 0xbd]));
        },
      });
      this.#readable = transform.readable;
      this.#writable = transform.writable;
    }

    get encoding() {
      if (!(#readable in this)) throw illegal();
      return 'utf-8';
    }

    get readable() {
      if (!(#readable in this)) throw illegal();
      return this.#readable;
    }

    get writable() {
      if (!(#readable in this)) throw illegal();
      return this.#writable;
    }
  }
  finishInterface(TextEncoderStream, 'TextEncoderStream');

  class TextDecoderStream {
    #decoder;
    #readable;
    #writable;

    constructor(label = 'utf-8', options = undefined) {
      // Throws the RangeError / TypeError of the TextDecoder constructor.
      const decoder = new TextDecoderCtor(label, options);
      const decode = (bytes, stream) => decodeMethod.call(decoder, bytes, { stream });
      const transform = new internals.streams.TransformStream({
        transform(chunk, controller) {
          const bytes = bufferSourceBytes(chunk);
          if (bytes === null) {
            throw new TypeError('TextDecoderStream: a chunk is not an ArrayBuffer or ArrayBufferView.');
          }
          const s = decode(bytes, true);
          if (s !== '') controller.enqueue(s);
        },
        flush(controller) {
          const s = decode(EMPTY, false);
          if (s !== '') controller.enqueue(s);
        },
      });
      this.#decoder = decoder;
      this.#readable = transform.readable;
      this.#writable = transform.writable;
    }

    get encoding() {
      if (!(#decoder in this)) throw illegal();
      return decoderEncoding.call(this.#decoder);
    }

    get fatal() {
      if (!(#decoder in this)) throw illegal();
      return decoderFatal.call(this.#decoder);
    }

    get ignoreBOM() {
      if (!(#decoder in this)) throw illegal();
      return decoderIgnoreBOM.call(this.#decoder);
    }

    get readable() {
      if (!(#decoder in this)) throw illegal();
      return this.#readable;
    }

    get writable() {
      if (!(#decoder in this)) throw illegal();
      return this.#writable;
    }
  }
  finishInterface(TextDecoderStream, 'TextDecoderStream');

  // ===========================================================================
  // Checksums
  // ===========================================================================

  let crcTable = null;
  function crcTableOnce() {
    if (crcTable === null) {
      crcTable = new Int32Array(256);
      for (let n = 0; n < 256; n++) {
        let c = n;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        crcTable[n] = c;
      }
    }
    return crcTable;
  }

  function crc32(crc, bytes) {
    const table = crcTableOnce();
    let c = ~crc;
    for (let i = 0; i < bytes.length; i++) c = table[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return ~c >>> 0;
  }

  function crc32Byte(crc, b) {
    const c = ~crc;
    return ~(crcTableOnce()[(c ^ b) & 0xff] ^ (c >>> 8)) >>> 0;
  }

  function adler32(adler, bytes) {
    let a = adler & 0xffff;
    let b = adler >>> 16;
    for (let i = 0; i < bytes.length;) {
      const end = Math.min(i + 5552, bytes.length);
      for (; i < end; i++) {
        a += bytes[i];
        b += a;
      }
      a %= 65521;
      b %= 65521;
    }
    return ((b << 16) | a) >>> 0;
  }

  // ===========================================================================
  // Codecs: push(bytes, emit) and finish(emit), output through emit(Uint8Array)
  // ===========================================================================

  function corrupt(message) {
    return new TypeError(`DecompressionStream: ${message}.`);
  }

  function compressor(format) {
    const { Gzip, Zlib, Deflate } = internals.compression;
    let emit = null;
    // mtime 0, as browsers and zlib write it: the clock is nobody's business.
    const codec = format === 'gzip' ? new Gzip({ mtime: 0 }) : format === 'deflate' ? new Zlib() : new Deflate();
    codec.ondata = (data) => emit(data);
    return {
      push(bytes, out) { emit = out; codec.push(bytes, false); },
      finish(out) { emit = out; codec.push(EMPTY, true); },
    };
  }

  // Framing states
  const HEADER = 0;
  const BODY = 1;
  const TRAILER = 2;
  const DONE = 3;

  // Gzip header fields after the fixed 10 bytes (RFC 1952 2.3)
  const FHCRC = 2;
  const FEXTRA = 4;
  const FNAME = 8;
  const FCOMMENT = 16;

  function decompressor(format) {
    const inflater = new internals.compression.Inflate();
    const gzip = format === 'gzip';
    const checksum = gzip ? crc32 : format === 'deflate' ? adler32 : null;
    let state = format === 'deflate-raw' ? BODY : HEADER;
    let check = gzip ? 0 : 1;
    let size = 0; // of the output, modulo 2^32 (gzip ISIZE)
    let emit = null;
    inflater.ondata = (data) => {
      if (data.length === 0) return;
      if (checksum !== null) check = checksum(check, data);
      size = (size + data.length) % 0x100000000;
      emit(data);
    };

    // Header parsing, a byte at a time (headers are a few bytes; a long FNAME
    // is only scanned, never buffered). Gzip phases: 0 the fixed 10 bytes,
    // 1 XLEN, 2 the extra field, 3 FNAME, 4 FCOMMENT, 5 FHCRC; -1 done.
    const header = new Uint8Array(10);
    let phase = 0;
    let count = 0;
    let flags = 0;
    let skip = 0;
    let headerCrc = 0;
    let hcrc = 0;

    function nextPhase(after) {
      if (after < 1 && flags & FEXTRA) return 1;
      if (after < 3 && flags & FNAME) return 3;
      if (after < 4 && flags & FCOMMENT) return 4;
      if (after < 5 && flags & FHCRC) return 5;
      return -1;
    }

    // True once the header is complete.
    function gzipHeaderByte(b) {
      if (phase !== 5) headerCrc = crc32Byte(headerCrc, b);
      switch (phase) {
        case 0:
          header[count++] = b;
          if ((count === 1 && b !== 0x1f) || (count === 2 && b !== 0x8b)) {
            throw corrupt('the data is not in gzip format (bad magic number)');
          }
          if (count === 3 && b !== 8) throw corrupt('unknown gzip compression method');
          if (count === 4 && b & 0xe0) throw corrupt('reserved gzip header flags are set');
          if (count < 10) return false;
          flags = header[3];
          count = 0;
          phase = nextPhase(0);
          break;
        case 1:
          skip |= b << (8 * count);
          if (++count < 2) return false;
          phase = skip > 0 ? 2 : nextPhase(2);
          count = 0;
          break;
        case 2:
          if (--skip > 0) return false;
          phase = nextPhase(2);
          break;
        case 3:
        case 4:
          if (b !== 0) return false;
          phase = nextPhase(phase);
          break;
        default:
          hcrc |= b << (8 * count);
          if (++count < 2) return false;
          if (hcrc !== (headerCrc & 0xffff)) throw corrupt('incorrect gzip header checksum');
          phase = -1;
      }
      return phase === -1;
    }

    function zlibHeaderByte(b) {
      header[count++] = b;
      if (count < 2) return false;
      const cmf = header[0];
      const flg = header[1];
      if ((cmf & 0x0f) !== 8 || cmf >> 4 > 7 || ((cmf << 8) | flg) % 31 !== 0) {
        throw corrupt('the data is not in zlib format (bad header)');
      }
      if (flg & 0x20) throw corrupt('zlib data that needs a preset dictionary is not supported');
      return true;
    }

    const trailer = new Uint8Array(8);
    let trailerGot = 0;
    const trailerLength = gzip ? 8 : format === 'deflate' ? 4 : 0;

    function checkTrailer() {
      const t = trailer;
      if (gzip) {
        const crc = (t[0] | (t[1] << 8) | (t[2] << 16) | (t[3] << 24)) >>> 0;
        const isize = (t[4] | (t[5] << 8) | (t[6] << 16) | (t[7] << 24)) >>> 0;
        if (crc !== check) throw corrupt('incorrect gzip data checksum (CRC-32)');
        if (isize !== size) throw corrupt('incorrect gzip data length');
      } else if (trailerLength === 4) {
        const adler = ((t[0] << 24) | (t[1] << 16) | (t[2] << 8) | t[3]) >>> 0;
        if (adler !== check) throw corrupt('incorrect zlib data checksum (Adler-32)');
      }
    }

    function feed(bytes) {
      let i = 0;
      while (i < bytes.length) {
        if (state === HEADER) {
          const done = gzip ? gzipHeaderByte(bytes[i++]) : zlibHeaderByte(bytes[i++]);
          if (done) state = BODY;
        } else if (state === BODY) {
          try {
            inflater.push(bytes.subarray(i), false);
          } catch (error) {
            if (error instanceof Error && typeof error.code === 'number') throw corrupt(`invalid deflate data (${error.message})`);
            throw error;
          }
          i = bytes.length;
          const s = inflater.s;
          if (s.f && !s.l) {
            // The deflate stream ended: what the inflater holds past its last
            // bit is the trailer (the rest of a partly used byte is padding).
            state = trailerLength === 0 ? DONE : TRAILER;
            feed(inflater.p.subarray(s.p ? 1 : 0));
          }
        } else if (state === TRAILER) {
          trailer[trailerGot++] = bytes[i++];
          if (trailerGot === trailerLength) {
            checkTrailer();
            state = DONE;
          }
        } else {
          throw corrupt('there are bytes after the end of the compressed data');
        }
      }
    }

    return {
      push(bytes, out) {
        emit = out;
        feed(bytes);
      },
      finish() {
        if (state !== DONE) throw corrupt('the compressed data ends early (it is truncated)');
      },
    };
  }

  // ===========================================================================
  // CompressionStream, DecompressionStream
  // ===========================================================================

  const FORMATS = new Set(['deflate', 'deflate-raw', 'gzip']);

  function checkFormat(format, what) {
    const f = `${format}`;
    if (!FORMATS.has(f)) {
      throw new TypeError(`${what}: Unsupported compression format: '${f}' (use "gzip", "deflate" or "deflate-raw").`);
    }
    return f;
  }

  // Input is fed to the codec in pieces of this size, and the next piece only
  // once the reader wants more: inflating 16 KB yields at most ~16 MB (deflate
  // tops out near 1032:1), so a small compressed chunk cannot become gigabytes
  // in one go.
  const PIECE = 16384;
  // What the reader keeps is charged to the isolate's memory limit. Buffers
  // live outside V8's heap and are only measured between slices, so after
  // this much output the stream lets the host take a turn (a 0 ms timer):
  // a decompression bomb meets the memory limit, not the machine's.
  const TURN_BYTES = 8 * 1024 * 1024;

  function hostTurn() {
    return new Promise((resolve) => {
      try {
        internals.setTimeout(resolve, 0);
      } catch {
        resolve(); // too many pending operations: go on without the turn
      }
    });
  }

  // A TransformStream, except that the transform is driven by the reader's
  // demand within a chunk too, not only between chunks.
  function codecPair(codec, what) {
    const { ReadableStream, WritableStream } = internals.streams;
    let readableController;
    let writableController;
    let wanted = false;
    let wake = null;
    let cancelled = false;
    let emitted = 0;
    let sinceTurn = 0;
    const emit = (bytes) => {
      if (bytes.length === 0) return;
      emitted++;
      sinceTurn += bytes.length;
      readableController.enqueue(bytes);
    };
    const resume = () => {
      const w = wake;
      wake = null;
      if (w !== null) w();
    };
    const fail = (error) => {
      readableController.error(error);
      return error;
    };
    const readable = new ReadableStream({
      start(controller) { readableController = controller; },
      pull() {
        wanted = true;
        resume();
      },
      cancel(reason) {
        cancelled = true;
        writableController.error(reason);
        resume();
      },
    }, { highWaterMark: 0 });
    const writable = new WritableStream({
      start(controller) {
        writableController = controller;
        // An abort waits for the write in progress: stop waiting for a reader.
        const signal = controller.signal;
        if (internals.isAbortSignal(signal)) {
          internals.onAbort(signal, () => {
            cancelled = true;
            resume();
          });
        }
      },
      async write(chunk) {
        const bytes = bufferSourceBytes(chunk);
        if (bytes === null) throw fail(new TypeError(`${what}: a chunk is not an ArrayBuffer or ArrayBufferView.`));
        for (let at = 0; at < bytes.length; at += PIECE) {
          while (!wanted && !cancelled) await new Promise((resolve) => { wake = resolve; });
          if (cancelled) return;
          const before = emitted;
          wanted = false;
          try {
            codec.push(bytes.subarray(at, at + PIECE), emit);
          } catch (error) {
            throw fail(error);
          }
          if (emitted === before) wanted = true;
          if (sinceTurn >= TURN_BYTES) {
            sinceTurn = 0;
            await hostTurn();
          }
        }
      },
      close() {
        try {
          codec.finish(emit);
        } catch (error) {
          throw fail(error);
        }
        readableController.close();
      },
      abort(reason) {
        readableController.error(reason);
      },
    });
    return { readable, writable };
  }

  class CompressionStream {
    #readable;
    #writable;

    constructor(format) {
      const what = "Failed to construct 'CompressionStream'";
      requireArgs(arguments.length, 1, what);
      const pair = codecPair(compressor(checkFormat(format, what)), 'CompressionStream');
      this.#readable = pair.readable;
      this.#writable = pair.writable;
    }

    get readable() {
      if (!(#readable in this)) throw illegal();
      return this.#readable;
    }

    get writable() {
      if (!(#readable in this)) throw illegal();
      return this.#writable;
    }
  }
  finishInterface(CompressionStream, 'CompressionStream');

  class DecompressionStream {
    #readable;
    #writable;

    constructor(format) {
      const what = "Failed to construct 'DecompressionStream'";
      requireArgs(arguments.length, 1, what);
      const pair = codecPair(decompressor(checkFormat(format, what)), 'DecompressionStream');
      this.#readable = pair.readable;
      this.#writable = pair.writable;
    }

    get readable() {
      if (!(#readable in this)) throw illegal();
      return this.#readable;
    }

    get writable() {
      if (!(#readable in this)) throw illegal();
      return this.#writable;
    }
  }
  finishInterface(DecompressionStream, 'DecompressionStream');

  defineGlobal('TextEncoderStream', TextEncoderStream);
  defineGlobal('TextDecoderStream', TextDecoderStream);
  defineGlobal('CompressionStream', CompressionStream);
  defineGlobal('DecompressionStream', DecompressionStream);
};
