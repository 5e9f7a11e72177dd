// Build-time replacement for "@exodus/bytes/whatwg.js" as whatwg-url uses it (see README.md).
//
// whatwg-url percent-encodes every query through percentEncodeAfterEncoding, which
// @exodus/bytes implements for every legacy single-byte encoding too: its module
// graph builds the encodings' tables and label lists (~45 KB of objects) in every
// isolate as the bundle loads. The URL classes always pass "utf-8", which needs
// none of that; any other encoding loads the real module on first use. For
// "utf-8" the steps below are exactly the real function's.
import { utf8fromStringLoose } from "@exodus/bytes/utf8.js";
import { percentEncoder } from "../node_modules/@exodus/bytes/fallback/percent.js";

let real = null;
const load = () => (real ??= require("../node_modules/@exodus/bytes/whatwg.js"));

export function percentEncodeAfterEncoding(encoding, input, percentEncodeSet, spaceAsPlus = false) {
  if (encoding === "utf-8") return percentEncoder(percentEncodeSet, spaceAsPlus)(utf8fromStringLoose(input));
  return load().percentEncodeAfterEncoding(encoding, input, percentEncodeSet, spaceAsPlus);
}
