import type { MachineInfo } from './results.js';
import { fmtSeconds, markdownTable, textTable } from './report.js';
import { median } from './stats.js';

/**
 * The scale benchmark's figures, their per-resource normalisation, its limits and its tables: pure functions of
 * the results, so they are tested without running anything (test/bench/scale.test.ts). bench/scale.ts measures.
 *
 * Per resource: a figure m measured with n resources becomes (m(n) − m(0)) / n, where m(0) is the same measurement
 * of the same kind's empty graph (no resources for noop; the target directory alone for file), taken in the same
 * rounds. Subtracting it keeps Node's start-up and the agent's fixed costs out of the per-resource figure: with
 * ~0.35 s of start-up in a 1,000-resource run and ~0.004 s per resource of it in a 100,000-resource one, dividing
 * the whole time by n would make the small size look expensive and hide a 100,000-resource run that is worse than
 * linear. Each size's figure is taken over its runs first (the fastest by default, see ScaleStat), then subtracted.
 */

export type ScaleKind = 'noop' | 'file';
export const SCALE_KINDS: readonly ScaleKind[] = ['noop', 'file'];

export type MetricId =
  | 'validate.wall'
  | 'validate.rss'
  | 'cold.wall'
  | 'cold.rss'
  | 'cold.first'
  | 'hit.wall'
  | 'hit.rss'
  | 'hit.first'
  | 'converged.wall'
  | 'converged.rss'
  | 'agent.converged'
  | 'agent.first'
  | 'agent.quiet'
  | 'agent.rss'
  | 'agent.peak'
  | 'agent.cpu'
  | 'agent.stop';

export interface Metric {
  readonly id: MetricId;
  readonly title: string;
  /** Seconds, KiB, or % of one core. */
  readonly unit: 's' | 'KiB' | '%';
  /** Normalised per resource and printed with its ratio to the smallest size. */
  readonly perResource: boolean;
  /** The ratio is checked against the linearity bound (the issue's four: validate, cold, converged, idle agent). */
  readonly linear: boolean;
  /** Why a kind has no such figure; absent when every kind has it. */
  readonly leftOut?: Partial<Record<ScaleKind, string>>;
}

/** The idle agent counts as quiet (its idle window may start) once a whole second costs it at most this share of a core. */
export const AGENT_QUIET_SHARE = 0.05;

const NOOP_NO_CHANGE =
  'a noop resource never changes anything, so there is no first change to time (its checks show only at debug level, which would add a log line per resource to the very run being timed)';

export const METRICS: readonly Metric[] = [
  { id: 'validate.wall', title: '`validate`: wall', unit: 's', perResource: true, linear: true },
  { id: 'validate.rss', title: '`validate`: peak RSS', unit: 'KiB', perResource: true, linear: true },
  { id: 'cold.wall', title: 'cold run: wall', unit: 's', perResource: true, linear: true },
  { id: 'cold.rss', title: 'cold run: peak RSS', unit: 'KiB', perResource: true, linear: true },
  { id: 'cold.first', title: 'cold run: first file in place', unit: 's', perResource: false, linear: false, leftOut: { noop: NOOP_NO_CHANGE } },
  // The cold run again on the state dir the first one left: its validated-graph cache is a hit (graphs ≥ 4 KiB).
  { id: 'hit.wall', title: 'cold run, graph cache hit: wall', unit: 's', perResource: true, linear: false },
  { id: 'hit.rss', title: 'cold run, graph cache hit: peak RSS', unit: 'KiB', perResource: true, linear: false },
  { id: 'hit.first', title: 'cold run, graph cache hit: first file in place', unit: 's', perResource: false, linear: false, leftOut: { noop: NOOP_NO_CHANGE } },
  {
    id: 'converged.wall',
    title: 'converged run: wall',
    unit: 's',
    perResource: true,
    linear: true,
    leftOut: { noop: 'a noop resource has no state, so its converged run is its cold run' },
  },
  {
    id: 'converged.rss',
    title: 'converged run: peak RSS',
    unit: 'KiB',
    perResource: true,
    linear: true,
    leftOut: { noop: 'a noop resource has no state, so its converged run is its cold run' },
  },
  { id: 'agent.converged', title: 'agent: start → "converged"', unit: 's', perResource: true, linear: true },
  { id: 'agent.first', title: 'agent: first file in place', unit: 's', perResource: false, linear: false, leftOut: { noop: NOOP_NO_CHANGE } },
  { id: 'agent.quiet', title: `agent: "converged" → quiet (≤ ${AGENT_QUIET_SHARE * 100}% CPU over 1 s)`, unit: 's', perResource: false, linear: false },
  { id: 'agent.rss', title: 'agent: RSS once converged and idle', unit: 'KiB', perResource: true, linear: true },
  { id: 'agent.peak', title: 'agent: peak RSS', unit: 'KiB', perResource: true, linear: false },
  { id: 'agent.cpu', title: 'agent: CPU while idle', unit: '%', perResource: false, linear: false },
  { id: 'agent.stop', title: 'agent: SIGTERM → exit', unit: 's', perResource: false, linear: false },
];

export function metricsFor(kind: ScaleKind): Metric[] {
  return METRICS.filter((m) => m.leftOut?.[kind] === undefined);
}

/** What one run of one (kind, size) measured; a figure whose run failed is absent and its problem listed. */
export interface ScaleRun {
  readonly values: Partial<Record<MetricId, number>>;
  readonly problems: string[];
}

export interface ScalePoint {
  readonly kind: ScaleKind;
  /** Resources in the graph besides the file kind's target directory; 0 is the empty graph. */
  readonly size: number;
  readonly runs: ScaleRun[];
}

/**
 * How the runs of one size become its figure. 'min' (the default): load on a shared machine only ever adds time and
 * memory, so the least disturbed run is the closest to the cost itself, and the per-resource figure is a difference
 * of two such figures, which one loaded run in three would otherwise move by more than the resources cost at 1,000.
 * 'median': as the main bench reports.
 */
export type ScaleStat = 'min' | 'median';

export interface ScaleResults {
  readonly date: string;
  /** Absent in results written before it existed, which used the median. */
  readonly stat?: ScaleStat;
  readonly machine: MachineInfo;
  readonly kinds: readonly ScaleKind[];
  /** The sizes asked for, without the empty graph (which is always measured). */
  readonly sizes: readonly number[];
  readonly points: ScalePoint[];
  readonly idleWindowS: number;
  readonly notes: string[];
  /** dist/ was rewritten while the bench ran (someone built), so the sizes may have measured different code. */
  readonly buildChanged?: boolean;
}

/** The bounds the scale bench fails on: data, so they can be set from final measurements without touching logic. */
export interface ScaleBounds {
  /** Per-resource figure at a size ÷ the same at the smallest size. */
  readonly maxRatio: number;
  /**
   * What the smallest size's figure may be off by through noise alone (GC timing, a busy machine): the check fails
   * only when the ratio is past maxRatio even with this added to the smallest size's figure. Without it a 1,000-noop
   * graph, whose RSS is a few MiB above the empty one's, would fail on a single early GC.
   */
  readonly noise: { readonly s: number; readonly KiB: number };
  readonly firstChangeMaxS: number;
  /** RSS of an idle agent managing n files: the first row whose upTo ≥ n applies; above the last, none. */
  readonly agentRssMiB: readonly { readonly upTo: number; readonly maxMiB: number }[];
  readonly agentCpuMaxPercent: number;
}

/** The issue's goals (#13). */
export const SCALE_BOUNDS: ScaleBounds = {
  maxRatio: 1.5,
  noise: { s: 0.03, KiB: 4096 },
  firstChangeMaxS: 1,
  agentRssMiB: [
    { upTo: 10_000, maxMiB: 150 },
    { upTo: 100_000, maxMiB: 1024 },
  ],
  agentCpuMaxPercent: 1,
};

/** The fastest (smallest) of the runs that measured the figure, or their median; see ScaleStat. */
export function figureOf(res: ScaleResults, p: ScalePoint | undefined, id: MetricId): number | undefined {
  if (p === undefined) return undefined;
  const values = p.runs.flatMap((r) => (r.values[id] === undefined ? [] : [r.values[id]]));
  if (values.length === 0) return undefined;
  return statOf(res) === 'min' ? Math.min(...values) : median(values);
}

export function statOf(res: ScaleResults): ScaleStat {
  return res.stat ?? 'median';
}

export function pointOf(res: ScaleResults, kind: ScaleKind, size: number): ScalePoint | undefined {
  return res.points.find((p) => p.kind === kind && p.size === size);
}

/** (m(n) − m(0)) / n in the metric's unit per resource (seconds or KiB); undefined when either is missing. */
export function perResource(res: ScaleResults, kind: ScaleKind, size: number, id: MetricId): number | undefined {
  const m = figureOf(res, pointOf(res, kind, size), id);
  const empty = figureOf(res, pointOf(res, kind, 0), id);
  if (m === undefined || empty === undefined || size <= 0) return undefined;
  return (m - empty) / size;
}

/** The sizes in ascending order; the first is the reference of every ratio. */
export function sortedSizes(res: ScaleResults): number[] {
  return [...new Set(res.sizes)].filter((n) => n > 0).sort((a, b) => a - b);
}

/** Per-resource figure at `size` ÷ the one at the smallest size; undefined when the reference is not above 0. */
export function ratioToSmallest(res: ScaleResults, kind: ScaleKind, size: number, id: MetricId): number | undefined {
  const ref = sortedSizes(res)[0];
  if (ref === undefined) return undefined;
  const base = perResource(res, kind, ref, id);
  const here = perResource(res, kind, size, id);
  if (base === undefined || here === undefined || base <= 0) return undefined;
  return here / base;
}

/** 1k, 10k, 100k, 2.5k, 1.2M, 500. */
export function shortSize(n: number): string {
  if (n >= 1e6) return `${+(n / 1e6).toPrecision(3)}M`;
  if (n >= 1e3) return `${+(n / 1e3).toPrecision(3)}k`;
  return String(n);
}

function fmtTotal(m: Metric, v: number | undefined): string {
  if (v === undefined) return 'n/a';
  if (m.unit === 's') return fmtSeconds(v);
  if (m.unit === '%') return `${v.toFixed(2)}%`;
  return `${(v / 1024).toFixed(0)} MiB`;
}

/** µs per resource for time, KiB per resource for memory, three significant figures. */
export function fmtPerResource(m: Metric, v: number | undefined): string {
  if (v === undefined) return 'n/a';
  if (m.unit === 's') return `${+(v * 1e6).toPrecision(3)} µs`;
  return `${+v.toPrecision(3)} KiB`;
}

function fmtRatio(r: number | undefined): string {
  return r === undefined ? 'n/a' : `${r.toFixed(2)}x`;
}

// ---------------------------------------------------------------------------------------------------------------
// Limits

export interface ScaleCheck {
  readonly lines: string[];
  readonly failures: number;
}

interface Verdict {
  readonly name: string;
  readonly ok: boolean;
  /** "0.93x (limit ≤ 1.5x)" or "1.2 s; the limit is ≤ 1 s": the tail of the holds/FAIL line. */
  readonly holds: string;
  readonly fails: string;
}

function linearVerdicts(res: ScaleResults, b: ScaleBounds): { verdicts: Verdict[]; unmeasured: string[] } {
  const verdicts: Verdict[] = [];
  const unmeasured: string[] = [];
  const [ref, ...rest] = sortedSizes(res);
  if (ref === undefined) return { verdicts, unmeasured };
  for (const kind of res.kinds) {
    for (const m of metricsFor(kind).filter((x) => x.linear)) {
      const base = perResource(res, kind, ref, m.id);
      for (const size of rest) {
        const name = `${kind} ${m.title}, ${shortSize(size)}÷${shortSize(ref)} per resource`;
        const here = perResource(res, kind, size, m.id);
        if (base === undefined || here === undefined) {
          unmeasured.push(`${name}: not measured`);
          continue;
        }
        if (base <= 0) {
          unmeasured.push(`${name}: no ratio, the ${shortSize(ref)} figure is not above the empty graph's`);
          continue;
        }
        const ratio = here / base;
        const slack = (m.unit === 's' ? b.noise.s : b.noise.KiB) / ref;
        const within = here <= b.maxRatio * (base + slack);
        const detail = `(${fmtPerResource(m, here)} vs ${fmtPerResource(m, base)})`;
        verdicts.push({
          name,
          ok: ratio <= b.maxRatio || within,
          holds:
            ratio <= b.maxRatio
              ? `${fmtRatio(ratio)} ${detail} (limit ≤ ${b.maxRatio}x)`
              : `${fmtRatio(ratio)} ${detail}, within the noise allowed at ${shortSize(ref)} (limit ≤ ${b.maxRatio}x)`,
          fails: `is ${fmtRatio(ratio)} ${detail}; the limit is ≤ ${b.maxRatio}x`,
        });
      }
    }
  }
  return { verdicts, unmeasured };
}

function atMostVerdict(name: string, value: number | undefined, max: number, unit: string, text: (v: number) => string): Verdict | undefined {
  if (value === undefined) return undefined;
  const bound = `≤ ${max}${unit}`;
  return { name, ok: value <= max, holds: `${text(value)} (limit ${bound})`, fails: `is ${text(value)}; the limit is ${bound}` };
}

function firstChangeVerdicts(res: ScaleResults, b: ScaleBounds): Verdict[] {
  const out: Verdict[] = [];
  for (const kind of res.kinds) {
    for (const m of metricsFor(kind).filter((x) => x.id === 'cold.first' || x.id === 'hit.first' || x.id === 'agent.first')) {
      for (const size of sortedSizes(res)) {
        const v = atMostVerdict(`${kind} ${shortSize(size)} ${m.title}`, figureOf(res, pointOf(res, kind, size), m.id), b.firstChangeMaxS, ' s', fmtSeconds);
        if (v !== undefined) out.push(v);
      }
    }
  }
  return out;
}

export function agentRssBoundMiB(b: ScaleBounds, size: number): number | undefined {
  return b.agentRssMiB.find((row) => size <= row.upTo)?.maxMiB;
}

function memoryVerdicts(res: ScaleResults, b: ScaleBounds): Verdict[] {
  if (!res.kinds.includes('file')) return [];
  return sortedSizes(res).flatMap((size) => {
    const max = agentRssBoundMiB(b, size);
    const kib = figureOf(res, pointOf(res, 'file', size), 'agent.rss');
    if (max === undefined || kib === undefined) return [];
    const v = atMostVerdict(`file ${shortSize(size)} agent RSS once converged`, kib / 1024, max, ' MiB', (x) => `${x.toFixed(0)} MiB`);
    return v === undefined ? [] : [v];
  });
}

function cpuVerdicts(res: ScaleResults, b: ScaleBounds): Verdict[] {
  return res.kinds.flatMap((kind) =>
    sortedSizes(res).flatMap((size) => {
      const v = atMostVerdict(
        `${kind} ${shortSize(size)} agent CPU while idle`,
        figureOf(res, pointOf(res, kind, size), 'agent.cpu'),
        b.agentCpuMaxPercent,
        '%',
        (x) => `${x.toFixed(2)}%`,
      );
      return v === undefined ? [] : [v];
    }),
  );
}

/**
 * Every limit of the scale bench, in the format of bench/lib/limits.ts: `holds:` or `FAIL:` per figure; a failed
 * or timed-out run is a FAIL of its own (its figure is missing, so no limit could pass it).
 */
export function checkScale(res: ScaleResults, b: ScaleBounds = SCALE_BOUNDS): ScaleCheck {
  const lines: string[] = ['Scale limits (bench/lib/scale.ts, SCALE_BOUNDS):'];
  let failures = 0;
  const section = (text: string, verdicts: readonly Verdict[], notes: readonly string[] = []): void => {
    lines.push(`  ${text}`);
    if (verdicts.length === 0 && notes.length === 0) lines.push('    not measured in this run');
    for (const v of verdicts) {
      if (!v.ok) failures++;
      lines.push(v.ok ? `    holds: ${v.name} ${v.holds}` : `    FAIL: ${v.name} ${v.fails}`);
    }
    for (const n of notes) lines.push(`    ${n}`);
  };
  const linear = linearVerdicts(res, b);
  section(
    `linear: per-resource time and memory at each size ≤ ${b.maxRatio}x the smallest size's (validate, cold, converged, idle agent)`,
    linear.verdicts,
    linear.unmeasured,
  );
  section(`first change applied ≤ ${b.firstChangeMaxS} s after start, at every size`, firstChangeVerdicts(res, b));
  section(
    `idle agent's RSS: ${b.agentRssMiB.map((r) => `≤ ${r.maxMiB} MiB up to ${r.upTo.toLocaleString('en-US')} files`).join(', ')}`,
    memoryVerdicts(res, b),
  );
  section(`idle agent's CPU ≤ ${b.agentCpuMaxPercent}% of one core`, cpuVerdicts(res, b));
  const problems = res.points.flatMap((p) =>
    p.runs.flatMap((r, i) => r.problems.map((problem) => `${p.kind} ${p.size === 0 ? 'empty graph' : shortSize(p.size)} run ${i + 1}: ${problem}`)),
  );
  if (res.buildChanged === true) problems.push('dist/ was rebuilt while the bench ran: the figures mix two builds; run it again');
  lines.push('  every run finished, in time, with the right end state, on one build');
  if (problems.length === 0) lines.push('    holds');
  for (const problem of problems) {
    failures++;
    lines.push(`    FAIL: ${problem}`);
  }
  return { lines, failures };
}

// ---------------------------------------------------------------------------------------------------------------
// Tables

/** Header and rows of one kind's table: total (per resource) per size, then each size's ratio to the smallest. */
export function scaleRows(res: ScaleResults, kind: ScaleKind): string[][] {
  const sizes = sortedSizes(res);
  const [ref, ...rest] = sizes;
  const head = [
    `${kind} resources`,
    'empty graph',
    ...sizes.map((n) => n.toLocaleString('en-US')),
    ...(ref === undefined ? [] : rest.map((n) => `${shortSize(n)}÷${shortSize(ref)}`)),
  ];
  const rows = metricsFor(kind).map((m) => {
    const empty = figureOf(res, pointOf(res, kind, 0), m.id);
    const cells = sizes.map((n) => {
      const total = fmtTotal(m, figureOf(res, pointOf(res, kind, n), m.id));
      return m.perResource ? `${total} = ${fmtPerResource(m, perResource(res, kind, n, m.id))}` : total;
    });
    const ratios = rest.map((n) => (m.perResource ? fmtRatio(ratioToSmallest(res, kind, n, m.id)) : '—'));
    return [m.title, fmtTotal(m, empty), ...cells, ...ratios];
  });
  return [head, ...rows];
}

function leftOutLines(res: ScaleResults): string[] {
  return res.kinds.flatMap((kind) =>
    METRICS.flatMap((m) => {
      const why = m.leftOut?.[kind];
      return why === undefined ? [] : [`${kind}: no "${m.title}": ${why}.`];
    }),
  );
}

function runsLine(res: ScaleResults): string {
  const counts = [...new Set(res.points.map((p) => `${p.size === 0 ? 'empty' : shortSize(p.size)}: ${p.runs.length}`))];
  const stat = statOf(res) === 'min' ? 'the fastest run (least RSS) of each size' : 'the median of each size';
  return `Runs per size: ${counts.join(', ')}; figures are ${stat}.`;
}

const HOW =
  'Each cell: the total, then "=" the figure per resource, (m(n) − m(empty graph)) / n, in µs or KiB per resource; ' +
  'the ratios are per-resource figure ÷ the smallest size\'s (1.00x is linear, above 1 worse than linear).';

function machineLine(res: ScaleResults): string {
  const m = res.machine;
  return `${res.date.slice(0, 10)} ${res.date.slice(11, 16)} UTC · ${m.uname} · ${m.cpu} · ${m.cores} cores · ${m.memoryGiB} GiB · Node ${m.node}`;
}


export function renderScaleText(res: ScaleResults): string {
  const out = [`Machine: ${machineLine(res)}`, HOW, runsLine(res)];
  for (const kind of res.kinds) out.push('', textTable(scaleRows(res, kind)));
  out.push('', ...leftOutLines(res), ...res.notes.map((n) => `Note: ${n}`));
  return out.join('\n');
}

export function renderScaleMarkdown(res: ScaleResults): string {
  const out = [`Measured ${machineLine(res)}. ${HOW} ${runsLine(res)}`];
  for (const kind of res.kinds) out.push('', markdownTable(scaleRows(res, kind)));
  const notes = [...leftOutLines(res), ...res.notes];
  if (notes.length > 0) out.push('', ...notes.map((n) => `- ${n}`));
  return out.join('\n') + '\n';
}
