export { join } from "./html-rewriter-host.js";
