import { damage, emptyDir, makeFiles, verifyFiles, writeConverged } from './fileset.js';
import { checkStack, dropStack, makeStack, stopStack } from './nginx.js';
import type { Desired, ExecSpec } from '../tools/types.js';

/**
 * A command that is not a configuration tool, timed in the same round-robin as the tools so that readers see a floor
 * under their figures (bare Node's start-up under Backplane's, which Backplane cannot go below).
 */
export interface Reference {
  readonly id: string;
  readonly title: string;
  readonly argv: readonly string[];
}

export interface Workload {
  readonly id: string;
  readonly title: string;
  /** The best possible wall time, for the exec workloads (their critical path). */
  readonly idealS?: number;
  /** 1,000+ managed files: Ansible needs minutes per run here, so its run count is capped separately. */
  readonly manyFiles: boolean;
  /** Measured for Backplane alone (the peers' numbers at this size would add nothing but minutes). */
  readonly backplaneOnly: boolean;
  /** Timed with the tools, interleaved, and printed as rows of their own under this workload's. */
  readonly references?: readonly Reference[];
  desired(targetDir: string): Desired | Promise<Desired>;
  /** Brings the target to this workload's starting state before every timed run; not timed. */
  setup(d: Desired): void | Promise<void>;
  /** Returns what is wrong after a run, so a tool that skipped work cannot look fast. */
  check(d: Desired, wallS: number): string | undefined | Promise<string | undefined>;
  /** Ends what a tool's runs left running (the nginx stack's servers), once its last run is checked. */
  teardown?(d: Desired): Promise<void>;
}

const NO_EXECS: readonly ExecSpec[] = [];

function fileWorkload(
  id: string,
  title: string,
  count: number,
  setup: (d: Desired) => void,
  backplaneOnly = false,
): Workload {
  return {
    id,
    title,
    manyFiles: true,
    backplaneOnly,
    desired: (dir) => ({ dir, files: makeFiles(dir, count), execs: NO_EXECS }),
    setup,
    check: (d) => (d.dir === undefined ? 'no target directory' : verifyFiles(d.dir, d.files)),
  };
}

function execWorkload(id: string, title: string, execs: readonly ExecSpec[], idealS: number): Workload {
  return {
    id,
    title,
    idealS,
    manyFiles: false,
    backplaneOnly: false,
    desired: () => ({ files: [], execs }),
    setup: () => undefined,
    // `sleep` leaves nothing to inspect, but a run shorter than the critical path cannot have run every command.
    check: (_d, wallS) => (wallS < idealS * 0.98 ? `finished in ${wallS.toFixed(2)}s, under the ${idealS}s ideal` : undefined),
  };
}

const cold = (d: Desired): void => {
  if (d.dir !== undefined) emptyDir(d.dir);
};
const converged = (d: Desired): void => {
  if (d.dir !== undefined) writeConverged(d.dir, d.files);
};
const damaged = (d: Desired): void => {
  converged(d);
  damage(d.files, 0.1);
};

const sleep = (name: string, seconds: string, after: readonly string[] = []): ExecSpec => ({
  name,
  argv: ['sleep', seconds],
  after,
});

/**
 * A real stack, converged from cold each run: the package is installed already (its check is part of the run), and
 * the document root, page and rendered configuration are gone and the server is stopped, so every tool renders,
 * writes and starts. Each tool gets its own directory and port (see nginx.ts).
 */
const nginxStack: Workload = {
  id: 'nginx-stack',
  title: 'nginx stack, cold: package check, page, templated config, start',
  manyFiles: false,
  backplaneOnly: false,
  desired: async (dir) => ({ files: [], execs: NO_EXECS, nginx: await makeStack(dir) }),
  setup: async (d) => {
    if (d.nginx === undefined) return;
    await stopStack(d.nginx);
    emptyDir(d.nginx.dir);
  },
  check: (d) => (d.nginx === undefined ? 'no nginx stack' : checkStack(d.nginx)),
  teardown: async (d) => {
    if (d.nginx !== undefined) await dropStack(d.nginx);
  },
};

export const WORKLOADS: readonly Workload[] = [
  {
    id: 'startup',
    title: 'start-up on empty input',
    manyFiles: false,
    backplaneOnly: false,
    references: [{ id: 'node', title: 'bare Node start-up (`node -e 0`), the floor under Backplane', argv: [process.execPath, '-e', '0'] }],
    desired: () => ({ files: [], execs: NO_EXECS }),
    setup: () => undefined,
    check: () => undefined,
  },
  fileWorkload('files-cold', '1,000 files, cold', 1000, cold),
  fileWorkload('files-converged', '1,000 files, already converged', 1000, converged),
  fileWorkload('files-repair', '1,000 files, 10% deleted + 10% altered', 1000, damaged),
  execWorkload(
    'exec-chain',
    '4 × `sleep 2`, chain 1→2→3 plus 4 alone (ideal 6 s)',
    [sleep('e1', '2'), sleep('e2', '2', ['e1']), sleep('e3', '2', ['e2']), sleep('e4', '2')],
    6,
  ),
  execWorkload(
    'exec-parallel',
    '20 independent `sleep 0.5` (ideal 0.5 s)',
    Array.from({ length: 20 }, (_, i) => sleep(`s${String(i + 1).padStart(2, '0')}`, '0.5')),
    0.5,
  ),
  nginxStack,
  fileWorkload('files10k-cold', '10,000 files, cold', 10_000, cold, true),
  fileWorkload('files10k-converged', '10,000 files, already converged', 10_000, converged, true),
];

/** Backplane-only measurements of a running agent, selected with the same --workloads flag. */
export const LIVE_IDS = ['drift', 'idle'] as const;
export type LiveId = (typeof LIVE_IDS)[number];
