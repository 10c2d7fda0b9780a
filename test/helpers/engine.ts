import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../../src/engine/engine.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import type { Graph } from '../../src/graph/graph.js';
import { createLogger, type Logger } from '../../src/log.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import type { AnyResourceKind } from '../../src/resources/types.js';

export interface Harness {
  readonly engine: Engine;
  readonly lines: string[];
  readonly log: Logger;
  readonly graph: (yaml: string) => Graph;
  /** Resolves once the engine is settled (now, or at its next settle). */
  readonly settled: (timeoutMs?: number) => Promise<void>;
}

export function harness(extraKinds: readonly AnyResourceKind[] = [], opts: { noop?: boolean; parallel?: number; watch?: boolean } = {}): Harness {
  const registry = createRegistry([...builtinKinds, ...extraKinds]);
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', write: (l) => lines.push(l) });
  const engine = new Engine({ registry, log, ...opts });
  return {
    engine,
    lines,
    log,
    graph: (yaml) => buildGraph(parseGraphText('/test/graph.yaml', yaml), registry),
    settled: (timeoutMs = 10_000) => waitSettled(engine, timeoutMs),
  };
}

export function waitSettled(engine: Engine, timeoutMs = 10_000): Promise<void> {
  if (engine.settled) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`engine did not settle within ${timeoutMs}ms: ${JSON.stringify(engine.status().filter((s) => s.state !== 'converged'))}`));
    }, timeoutMs);
    const off = engine.onSettledChange((s) => {
      if (!s) return;
      clearTimeout(timer);
      off();
      resolve();
    });
  });
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'bp-test-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function until(cond: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const start = Date.now();
  return new Promise<void>((resolve, reject) => {
    const tick = (): void => {
      Promise.resolve(cond()).then(
        (ok) => {
          if (ok) resolve();
          else if (Date.now() - start > timeoutMs) reject(new Error(`timed out waiting for ${what}`));
          else setTimeout(tick, 5);
        },
        (err: unknown) => reject(err instanceof Error ? err : new Error(String(err))),
      );
    };
    tick();
  });
}
