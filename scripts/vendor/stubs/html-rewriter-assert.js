// CommonJS, as the glue requires it: `require("assert")` is the function itself.
module.exports = require("./html-rewriter-host.js").assert;
