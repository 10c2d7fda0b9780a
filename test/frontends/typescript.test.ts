import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ValidationErrors } from '../../src/errors.js';
import { localContext, loadGraphFile } from '../../src/frontends/load.js';
import { withTempDir } from '../helpers/engine.js';
import { registry } from '../helpers/graph.js';

const API = join(import.meta.dirname, '..', '..', 'src', 'api.ts');

describe('TypeScript graphs', () => {
  test('a module renders resources from the host context, and is re-evaluated on every load', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'graph.ts');
      const write = (greeting: string) =>
        writeFile(
          file,
          `import type { GraphFn } from '${API}';
const graph: GraphFn = ({ host, facts, collected }) => ({
  resources: [
    { kind: 'file', name: '${dir}/out', type: 'directory' },
    { kind: 'file', name: '${dir}/out/motd', content: \`${greeting} \${host} \${facts.cpus} \${collected.length}\\n\` },
    { kind: 'print', name: 'p', msg: 'hi', export: ['b'] },
    { kind: 'noop', name: 'after', require: 'file[${dir}/out/motd]' },
  ],
  collect: [{ kind: 'file', set: { path: '${dir}/in/{basename}' } }],
});
export default graph;
`,
        );
      await write('hello');
      const ctx = { ...localContext('web1'), collected: [] };
      const g1 = await loadGraphFile(file, registry, ctx);
      assert.deepEqual([...g1.vertices.keys()].sort(), [`file[${dir}/out/motd]`, `file[${dir}/out]`, "noop[after]"].sort());
      const motd = g1.vertices.get(`file[${dir}/out/motd]` as never)?.params as { content: string };
      assert.equal(motd.content, `hello web1 ${ctx.facts.cpus} 0\n`);
      assert.deepEqual(g1.exports.map((e) => [e.kind, e.name, e.to]), [['print', 'p', ['b']]]);
      assert.equal(g1.collect[0]?.kind, 'file');
      await write('goodbye');
      const g2 = await loadGraphFile(file, registry, ctx);
      const motd2 = g2.vertices.get(`file[${dir}/out/motd]` as never)?.params as { content: string };
      assert.match(motd2.content, /^goodbye web1/);
    });
  });

  test('what the function returns is validated like YAML, with a location inside the module', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'graph.mts');
      await writeFile(file, `export default () => [{ kind: 'file', name: 'relative' }, { kind: 'exec', name: 'e', cmd: 5 }];\n`);
      await assert.rejects(loadGraphFile(file, registry), (err: unknown) => {
        assert.ok(err instanceof ValidationErrors);
        const text = err.format();
        assert.match(text, new RegExp(`${file}: resources\\[0\\]\\.path: file\\[relative\\]: parameter "path": must be an absolute path`));
        assert.match(text, /resources\[1\]\.cmd: exec\[e\]: parameter "cmd"/);
        return true;
      });
    });
  });

  test('a module that throws, or exports no function, is a clear error', async () => {
    await withTempDir(async (dir) => {
      const throwing = join(dir, 'a.ts');
      await writeFile(throwing, `export default () => { throw new Error('no database'); };\n`);
      await assert.rejects(loadGraphFile(throwing, registry), /the graph function threw: no database/);
      const notFn = join(dir, 'b.mjs');
      await writeFile(notFn, `export default 42;\n`);
      await assert.rejects(loadGraphFile(notFn, registry), /must export a function as its default export/);
      const broken = join(dir, 'c.ts');
      await writeFile(broken, `export default () => ({ resources: [ }\n`);
      await assert.rejects(loadGraphFile(broken, registry), /cannot load graph module/);
    });
  });
});
