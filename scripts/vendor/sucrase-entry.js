// Entry for warren/runtime/vendor/sucrase.js (see README.md).
// The bundle's only effect is to define globalThis.__warrenSucrase.
import { transform } from "sucrase";

globalThis.__warrenSucrase = { transform };
