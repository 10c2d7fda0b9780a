import { readdirSync } from 'node:fs';
import { join } from 'node:path';

/** Every file under `dir` whose name `match`es, leaving out node_modules, dist and dot-entries (the differential tests' corpus). */
export function filesUnder(dir: string, match: (name: string) => boolean): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules' || e.name === 'dist' || e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p, match));
    else if (match(e.name)) out.push(p);
  }
  return out;
}
