import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { defineKind } from '../../src/resources/types.js';

/**
 * A kind for testing the engine itself (not a mock of it): it records what the engine asks of it, and its "world"
 * is a value the test sets, so tests can make it drift, fail or take time on purpose.
 */
export interface ProbeEvent {
  readonly name: string;
  readonly type: 'check' | 'done' | 'watch-start' | 'watch-stop' | 'fail' | 'close';
  readonly reason?: string;
  readonly t: number;
  readonly refresh?: boolean;
  readonly apply?: boolean;
}

export class ProbeWorld {
  readonly events: ProbeEvent[] = [];
  /** Actual state per probe name; a probe is converged when it equals the wanted value. */
  readonly actual = new Map<string, string>();
  readonly bus = new EventEmitter();
  /** Failures still to produce per probe name. */
  readonly failures = new Map<string, number>();
  running = 0;
  maxRunning = 0;

  drift(name: string, value = 'drifted'): void {
    this.actual.set(name, value);
    this.bus.emit(name);
  }
  of(name: string, type?: ProbeEvent['type']): ProbeEvent[] {
    return this.events.filter((e) => e.name === name && (type === undefined || e.type === type));
  }
}

export function probeKind(world: ProbeWorld) {
  return defineKind({
    kind: 'probe',
    description: 'test probe',
    refreshable: true,
    schema: z.strictObject({
      want: z.string().default('ok'),
      ms: z.number().default(0),
      watch: z.boolean().default(true),
    }),
    create: (id, p) => {
      const name = id.slice('probe['.length, -1);
      return {
        ...(p.watch
          ? {
              watch: async ({ signal, ready, changed }) => {
                world.events.push({ name, type: 'watch-start', t: performance.now() });
                const on = (): void => changed('bus');
                world.bus.on(name, on);
                ready();
                await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
                world.bus.off(name, on);
                world.events.push({ name, type: 'watch-stop', t: performance.now() });
              },
            }
          : {}),
        close: (reason) => {
          world.events.push({ name, type: 'close', t: performance.now(), reason });
        },
        checkApply: async ({ apply, refresh, signal }) => {
          world.events.push({ name, type: 'check', t: performance.now(), refresh, apply });
          world.running++;
          world.maxRunning = Math.max(world.maxRunning, world.running);
          try {
            if (p.ms > 0) await sleep(p.ms, undefined, { signal });
            const left = world.failures.get(name) ?? 0;
            if (left > 0) {
              world.failures.set(name, left - 1);
              world.events.push({ name, type: 'fail', t: performance.now() });
              throw new Error(`probe ${name} failing on purpose (${left - 1} more)`);
            }
            const converged = world.actual.get(name) === p.want && !refresh;
            if (!converged && apply) world.actual.set(name, p.want);
            world.events.push({ name, type: 'done', t: performance.now(), refresh, apply });
            return { converged, changes: converged ? [] : [refresh ? 'refreshed' : `set to ${p.want}`] };
          } finally {
            world.running--;
          }
        },
      };
    },
  });
}
