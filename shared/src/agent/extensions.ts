// Optional front doors hosted by the agent. Loaded lazily so an agent without them never pays for them.
import type { AgentExtension } from './agent.ts';

export function dockerPluginExtension(): AgentExtension {
  return {
    name: 'docker-plugin',
    async start(agent) {
      const { startDockerPlugin } = await import('../../../docker-plugin/src/index.ts');
      return startDockerPlugin({
        core: agent.core,
        name: agent.cfg.dockerPlugin!,
        pluginDir: agent.cfg.dockerPluginDir,
        dockerSocket: agent.cfg.dockerSocket,
        stateDir: agent.cfg.stateDir,
        log: agent.log.child({ component: 'docker-plugin' }),
      });
    },
  };
}

/** DELs that membrane-cni queued while the agent was down: done before the API serves again. */
export function cniPendingDeletesExtension(): AgentExtension {
  return {
    name: 'cni-pending-deletes',
    async start(agent) {
      const { drainPendingDeletes, pendingDeletesDir } = await import('../pending-deletes/index.ts');
      const dir = pendingDeletesDir(agent.cfg.stateDir);
      const report = await drainPendingDeletes(dir, (e) => agent.core.endpoints.delete(e.containerId, e.ifName));
      if (Object.values(report).some((v) => (Array.isArray(v) ? v.length : v))) agent.log.info({ dir, ...report }, 'drained DELs queued by membrane-cni while the agent was down');
    },
  };
}
