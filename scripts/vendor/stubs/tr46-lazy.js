// Build-time replacement for "tr46" as whatwg-url uses it (see README.md).
//
// tr46's IDNA mapping table is ~1 MB of JavaScript arrays, built in every
// isolate when the bundle loads, though almost every host a worker parses is
// plain ASCII, for which UTS #46 processing (with whatwg-url's non-strict
// options) is just lower-casing. That case is answered here; anything else
// (non-ASCII, "xn--" labels, strict checks) loads the real tr46 on first use.
// whatwg-url 17.3 lower-cases ASCII domains itself in non-strict parsing and
// does not call tr46 for them at all; the check here keeps ASCII hosts off the
// table should a later version call it again (tests/test_isolate_memory.py).
let real = null;
const load = () => (real ??= require("../node_modules/tr46/index.js"));
const PLAIN = /^[a-z0-9.-]*$/;

export function toASCII(domain, options = {}) {
  if (!options.checkHyphens && !options.useSTD3ASCIIRules && !options.verifyDNSLength) {
    const lower = domain.replace(/[A-Z]+/g, (s) => s.toLowerCase());
    if (PLAIN.test(lower) && !lower.split(".").some((label) => label.startsWith("xn--"))) return lower;
  }
  return load().toASCII(domain, options);
}

export function toUnicode(domain, options) {
  return load().toUnicode(domain, options);
}
