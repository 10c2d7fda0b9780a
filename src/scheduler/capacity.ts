import type { Resources } from './types.js';

/**
 * The host's cpus and memory less a reserve for the system and the agent: 10% of memory, at least 256 MiB.
 * A module of its own so that `backplane run` can default --capacity without loading the scheduler's state reader
 * (and through it the cluster link and the record schemas): a run that joins no cluster never needs them.
 */
export function defaultCapacity(cpus: number, memory: number): Resources {
  return { cpu: cpus, memory: Math.max(0, memory - Math.max(256 * 1024 ** 2, Math.round(memory * 0.1))) };
}
