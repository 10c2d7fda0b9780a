import type { BenchResults, ReferenceResult, ToolResult, WorkloadResult } from './results.js';

/** 0.0470s, 0.625s, 7.86s, 13.2s, 324s: three significant figures, as in FACTS.md. */
export function fmtSeconds(s: number): string {
  if (s >= 100) return `${s.toFixed(0)}s`;
  if (s >= 10) return `${s.toFixed(1)}s`;
  if (s >= 1) return `${s.toFixed(2)}s`;
  return `${s.toPrecision(3)}s`;
}

function fmtRatio(r: number): string {
  return r >= 100 ? `${r.toFixed(0)}x` : r >= 1 ? `${r.toFixed(1)}x` : `${r.toFixed(2)}x`;
}

export function fmtMs(ms: number | undefined): string {
  if (ms === undefined) return 'n/a';
  return ms >= 10 ? `${ms.toFixed(0)} ms` : `${ms.toFixed(2)} ms`;
}

/** A tool whose run count differs from the headline count gets a dagger, explained under the table. */
const FEWER_RUNS = '†';

function timeCell(r: ToolResult | undefined, baseline: number | undefined, runs: number): string {
  if (r === undefined) return '—';
  if (r.skipped !== undefined) return 'skipped';
  if (r.medianS === undefined) return 'FAILED';
  const ratio = baseline !== undefined && baseline > 0 ? ` (${fmtRatio(r.medianS / baseline)})` : '';
  const mark = r.runs.length !== runs ? ` ${FEWER_RUNS}` : '';
  return `${fmtSeconds(r.medianS)}${ratio}${mark}`;
}

function rssCell(r: ToolResult | undefined, baseline: number | undefined): string {
  if (r === undefined || r.skipped !== undefined) return '—';
  if (r.medianRssMiB === undefined) return 'n/a';
  const ratio = baseline !== undefined && baseline > 0 ? ` (${fmtRatio(r.medianRssMiB / baseline)})` : '';
  return `${r.medianRssMiB.toFixed(0)} MiB${ratio}`;
}

/**
 * A reference (bare `node -e 0`) is no tool: its figure stands in Backplane's column, as the floor under Backplane's
 * own, and the peers' cells stay empty. Without a Backplane column it goes into the row's title.
 */
function referenceRow(res: BenchResults, ref: ReferenceResult, cell: (r: ToolResult) => string): string[] {
  const hasBackplane = res.tools.some((t) => t.id === 'backplane');
  const title = hasBackplane ? ref.title : `${ref.title}: ${cell(ref.result)}`;
  return [title, ...res.tools.map((t) => (t.id === 'backplane' ? cell(ref.result) : '—'))];
}

/** Rows of [workload, cell per tool] for the time table; ratios are peer time over Backplane's time. */
function timeRows(res: BenchResults): string[][] {
  return res.workloads.flatMap((w: WorkloadResult) => {
    const baseline = w.results.backplane?.medianS;
    const row = [w.title, ...res.tools.map((t) => timeCell(w.results[t.id], t.id === 'backplane' ? undefined : baseline, res.runs))];
    return [row, ...(w.references ?? []).map((ref) => referenceRow(res, ref, (r) => timeCell(r, undefined, res.runs)))];
  });
}

/** Ratios are peer RSS over Backplane's: above 1x, Backplane used less memory. */
function rssRows(res: BenchResults): string[][] {
  return res.workloads.flatMap((w) => {
    const baseline = w.results.backplane?.medianRssMiB;
    const row = [w.title, ...res.tools.map((t) => rssCell(w.results[t.id], t.id === 'backplane' ? undefined : baseline))];
    return [row, ...(w.references ?? []).map((ref) => referenceRow(res, ref, (r) => rssCell(r, undefined)))];
  });
}

function referenceNote(res: BenchResults): string | undefined {
  const refs = res.workloads.flatMap((w) => (w.references ?? []).map((r) => r.title));
  if (refs.length === 0) return undefined;
  return `Reference rows (${refs.join('; ')}) are no tool: timed in the same rounds as the tools, they show the floor under Backplane's figure above them.`;
}

function header(res: BenchResults): string[] {
  return ['workload', ...res.tools.map((t) => `${t.label} ${t.version}`)];
}

export function textTable(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

export function markdownTable(rows: string[][]): string {
  const [head, ...body] = rows;
  if (head === undefined) return '';
  const line = (r: string[]): string => `| ${r.join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...body.map(line)].join('\n');
}

function fewerRunsNote(res: BenchResults): string | undefined {
  const any = res.workloads.some((w) => Object.values(w.results).some((r) => r.skipped === undefined && r.runs.length !== res.runs));
  if (!any) return undefined;
  return `${FEWER_RUNS} fewer runs: Ansible gets ${res.slowRuns} run(s) of each 1,000-file workload (about 5 minutes each; --slow-runs N changes it).`;
}

function liveLines(res: BenchResults): string[] {
  const lines: string[] = [];
  const d = res.live.drift;
  if (d !== undefined) {
    lines.push(
      `Drift repair, Backplane agent managing ${d.files.toLocaleString('en-US')} files, ${d.samples} single-file damages ~20 ms apart: ` +
        `median ${fmtMs(d.medianMs)}, p99 ${fmtMs(d.p99Ms)}, max ${fmtMs(d.maxMs)} ` +
        `(deleted: median ${fmtMs(d.medianDeleteMs)}; overwritten: median ${fmtMs(d.medianOverwriteMs)}; not repaired: ${d.unrepaired}).`,
    );
  }
  const i = res.live.idle;
  if (i !== undefined) {
    lines.push(
      `Idle cost, Backplane agent managing ${i.files.toLocaleString('en-US')} files: converged ${fmtSeconds(i.convergedS)} after start; ` +
        `then RSS ${i.rssMiB.toFixed(0)} MiB (peak ${i.peakRssMiB.toFixed(0)} MiB), CPU ${i.cpuPercent.toFixed(2)}% of one core over ${i.windowS} s idle; ` +
        `stopped ${fmtSeconds(i.stopS)} after SIGTERM.`,
    );
  }
  for (const e of res.live.errors) lines.push(`Not measured: ${e}`);
  return lines;
}

function machineLine(res: BenchResults): string {
  const m = res.machine;
  const when = `${res.date.slice(0, 10)} ${res.date.slice(11, 16)} UTC`;
  return `${when} · ${m.uname} · ${m.cpu} · ${m.cores} cores · ${m.memoryGiB} GiB · Node ${m.node}`;
}

export function renderText(res: BenchResults): string {
  const out = [
    `Machine: ${machineLine(res)}`,
    `Median wall time of ${res.runs} run(s); in brackets: peer time / Backplane time (above 1x, Backplane was faster).`,
    '',
    textTable([header(res), ...timeRows(res)]),
  ];
  for (const note of [fewerRunsNote(res), referenceNote(res)]) if (note !== undefined) out.push(note);
  out.push(
    '',
    'Peak RSS of one run (median); in brackets: peer RSS / Backplane RSS (above 1x, Backplane used less):',
    '',
    textTable([header(res), ...rssRows(res)]),
  );
  const live = liveLines(res);
  if (live.length > 0) out.push('', ...live);
  if (res.notes.length > 0) out.push('', ...res.notes.map((n) => `Note: ${n}`));
  return out.join('\n');
}

export function renderMarkdown(res: BenchResults): string {
  const out = [
    `Measured ${machineLine(res)}. Median wall seconds of ${res.runs} run(s); in brackets, peer time ÷ Backplane time (above 1x, Backplane was faster).`,
    '',
    markdownTable([header(res), ...timeRows(res)]),
  ];
  for (const note of [fewerRunsNote(res), referenceNote(res)]) if (note !== undefined) out.push('', note);
  out.push(
    '',
    'Peak memory of one run (max RSS of the largest process, median); in brackets, peer RSS ÷ Backplane RSS (above 1x, Backplane used less):',
    '',
    markdownTable([header(res), ...rssRows(res)]),
  );
  const live = liveLines(res);
  if (live.length > 0) out.push('', ...live.map((l) => `- ${l}`));
  if (res.notes.length > 0) out.push('', ...res.notes.map((n) => `- ${n}`));
  return out.join('\n') + '\n';
}
