export { readFileSync } from "./html-rewriter-host.js";
