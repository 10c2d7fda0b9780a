import { spawn, spawnSync, type ChildProcessByStdio } from 'node:child_process';
import type { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';

/**
 * A real second local user, for tests of what a non-root user can do to the root agent: created with `useradd -M -N
 * -r` under a random name, removed by `remove()`. Only root can create one: callers skip with `skipReason`.
 */
export interface OtherUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  /** Runs `node -e code` as this user (no supplementary groups, cwd /); resolves with its exit status and output. */
  node(code: string, timeoutMs?: number): Promise<{ status: number | null; stdout: string; stderr: string }>;
  /** Starts `node -e code` as this user and leaves it running. */
  start(code: string): ChildProcessByStdio<null, Readable, Readable>;
  remove(): void;
}

export const skipReason: string | false =
  process.getuid?.() !== 0 ? 'needs root: creates a second local user to act as the attacker' : false;

export function createOtherUser(): OtherUser {
  const name = `bpx${randomBytes(4).toString('hex')}`;
  const r = spawnSync('useradd', ['-M', '-N', '-r', '-s', '/usr/sbin/nologin', name], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`useradd ${name} failed: ${r.stderr}`);
  const id = (flag: string): number => Number(spawnSync('id', [flag, name], { encoding: 'utf8' }).stdout.trim());
  const uid = id('-u');
  const gid = id('-g');
  const start = (code: string): ChildProcessByStdio<null, Readable, Readable> =>
    // libuv drops supplementary groups when uid/gid are set.
    spawn(process.execPath, ['--input-type=module', '-e', code], { uid, gid, cwd: '/', env: { PATH: '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
  return {
    name,
    uid,
    gid,
    node: (code, timeoutMs = 30_000) =>
      new Promise((resolve, reject) => {
        const child = start(code);
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
        child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
        child.once('error', reject);
        child.once('close', (status) => {
          clearTimeout(timer);
          resolve({ status, stdout, stderr });
        });
      }),
    start,
    remove: () => {
      spawnSync('userdel', [name]);
    },
  };
}
