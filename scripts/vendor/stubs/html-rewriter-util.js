export { TextEncoder, TextDecoder } from "./html-rewriter-host.js";
