// Entry for warren/runtime/vendor/web.js (see README.md).
// The bundle's only effect is to define globalThis.__warrenVendor.
import { URL, URLSearchParams } from "whatwg-url";
import structuredClone from "@ungap/structured-clone";

globalThis.__warrenVendor = { URL, URLSearchParams, structuredClone };
