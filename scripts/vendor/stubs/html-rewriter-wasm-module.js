export { WasmModule as __warrenWasmModule } from "./html-rewriter-host.js";
