/**
 * A cluster simulator for the plan engine's tests: hosts, allocs and plan records in memory, an injected clock,
 * and an "agent" that starts what is placed (healthy, failing or unhealthy by version), runs hooks and stops what
 * is stopped one pass later. Each `pass()` is what the controller does: planPass over a snapshot, then apply its
 * output exactly as controller.ts commits it (plans, history, allocs, hook requests, consumed commands).
 */
import { parsePlanBody, type AppGate } from '../../src/scheduler/records.js';
import { planPass, type PlanPassOutput, type ServiceInput } from '../../src/scheduler/plans.js';
import type { PlanCommand, PlanCommandAction, ServicePlan, SpecRef } from '../../src/scheduler/plan-types.js';
import type { Alloc, ClusterSnapshot, HookName, HookResult, HostSnapshot, ServiceSpec, StoppingAlloc } from '../../src/scheduler/types.js';

export function host(name: string, over: Partial<HostSnapshot> = {}): HostSnapshot {
  return {
    name,
    alive: true,
    downForMs: 0,
    draining: false,
    labels: {},
    capacity: { cpu: 16, memory: 16 * 1024 ** 3 },
    reservedPorts: [],
    dynamicPorts: { from: 20000, to: 20999 },
    ...over,
  };
}

export function spec(over: Omit<Partial<ServiceSpec>, 'update'> & { update?: Partial<ServiceSpec['update']> } = {}): ServiceSpec {
  const { update, ...rest } = over;
  return {
    name: 'web',
    count: 3,
    version: 'v1',
    task: { cmd: ['/bin/true'], env: {} },
    resources: { cpu: 0.1, memory: 1024 },
    ports: [],
    health: { intervalMs: 1000, timeoutMs: 1000, failures: 1, graceMs: 0, tcp: '127.0.0.1:1' },
    placement: { constraints: [], distinctHosts: false, antiAffinity: [], strategy: 'spread' },
    restart: { attempts: 2, intervalMs: 60_000, delayMs: 1000 },
    reschedule: { attempts: 0, intervalMs: 3_600_000, delayMs: 5000, maxDelayMs: 60_000, unlimited: true },
    update: { maxParallel: 1, minHealthyMs: 2000, healthyDeadlineMs: 30_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: true, ...update },
    files: [],
    ...rest,
  };
}

/** How the simulated agent treats a version: 'ok' gets healthy, 'crash' fails, 'sick' stays unhealthy. */
export type Behaviour = 'ok' | 'crash' | 'sick';

export class Sim {
  now = 1_000_000;
  hosts: HostSnapshot[];
  allocs: Alloc[] = [];
  stopping: StoppingAlloc[] = [];
  plans = new Map<string, ServicePlan>();
  history: ServicePlan[] = [];
  commands: PlanCommand[] = [];
  results: PlanPassOutput['commands'][number][] = [];
  records = new Map<string, ServiceInput>();
  behaviour = new Map<string, Behaviour>();
  /** Hook outcomes by hook name: true = ok. */
  hooks = new Map<HookName, boolean>();
  last: PlanPassOutput | undefined;
  /** What application backplanes steer (update order, indexes held), by service. */
  appGates = new Map<string, AppGate>();
  private readonly specs = new Map<string, ServiceSpec>();
  private seq = 0;
  private n = 0;

  constructor(hostNames = ['h1', 'h2', 'h3', 'h4']) {
    this.hosts = hostNames.map((h) => host(h));
  }

  deploy(s: ServiceSpec): SpecRef {
    const deployedAt = new Date(this.now + this.seq++).toISOString();
    const ref: SpecRef = { version: s.version, record: `rec-${deployedAt}`, by: 'op', deployedAt };
    this.specs.set(ref.record, s);
    this.records.set(s.name, { spec: s, ref });
    return ref;
  }

  remove(name: string): void {
    const deployedAt = new Date(this.now + this.seq++).toISOString();
    this.records.set(name, { removed: true, ref: { version: '', record: `rm-${deployedAt}`, by: 'op', deployedAt } });
  }

  command(service: string, action: PlanCommandAction, step?: string): PlanCommand {
    const plan = this.plans.get(service);
    const c: PlanCommand = { id: (this.n++).toString(16).padStart(16, '0'), service, action, planId: plan?.id ?? '?', ...(step === undefined ? {} : { step }), at: new Date(this.now).toISOString(), by: 'op' };
    this.commands.push(c);
    return c;
  }

  snapshot(): ClusterSnapshot {
    const services = [...this.records.values()].flatMap((r) => (r.spec === undefined ? [] : [r.spec]));
    return { now: this.now, hosts: this.hosts, services, allocs: this.allocs, fenceGraceMs: 3000, stopping: this.stopping };
  }

  /** One controller pass, its output applied to the "store". */
  pass(): PlanPassOutput {
    const out = planPass({
      snapshot: this.snapshot(),
      services: this.records,
      plans: this.plans,
      commands: this.commands,
      specOf: (_svc, ref) => this.specs.get(ref.record),
      newAllocId: (service, index) => `${service}.${index}.${(this.n++).toString(16).padStart(8, '0')}`,
      appGates: this.appGates,
    });
    this.last = out;
    // Through the record parser, as the store hands them back: what the next pass compares is what a controller reads.
    for (const p of out.write) {
      const back = parsePlanBody(JSON.stringify(p));
      if (!back.ok) throw new Error(`the plan written does not read back: ${back.why}`);
      this.plans.set(p.service, back.value);
    }
    this.history.push(...out.finished);
    this.results.push(...out.commands);
    this.commands = [];
    const stopped = new Set(out.plan.stop.map((s) => s.allocId));
    for (const a of this.allocs.filter((x) => stopped.has(x.id))) this.stopping.push({ id: a.id, service: a.service, index: a.index, host: a.host, resources: a.resources, ports: a.ports });
    this.allocs = this.allocs.filter((a) => !stopped.has(a.id));
    for (const p of out.plan.place) {
      // As the controller's snapshot does: the hooks an alloc's spec declares travel with it.
      const hooks = Object.keys(this.specOfVersion(p.alloc.version)?.hooks ?? {}) as HookName[];
      this.allocs.push({ ...p.alloc, createdAt: this.now, ...(hooks.length === 0 ? {} : { hooks }) });
    }
    for (const r of out.plan.hookRequests ?? []) {
      this.allocs = this.allocs.map((a) => (a.id === r.allocId ? { ...a, hookRequests: { ...a.hookRequests, [r.hook]: r.nonce } } : a));
    }
    return out;
  }

  /** The agents: start, report and stop what the last pass changed; time moves on. */
  agents(stepMs = 1000): void {
    this.now += stepMs;
    // A stopped instance's process is gone one tick later.
    this.stopping = [];
    this.allocs = this.allocs.map((a) => {
      const b = this.behaviour.get(a.version) ?? 'ok';
      const host = this.hosts.find((h) => h.name === a.host);
      if (host === undefined || !host.alive) return a;
      let status = a.status;
      if (status === undefined) status = { state: 'starting', restarts: 0, since: this.now };
      else if (status.state === 'starting') status = b === 'ok' ? { state: 'healthy', restarts: 0, since: this.now } : b === 'crash' ? { state: 'failed', restarts: 2, since: this.now, message: 'exited 1 three times' } : { state: 'unhealthy', restarts: 0, since: this.now, message: 'HTTP 500' };
      const spec = this.specOfVersion(a.version);
      const hooks: Partial<Record<HookName, HookResult>> = { ...status.hooks };
      const hookOf = (name: HookName, nonce: number): void => {
        if (hooks[name]?.nonce === nonce) return;
        const declared = spec?.hooks?.[name] !== undefined;
        const ok = !declared || (this.hooks.get(name) ?? true);
        hooks[name] = { nonce, state: ok ? 'ok' : 'failed', at: this.now, ...(ok ? {} : { output: `${name} said no\nexit 3` }) };
      };
      if (status.state === 'healthy' && spec?.hooks?.afterStart !== undefined) hookOf('afterStart', 1);
      if (a.hookRequests?.beforeStop !== undefined) hookOf('beforeStop', a.hookRequests.beforeStop);
      if (a.hookRequests?.beforePromote !== undefined) hookOf('beforePromote', a.hookRequests.beforePromote);
      return { ...a, status: { ...status, ...(Object.keys(hooks).length === 0 ? {} : { hooks }) } };
    });
  }

  /** Passes and agent ticks until `done` or `max` passes; calls `sample` after every pass. */
  run(done: (s: Sim) => boolean, opts: { max?: number; stepMs?: number; sample?: (s: Sim) => void } = {}): number {
    for (let i = 0; i < (opts.max ?? 200); i++) {
      this.pass();
      opts.sample?.(this);
      if (done(this)) return i;
      this.agents(opts.stepMs);
    }
    throw new Error(`not done after ${opts.max ?? 200} passes; plan: ${JSON.stringify(this.plans.get('web')?.status)} ${this.plans.get('web')?.why ?? ''}`);
  }

  specOfVersion(version: string): ServiceSpec | undefined {
    return [...this.specs.values()].find((x) => x.version === version);
  }

  plan(service = 'web'): ServicePlan {
    const p = this.plans.get(service);
    if (p === undefined) throw new Error(`no plan for ${service}`);
    return p;
  }

  /** Instances (indexes < count) without a healthy alloc. */
  down(service = 'web'): number {
    const count = this.records.get(service)?.spec?.count ?? 0;
    let n = 0;
    for (let i = 0; i < count; i++) if (!this.allocs.some((a) => a.service === service && a.index === i && a.status?.state === 'healthy' && this.hosts.find((h) => h.name === a.host)?.alive === true)) n++;
    return n;
  }

  versions(service = 'web'): string[] {
    return this.allocs.filter((a) => a.service === service).map((a) => `${a.index}:${a.version}`).sort();
  }
}
