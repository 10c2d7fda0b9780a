import { parseArgs } from 'node:util';
import { PEER_IDS, type ToolId } from '../tools/types.js';
import { LIVE_IDS, WORKLOADS } from './workloads.js';

export interface Options {
  readonly runs: number;
  /** Ansible's runs of each 1,000-file workload (~5 min each); 0 skips them. */
  readonly slowRuns: number;
  /** undefined: every installed peer. */
  readonly peers: readonly ToolId[] | undefined;
  readonly workloads: ReadonlySet<string>;
  readonly driftSamples: number;
  readonly keep: boolean;
}

export const USAGE = `usage: npm run bench -- [options]
  --runs N           timed runs per tool and workload; the median is reported (default 3; --quick: 1)
  --slow-runs N      Ansible's runs of each 1,000-file workload, ~5 min each (default 1; --quick: 0 = skipped)
  --quick            one run of everything, Ansible's 1,000-file workloads skipped unless --slow-runs is given
  --peers LIST       comma-separated subset of ${PEER_IDS.join(',')} (default: all installed; "none" for Backplane alone)
  --workloads LIST   comma-separated subset of ${[...WORKLOADS.map((w) => w.id), ...LIVE_IDS].join(',')}
  --drift-samples N  damages in the drift-repair test (default 200)
  --keep             keep the temporary directory (generated inputs and run logs) and print its path`;

function count(value: string | undefined, fallback: number, name: string, min: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} wants an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}

function list(value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '' && s !== 'none');
}

function peerList(value: string | undefined): ToolId[] | undefined {
  const names = list(value);
  if (names === undefined) return undefined;
  return names.map((name) => {
    const id = PEER_IDS.find((p) => p === name);
    if (id === undefined) throw new Error(`unknown peer ${JSON.stringify(name)}; known: ${PEER_IDS.join(', ')}`);
    return id;
  });
}

function workloadSet(value: string | undefined): Set<string> {
  const known: string[] = [...WORKLOADS.map((w) => w.id), ...LIVE_IDS];
  const names = list(value) ?? known;
  for (const name of names) {
    if (!known.includes(name)) throw new Error(`unknown workload ${JSON.stringify(name)}; known: ${known.join(', ')}`);
  }
  return new Set(names);
}

/** Returns undefined after printing the usage for --help. */
export function parseOptions(argv: readonly string[]): Options | undefined {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      runs: { type: 'string' },
      'slow-runs': { type: 'string' },
      quick: { type: 'boolean', default: false },
      peers: { type: 'string' },
      workloads: { type: 'string' },
      'drift-samples': { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(USAGE);
    return undefined;
  }
  return {
    runs: count(values.runs, values.quick ? 1 : 3, 'runs', 1),
    slowRuns: count(values['slow-runs'], values.quick ? 0 : 1, 'slow-runs', 0),
    peers: peerList(values.peers),
    workloads: workloadSet(values.workloads),
    driftSamples: count(values['drift-samples'], 200, 'drift-samples', 1),
    keep: values.keep,
  };
}
