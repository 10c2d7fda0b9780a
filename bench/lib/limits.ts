import type { ToolId } from '../tools/types.js';
import type { BenchResults } from './results.js';

/**
 * Speed limits: what the README promises, checked on every bench run, so that a regression fails the bench loudly
 * (a `FAIL:` line and exit 1) instead of only changing a number in a table nobody rereads. A figure the run did not
 * measure (workload not selected, peer not installed, a run that failed) is listed as not measured, not as a pass.
 *
 * Each limit has headroom over the figure measured on this project's 2-core machine (README, Benchmarks), because the
 * bench often shares those cores with other work; a limit that trips on noise would soon be ignored.
 */
export interface Limit {
  readonly id: string;
  /** What is compared, printed as the limit: e.g. "exec-chain wall time ≤ 9 s". */
  readonly text: string;
  readonly why: string;
  /** The figures of this run that the limit applies to; none when the run did not measure them. */
  figures(res: BenchResults): readonly Figure[];
}

export interface Figure {
  readonly name: string;
  readonly value: number;
  readonly unit: 's' | 'ms' | '%' | 'x' | '';
  readonly ok: boolean;
  /** The bound in the figure's unit, for the FAIL line: "≤ 9" or "> 1". */
  readonly bound: string;
}

const atMost = (name: string, value: number, max: number, unit: Figure['unit']): Figure => ({ name, value, unit, ok: value <= max, bound: `≤ ${max}` });

/** Backplane's median on one workload, when every Backplane run of it succeeded. */
function backplaneS(res: BenchResults, workload: string): number | undefined {
  return res.workloads.find((w) => w.id === workload)?.results.backplane?.medianS;
}

/** Peer time ÷ Backplane time on every workload both finished in this run (same machine, same minutes). */
function fasterThan(peer: ToolId, label: string): Limit {
  return {
    id: `faster-than-${peer}`,
    text: `${label} time ÷ Backplane time > 1 on every workload both ran`,
    why: `the README says Backplane is faster than ${label} on every workload they share (1.6x-516x on 2026-11-22); ratios come from one run, so a slower machine moves both sides`,
    figures: (res) =>
      res.workloads.flatMap((w) => {
        const ours = w.results.backplane?.medianS;
        const theirs = w.results[peer]?.medianS;
        if (ours === undefined || theirs === undefined || ours <= 0) return [];
        const ratio = theirs / ours;
        return [{ name: `${w.id}: ${label} ÷ Backplane`, value: ratio, unit: 'x', ok: ratio > 1, bound: '> 1' }];
      }),
  };
}

/** `label` is completed with the bound, so that the printed limit is always the one checked. */
function backplaneWorkload(id: string, workload: string, max: number, label: string, why: string): Limit {
  return {
    id,
    text: `${label} ≤ ${max} s`,
    why,
    figures: (res) => {
      const s = backplaneS(res, workload);
      return s === undefined ? [] : [atMost(`${workload}: Backplane wall time`, s, max, 's')];
    },
  };
}

/** The one table of limits. Change a bound here, and in the README's Benchmarks section. */
export const LIMITS: readonly Limit[] = [
  fasterThan('puppet', 'Puppet'),
  fasterThan('ansible', 'Ansible'),
  backplaneWorkload(
    'startup',
    'startup',
    0.5,
    'start-up on empty input',
    'measured 0.16 s; 3x headroom for a loaded machine, and still well under Ansible (0.5 s) and Puppet (2.4 s)',
  ),
  backplaneWorkload(
    'exec-chain',
    'exec-chain',
    7.5,
    'exec chain 1→2→3 plus 4 alone (ideal 6 s; 1.25 × ideal)',
    'measured 6.3 s; run one after another the four take 8 s, so the bound sits below that (1.5 × ideal, 9 s, would pass a fully serial run)',
  ),
  backplaneWorkload(
    'exec-parallel',
    'exec-parallel',
    2,
    '20 × `sleep 0.5` (ideal 0.5 s)',
    'measured 0.78 s; run 4 at a time they would take 2.5 s and one by one 10 s, so 2 s only passes when most of them really run at once',
  ),
  {
    id: 'drift',
    text: 'drift repair median ≤ 10 ms, p99 ≤ 50 ms, none left unrepaired',
    why: 'measured 2.1 ms / 5.3 ms; the agent reacts to inotify events, so tens of milliseconds would mean it fell back to polling or a full re-check',
    figures: (res) => {
      const d = res.live.drift;
      if (d === undefined) return [];
      const out: Figure[] = [atMost('drift repair: not repaired', d.unrepaired, 0, '')];
      if (d.medianMs !== undefined) out.push(atMost('drift repair: median', d.medianMs, 10, 'ms'));
      if (d.p99Ms !== undefined) out.push(atMost('drift repair: p99', d.p99Ms, 50, 'ms'));
      return out;
    },
  },
  {
    id: 'idle',
    text: 'idle CPU ≤ 1% of one core (agent managing 10,000 files)',
    why: 'measured 0.00%; a converged agent waits on events, so any steady CPU means something polls',
    figures: (res) => (res.live.idle === undefined ? [] : [atMost('idle: CPU % of one core', res.live.idle.cpuPercent, 1, '%')]),
  },
];

function fmt(f: Figure): string {
  const digits = f.unit === 's' || f.unit === 'x' ? 3 : 2;
  const v = Number.isInteger(f.value) ? String(f.value) : f.value.toPrecision(digits);
  return f.unit === '' ? v : f.unit === '%' || f.unit === 'x' ? `${v}${f.unit}` : `${v} ${f.unit}`;
}

export interface LimitReport {
  readonly lines: string[];
  readonly failures: number;
}

/** One line per limit, then `holds:` or `FAIL:` per figure (with its value and bound), or `not measured`. */
export function checkLimits(res: BenchResults, limits: readonly Limit[] = LIMITS): LimitReport {
  const lines: string[] = ['Speed limits (bench/lib/limits.ts):'];
  let failures = 0;
  for (const limit of limits) {
    lines.push(`  ${limit.text} — ${limit.why}`);
    const figures = limit.figures(res);
    if (figures.length === 0) lines.push('    not measured in this run');
    for (const f of figures) {
      if (!f.ok) failures++;
      const bound = `${f.bound}${f.unit === '' || f.unit === 'x' || f.unit === '%' ? f.unit : ` ${f.unit}`}`;
      lines.push(f.ok ? `    holds: ${f.name} ${fmt(f)} (limit ${bound})` : `    FAIL: ${f.name} is ${fmt(f)}; the limit is ${bound}`);
    }
  }
  return { lines, failures };
}
