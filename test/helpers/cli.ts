import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = join(ROOT, 'bin', 'backplane.js');

/** The CLI runs from dist/; scripts/test.sh builds it, and a test run on its own builds it here. */
export function ensureBuilt(): void {
  if (existsSync(join(ROOT, 'dist', 'backplane.mjs'))) return;
  execFileSync(process.execPath, [join(ROOT, 'scripts', 'build.mjs')], { cwd: ROOT, stdio: 'inherit' });
}

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

export function runCli(args: readonly string[], opts: { timeoutMs?: number; cwd?: string } = {}): Promise<CliResult> {
  const agent = startCli(args, opts);
  return agent.exited;
}

export interface RunningCli {
  readonly proc: ChildProcess;
  readonly exited: Promise<CliResult>;
  /** stderr so far */
  output(): string;
  /** Resolves with the first stderr line matching `re` (also one printed before the call). */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
}

export function startCli(args: readonly string[], opts: { timeoutMs?: number; cwd?: string } = {}): RunningCli {
  ensureBuilt();
  const t0 = performance.now();
  const proc = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  proc.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
    for (const w of [...waiters]) {
      const line = stderr.split('\n').find((l) => w.re.test(l));
      if (line !== undefined) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  const killTimer = setTimeout(() => proc.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
  const exited = new Promise<CliResult>((resolve) => {
    proc.on('close', (code, signal) => {
      clearTimeout(killTimer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    });
  });
  return {
    proc,
    exited,
    output: () => stderr,
    waitFor: (re, timeoutMs = 10_000) =>
      new Promise<string>((resolve, reject) => {
        const line = stderr.split('\n').find((l) => re.test(l));
        if (line !== undefined) return resolve(line);
        const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${timeoutMs}ms; stderr:\n${stderr}`)), timeoutMs);
        waiters.push({
          re,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
      }),
  };
}
