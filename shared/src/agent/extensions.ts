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
