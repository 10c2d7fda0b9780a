import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cgroupsOfPid, removeCgroups } from '../../test/helpers/cgroups.js';
import { atCleanup } from './proc.js';
import type { NginxStack } from '../tools/types.js';

/**
 * The nginx stack workload's moving parts: giving each tool its own stack, stopping a stack's server before a cold
 * run and after the workload, and checking from the outside that the stack answers.
 */

/** Below Linux's ephemeral range (32768+), so no outgoing connection can hold a stack's port while it is stopped. */
const FIRST_PORT = 28080;
const LAST_PORT = 28999;

/** Ports handed out by this process: a stopped stack's port looks free, but it is still that stack's. */
const taken = new Set<number>();

/** Every stack made in this process, so an interrupted bench can still stop their servers. */
const stacks = new Set<NginxStack>();

atCleanup(() => {
  for (const stack of stacks) signalServer(stack, 'SIGKILL', true);
});

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

async function freePort(): Promise<number> {
  for (let port = FIRST_PORT; port <= LAST_PORT; port++) {
    if (taken.has(port) || !(await canListen(port))) continue;
    taken.add(port);
    return port;
  }
  throw new Error(`no free port for an nginx stack in ${FIRST_PORT}-${LAST_PORT} on 127.0.0.1`);
}

/**
 * Temp paths go under `dir` too: the defaults in /var/lib/nginx would be shared with every other nginx. nginx
 * creates them itself, and the pid file, when it starts.
 */
const TEMPLATE = `# rendered from a template; edits are reverted
worker_processes 1;
pid {{stack_dir}}/nginx.pid;
error_log {{stack_dir}}/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path {{stack_dir}}/client_body;
  proxy_temp_path {{stack_dir}}/proxy;
  fastcgi_temp_path {{stack_dir}}/fastcgi;
  uwsgi_temp_path {{stack_dir}}/uwsgi;
  scgi_temp_path {{stack_dir}}/scgi;
  server {
    listen 127.0.0.1:{{http_port}};
    root {{stack_dir}}/www;
  }
}
`;

/** A stack under dir on a port no other stack of this bench uses. */
export async function makeStack(dir: string): Promise<NginxStack> {
  const port = await freePort();
  const docRoot = join(dir, 'www');
  const stack: NginxStack = {
    package: 'nginx',
    binary: '/usr/sbin/nginx',
    dir,
    port,
    docRoot,
    index: { path: join(docRoot, 'index.html'), content: `hello from the nginx stack on port ${port}\n` },
    conf: join(dir, 'nginx.conf'),
    pidFile: join(dir, 'nginx.pid'),
    template: TEMPLATE,
    vars: { http_port: port, stack_dir: dir },
  };
  stacks.add(stack);
  return stack;
}

function readPid(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether pid is a live nginx master of this stack. A zombie counts as gone: an orphaned master is reaped by PID 1
 * only a second or two after it exited, but its port is free at once.
 */
function isServer(pid: number, stack: NginxStack): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
    // Soon after start, nginx rewrites its argv into one title: "nginx: master process /usr/sbin/nginx -c <conf>".
    const title = `${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')} `;
    return title.includes('nginx') && title.includes(` -c ${stack.conf} `);
  } catch {
    return false;
  }
}

/** The master leads its own process group (nginx's daemon mode and Backplane's svc both make it so). */
function signalServer(stack: NginxStack, signal: NodeJS.Signals, group: boolean): boolean {
  const pid = readPid(stack.pidFile);
  if (pid === undefined || !isServer(pid, stack)) return false;
  try {
    process.kill(group ? -pid : pid, signal);
  } catch {
    // exited meanwhile
  }
  return true;
}

async function until(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = performance.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (performance.now() > deadline) return false;
    await sleep(20);
  }
}

/**
 * Stops the stack's server, found by its pid file: SIGTERM to the master (nginx's fast shutdown, which ends the
 * workers too), SIGKILL to its whole group if it lingers. Throws when the port is still not free afterwards, since
 * the next cold start would then not be one.
 */
export async function stopStack(stack: NginxStack): Promise<void> {
  const pid = readPid(stack.pidFile);
  if (signalServer(stack, 'SIGTERM', false) && pid !== undefined) {
    if (!(await until(() => !isServer(pid, stack), 5000))) {
      signalServer(stack, 'SIGKILL', true);
      await until(() => !isServer(pid, stack), 5000);
    }
  }
  if (!(await until(() => canListen(stack.port), 5000))) {
    throw new Error(`127.0.0.1:${stack.port} is still in use after stopping the nginx of ${stack.pidFile}`);
  }
}

/**
 * After the workload: stopped, and no longer stopped again by an interrupt. Backplane's svc left its server running
 * (`onAgentExit: keep`, as a peer's daemon outlives its run), so the svc cgroup it was started in would stay behind
 * once the server is stopped here: it goes too.
 */
export async function dropStack(stack: NginxStack): Promise<void> {
  const pid = readPid(stack.pidFile);
  const cgroups = pid !== undefined && isServer(pid, stack) ? await cgroupsOfPid(pid) : [];
  await stopStack(stack);
  await removeCgroups(cgroups);
  stacks.delete(stack);
}

/**
 * What is wrong with the stack from the outside, or undefined: the page must be served on the stack's port by a
 * running nginx of this stack's configuration (so no other server on that port can pass for it).
 */
export async function checkStack(stack: NginxStack): Promise<string | undefined> {
  const url = `http://127.0.0.1:${stack.port}/`;
  let status: number;
  let body: string;
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(5000) });
    status = r.status;
    body = await r.text();
  } catch (e) {
    const cause = e instanceof Error && e.cause instanceof Error ? e.cause.message : String(e);
    return `GET ${url} failed: ${cause}`;
  }
  if (status !== 200) return `GET ${url} answered ${status}, expected 200`;
  if (body !== stack.index.content) return `GET ${url} answered ${JSON.stringify(body.slice(0, 80))}, expected ${JSON.stringify(stack.index.content)}`;
  const pid = readPid(stack.pidFile);
  if (pid === undefined || !isServer(pid, stack)) return `${stack.pidFile} names no running nginx with -c ${stack.conf}`;
  return undefined;
}
