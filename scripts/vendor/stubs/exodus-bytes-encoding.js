// Build-time stub for "@exodus/bytes/encoding.js" (see README.md).
//
// whatwg-url imports that module only for its side effect of registering the
// legacy multi-byte text encodings (Shift_JIS, GBK, Big5, EUC-KR, ...; about
// 190 KB of tables in the bundle). Those are only reachable through
// basicURLParse(input, { encoding }) with a non-UTF-8 document encoding. The URL
// and URLSearchParams classes that warren exposes always parse as UTF-8, so the
// tables are dead weight on every cold start. Without them, a non-UTF-8
// multi-byte encoding would throw an Error from @exodus/bytes instead of
// silently mis-encoding.
export {};
