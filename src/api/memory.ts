import { readdir, readFile } from 'node:fs/promises';

/** Each process's children, from one pass over /proc. */
export type ProcTable = ReadonlyMap<number, readonly number[]>;

export async function readProcTable(proc = '/proc'): Promise<ProcTable> {
  const children = new Map<number, number[]>();
  const names = await readdir(proc).catch(() => [] as string[]);
  await Promise.all(
    names.map(async (name) => {
      if (!/^\d+$/.test(name)) return;
      const stat = await readFile(`${proc}/${name}/stat`, 'utf8').catch(() => undefined);
      if (stat === undefined) return;
      // The command name may hold spaces and parentheses: the fields start after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(name));
      children.set(ppid, list);
    }),
  );
  return children;
}

/**
 * The resident memory of a process and all its descendants, in bytes (VmRSS of each; shared pages count once per
 * process, as `ps` would: an upper bound, which is what a "near your limit" warning wants). undefined when the root
 * process is gone.
 */
export async function processTreeRss(rootPid: number, table?: ProcTable, proc = '/proc'): Promise<number | undefined> {
  const children = table ?? (await readProcTable(proc));
  const tree: number[] = [];
  const seen = new Set<number>();
  for (const queue = [rootPid]; queue.length > 0; ) {
    const pid = queue.pop();
    if (pid === undefined || seen.has(pid)) continue;
    seen.add(pid);
    tree.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  let total = 0;
  let rootAlive = false;
  await Promise.all(
    tree.map(async (pid) => {
      const status = await readFile(`${proc}/${pid}/status`, 'utf8').catch(() => undefined);
      if (status === undefined) return;
      if (pid === rootPid) rootAlive = true;
      const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
      if (kb !== undefined) total += Number(kb) * 1024;
    }),
  );
  return rootAlive ? total : undefined;
}
