#!/usr/bin/env node
// Thin launcher: the CLI is compiled to dist/ so start-up does not pay for a TypeScript loader.
import '../dist/backplane.mjs';
