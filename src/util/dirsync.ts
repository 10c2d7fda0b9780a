import { constants } from 'node:fs';
import { open } from 'node:fs/promises';

/**
 * Group commit for directory fsyncs. Writing 1,000 files into one directory needs their renames made durable, but
 * not 1,000 separate fsyncs of the same directory: one fsync that starts after a rename covers every rename that
 * finished before it. A caller therefore joins the next fsync that has not started yet, or starts one.
 */
interface DirState {
  running: Promise<void> | undefined;
  queued: Promise<void> | undefined;
}

const dirs = new Map<string, DirState>();

export function syncDirectory(dir: string): Promise<void> {
  let st = dirs.get(dir);
  if (st === undefined) dirs.set(dir, (st = { running: undefined, queued: undefined }));
  const state = st;
  if (state.running === undefined) {
    state.running = start(dir, state);
    return state.running;
  }
  // One is in flight and may have started before our rename: wait for it, then share the one after it.
  state.queued ??= state.running.then(
    () => undefined,
    () => undefined,
  ).then(() => {
    state.queued = undefined;
    state.running = start(dir, state);
    return state.running;
  });
  return state.queued;
}

function start(dir: string, state: DirState): Promise<void> {
  const p = fsyncDir(dir);
  const clear = (): void => {
    if (state.running === p) state.running = undefined;
    if (state.running === undefined && state.queued === undefined) dirs.delete(dir);
  };
  p.then(clear, clear);
  return p;
}

async function fsyncDir(dir: string): Promise<void> {
  // O_DIRECTORY: whatever sits at the path, a fifo swapped in cannot block the open, and nothing but a directory is synced.
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
