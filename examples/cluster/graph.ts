/**
 * The three-host demo (run it with examples/cluster/run-demo.sh): one graph for every host, rendered per host from
 * `host`. Each host manages two private files, exports two files to every host, and collects everybody's exports —
 * its own included — into `collected/`, a purged directory, so a host that leaves takes its files with it.
 *
 * Edit `banner` below and save: every agent re-renders, each publishes its new exports, and every collector rewrites
 * just the files that changed. `peers` is rendered from the collected data, so it follows hosts joining and leaving.
 */
import type { GraphFn } from '../../src/api.js';

const root = process.env['BACKPLANE_DEMO_ROOT'] ?? '/tmp/backplane-cluster-demo';
const banner = 'hello';

const graph: GraphFn = ({ host, facts, collected }) => {
  const dir = `${root}/${host}`;
  const peers = [...new Set(collected.map((e) => e.host))].sort();
  return {
    resources: [
      { kind: 'file', name: dir, type: 'directory' },
      { kind: 'file', name: `${dir}/private-1`, content: `${host} keeps this file to itself\n` },
      { kind: 'file', name: `${dir}/private-2`, content: `${host} runs on ${facts.hostname} with ${facts.cpus} cpus\n` },
      { kind: 'file', name: `${dir}/peers`, content: `${peers.join('\n')}\n` },
      // Exported, not applied here: published for every host (this one included) to collect.
      { kind: 'file', name: `${dir}/exported-1`, content: `${banner} from ${host}\n`, export: true },
      { kind: 'file', name: `${dir}/exported-2`, content: `${host} exports this to everyone\n`, export: true },
      { kind: 'file', name: `${dir}/collected`, type: 'directory', purge: true },
    ],
    // Collecting is this host's decision: where the copy lands (`{host}` is the exporter) is set here, and only the
    // exporter's content is taken — not its path, owner, mode or source, which stay this host's.
    collect: [{ kind: 'file', set: { path: `${dir}/collected/{host}-{basename}` }, take: ['content'] }],
  };
};

export default graph;
