// The agent's label resolver (shared/src/labels): which container runtimes it asks for workloads'
// labels. containerd's CRI is always a candidate (it answers only for ADDs that name a kubelet pod,
// and only when its socket is there); Docker only when the agent serves the Docker plugin.
import type { AgentConfig } from './config.ts';
import type { Logger } from '../log.ts';
import { LabelResolver, type RuntimeSource } from '../labels/resolver.ts';
import { CriLabels } from '../labels/cri.ts';
import { DockerLabels } from '../labels/docker.ts';

/** `onDockerNetworkName`: a Docker network's id and name (`docker network create NAME`), as the
 *  Docker API tells them; with the Docker plugin, Docker's networks are followed from the start. */
export function labelResolver(
  cfg: AgentConfig,
  log: Logger,
  onDockerNetworkName?: (networkId: string, name: string) => void,
): LabelResolver {
  const l = log.child({ component: 'labels' });
  const sources: RuntimeSource[] = [new CriLabels({ socket: cfg.criSocket, log: l })];
  if (cfg.dockerPlugin) {
    const docker = new DockerLabels({
      target: cfg.dockerApi,
      log: l,
      ...(onDockerNetworkName ? { onNetworkName: onDockerNetworkName } : {}),
    });
    if (onDockerNetworkName) docker.followNetworks();
    sources.push(docker);
  }
  return new LabelResolver({ sources, timeoutMs: cfg.labelTimeoutMs, log: l });
}
