/**
 * The global `performance`, as the CLI bundle sees it (scripts/build.mjs injects this module for it). Node builds
 * its whole perf_hooks machinery, eight modules, on the first read of the global: 7-12 ms of every start on this
 * machine, where the CLI only ever asks for a monotonic clock. now() is that clock, in milliseconds as
 * performance.now() gives them; its origin is when the bundle loaded rather than when the process started, which no
 * caller sees (every use takes a difference). Anything else is the real `performance`, loaded when first asked for.
 */
const origin = process.hrtime.bigint();

export const performance = {
  now: (): number => Number(process.hrtime.bigint() - origin) / 1e6,
  eventLoopUtilization: ((...args: Parameters<typeof globalThis.performance.eventLoopUtilization>) =>
    globalThis.performance.eventLoopUtilization(...args)) as typeof globalThis.performance.eventLoopUtilization,
};
