import { readFileSync } from 'node:fs';
import { availableParallelism, totalmem } from 'node:os';
import { firstLine } from './proc.js';
import type { MachineInfo } from './results.js';

function cpuModel(): string {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('model name'));
    return line?.split(':')[1]?.trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export function machineInfo(): MachineInfo {
  return {
    uname: firstLine(['uname', '-srm']) ?? 'unknown',
    cpu: cpuModel(),
    cores: availableParallelism(),
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
  };
}
