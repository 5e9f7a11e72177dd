// Entry for warren/runtime/vendor/web.js (see README.md).
// The bundle's only effect is to define globalThis.__warrenVendor.
import { URL, URLSearchParams } from "whatwg-url";
import structuredClone from "@ungap/structured-clone";
// The subpath, not the package root: the root also assigns globalThis.URLPattern.
// URLPattern reads the global URL when called, not at load time.
import { URLPattern } from "urlpattern-polyfill/urlpattern";

globalThis.__warrenVendor = { URL, URLSearchParams, structuredClone, URLPattern };
