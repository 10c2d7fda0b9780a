#!/usr/bin/env node
// Thin launcher: the CLI is compiled to dist/ (scripts/build.mjs) so start-up does not pay for a TypeScript loader.
// CommonJS (bin/package.json): Node starts a CommonJS main without its ES module loader, which start-up would pay.
require('../dist/backplane.cjs');
