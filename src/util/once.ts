/**
 * A value built on first use, then kept. For module-level zod schemas above all: each schema node costs tens of
 * microseconds to build, a kind's parameters hundreds of them, and a start-up pays for every module it loads
 * although a graph uses a few kinds (test/cli/startup.test.ts; README "Performance").
 */
export function once<T>(build: () => T): () => T {
  let built = false;
  let value: T | undefined;
  return () => {
    if (!built) {
      value = build();
      built = true;
    }
    return value as T;
  };
}
