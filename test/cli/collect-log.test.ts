import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { startCli } from '../helpers/cli.js';
import { withTempDir } from '../helpers/engine.js';

describe('collected resources in the log', () => {
  test('a collected file is logged by the path it is written to, not by the exporter’s path', { timeout: 60_000 }, async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'g.yaml');
      // One host exports to itself through the embedded store; the rule puts the file elsewhere.
      await writeFile(
        file,
        `resources:
  - { kind: file, name: ${dir}/in, type: directory }
  - { kind: file, name: ${dir}/exported/motd, content: "hello\\n", export: true }
  - { kind: file, name: ${dir}/exported/copy, source: /etc/hostname, export: true }
collect:
  - { kind: file, set: { path: "${dir}/in/{host}-{basename}" }, take: [content] }
`,
      );
      const agent = startCli(['run', '-f', file, '--hostname', 'h1', '--state-dir', join(dir, 'state'), '--log-level', 'debug']);
      try {
        const line = await agent.waitFor(/motd\]: created/, 30_000);
        assert.equal(await readFile(join(dir, 'in', 'h1-motd'), 'utf8'), 'hello\n');
        assert.match(line, new RegExp(`file\\[${dir}/in/h1-motd\\]: created`), agent.output());
        assert.doesNotMatch(agent.output(), /exported\/motd\]/, 'no line names the exporter’s path as if it were written here');
        // A refused export is named as its exporter named it (what its operator can find), and where it would go.
        const refused = await agent.waitFor(/not collecting/, 10_000);
        assert.ok(
          refused.includes(`not collecting file[${dir}/exported/copy] exported by h1: the collect rule does not take 'source'`) &&
            refused.endsWith(`(here it would be file[${dir}/in/h1-copy])`),
          refused,
        );
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
    });
  });
});
