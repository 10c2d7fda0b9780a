import { spawn } from 'node:child_process';

/**
 * A short helper command (a health check, a reload command): run to completion with a deadline, its process group
 * killed on timeout or abort. Never rejects.
 */
export type CommandOutcome =
  | { readonly kind: 'exited'; readonly code: number | null; readonly signal: NodeJS.Signals | null; readonly output: string }
  | { readonly kind: 'timeout'; readonly output: string }
  | { readonly kind: 'aborted' }
  | { readonly kind: 'spawn-error'; readonly error: Error };

const MAX_OUTPUT = 4096;

export function runCommand(argv: readonly string[], opts: { env: NodeJS.ProcessEnv; cwd: string; timeoutMs: number; signal: AbortSignal }): Promise<CommandOutcome> {
  const [file, ...args] = argv;
  if (file === undefined) return Promise.resolve({ kind: 'spawn-error', error: new Error('empty command') });
  if (opts.signal.aborted) return Promise.resolve({ kind: 'aborted' });
  return new Promise((resolve) => {
    const child = spawn(file, args, { env: opts.env, cwd: opts.cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (b: Buffer): void => {
      // Keep the end: that is where commands say what went wrong.
      output = (output + b.toString('utf8')).slice(-MAX_OUTPUT);
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.stdout.on('error', () => undefined);
    child.stderr.on('error', () => undefined);
    let ending: 'timeout' | 'aborted' | undefined;
    let done = false;
    const kill = (why: 'timeout' | 'aborted'): void => {
      ending ??= why;
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
    };
    const timer = setTimeout(() => kill('timeout'), opts.timeoutMs);
    const onAbort = (): void => kill('aborted');
    opts.signal.addEventListener('abort', onAbort, { once: true });
    const finish = (o: CommandOutcome): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      opts.signal.removeEventListener('abort', onAbort);
      resolve(o);
    };
    child.on('error', (error) => finish({ kind: 'spawn-error', error }));
    // 'exit', not 'close': a daemon the command left behind may hold the pipes open for ever.
    child.on('exit', (code, signal) => {
      // Whatever the command left behind in its group goes with it.
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
      // Give the pipes a moment to deliver the last words.
      setTimeout(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        if (ending === 'aborted') finish({ kind: 'aborted' });
        else if (ending === 'timeout') finish({ kind: 'timeout', output: output.trim() });
        else finish({ kind: 'exited', code, signal, output: output.trim() });
      }, 20);
    });
  });
}
