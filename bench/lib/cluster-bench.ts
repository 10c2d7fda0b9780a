import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * Small helpers the service backplane's cluster benchmarks (bench/services.ts, bench/rollout.ts) share: reading
 * signed store values, progress lines, durations, load and the etcd version.
 */

export function obj(v: unknown): Record<string, unknown> | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

export function envelopeBody(text: string): Record<string, unknown> | undefined {
  const body = obj(parseJson(text))?.['body'];
  return typeof body === 'string' ? obj(parseJson(body)) : undefined;
}

export function progress(line: string): void {
  process.stderr.write(`${line}\n`);
}

export function s(ms: number | undefined): string {
  return ms === undefined || !Number.isFinite(ms) ? '-' : `${(ms / 1000).toFixed(2)} s`;
}

export function loadavg(): string {
  try {
    return readFileSync('/proc/loadavg', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

export function etcdVersion(): string {
  const out = spawnSync('etcd', ['--version'], { encoding: 'utf8' }).stdout ?? '';
  return /etcd Version: (\S+)/.exec(out)?.[1] ?? 'unknown';
}

