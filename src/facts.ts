import { hostname, arch, cpus, freemem, networkInterfaces, platform, release, totalmem, availableParallelism } from 'node:os';
import type { HostFacts } from './resources/types.js';

/** Host facts for templates and (later) placement: read from the OS, never from the network. */
export function gatherFacts(): HostFacts {
  const interfaces: Record<string, { address: string; family: 'IPv4' | 'IPv6' }[]> = {};
  let ipv4: string | undefined;
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    for (const a of addrs ?? []) {
      if (a.internal) continue;
      (interfaces[name] ??= []).push({ address: a.address, family: a.family });
      if (ipv4 === undefined && a.family === 'IPv4') ipv4 = a.address;
    }
  }
  const host = hostname();
  return {
    hostname: host.split('.')[0] ?? host,
    fqdn: host,
    os: { platform: platform(), release: release(), arch: arch() },
    cpus: typeof availableParallelism === 'function' ? availableParallelism() : cpus().length,
    memory: { total: totalmem(), free: freemem() },
    interfaces,
    ipv4: ipv4 ?? '127.0.0.1',
  };
}
