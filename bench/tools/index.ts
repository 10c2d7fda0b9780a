import { firstLine, which } from '../lib/proc.js';
import { ansibleTool } from './ansible.js';
import { backplaneBuilt, backplaneTool } from './backplane.js';
import { cfengineTool } from './cfengine.js';
import { puppetTool } from './puppet.js';
import { PEER_IDS, type Tool, type ToolId } from './types.js';

/** A peer is used only when its command is installed; the version comes from the tool itself, not from FACTS. */
function detectOne(id: ToolId): Tool | undefined {
  switch (id) {
    case 'puppet':
      return which('puppet') ? puppetTool(firstLine(['puppet', '--version']) ?? '?') : undefined;
    case 'ansible': {
      if (!which('ansible-playbook')) return undefined;
      // "ansible-playbook [core 2.14.18]"
      const line = firstLine(['ansible-playbook', '--version']) ?? '';
      return ansibleTool(/core ([\d.]+)/.exec(line)?.[1] ?? '?');
    }
    case 'cfengine': {
      if (!which('cf-agent')) return undefined;
      // "CFEngine Core 3.21.0"
      const line = firstLine(['cf-agent', '--version']) ?? '';
      return cfengineTool(/([\d]+\.[\d.]+)/.exec(line)?.[1] ?? '?');
    }
    case 'backplane':
      return backplaneBuilt() ? backplaneTool() : undefined;
  }
}

export interface Detected {
  readonly tools: Tool[];
  readonly missing: ToolId[];
}

/** Backplane first (the baseline of every ratio), then the requested peers in a fixed order. */
export function detectTools(peers: readonly ToolId[], withBackplane: boolean): Detected {
  const ordered = PEER_IDS.filter((id) => peers.includes(id));
  const wanted: ToolId[] = withBackplane ? ['backplane', ...ordered] : ordered;
  const tools: Tool[] = [];
  const missing: ToolId[] = [];
  for (const id of wanted) {
    const tool = detectOne(id);
    if (tool) tools.push(tool);
    else missing.push(id);
  }
  return { tools, missing };
}
