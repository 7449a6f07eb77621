// The text of the files an installation writes: the wrappers on PATH, the systemd unit and the
// default agent configuration. Pure.
import type { Layout } from './layout.ts';

/**
 * The agent, the CLI and the operator are esbuild bundles run by the system Node: the agent loads
 * koffi (a native module) and etcd3 reads .proto files, both from the node_modules installed next
 * to the bundles, which a single executable cannot embed. The wrapper names Node by its absolute path
 * (a unit's PATH is minimal) and the bundle by its installed path, so the bundle finds the datapath
 * object and the proxy worker next to itself.
 */
export function wrapper(name: string, node: string, bundle: string): string {
  return `#!/bin/sh
# ${name}: installed by Membrane's scripts/install (uninstall: scripts/install --uninstall).
exec '${node}' '${bundle}' "$@"
`;
}

export function agentUnit(l: Layout): string {
  const agent = `${l.binDir}/membrane-agent`;
  const cli = `${l.binDir}/membrane`;
  return `# Installed by Membrane's scripts/install; scripts/install --uninstall removes it.
[Unit]
Description=Membrane node agent (eBPF container networking and network security)
# Pods and containers must find the CNI and Docker front doors serving when their runtime starts
# them: containerd runs membrane-cni for every pod sandbox, dockerd activates the plugin at start.
Before=docker.service containerd.service podman.service kubelet.service
After=local-fs.target systemd-modules-load.service

[Service]
Type=exec
# MEMBRANE_* variables (membrane-agent --help); they win over the config file. MEMBRANE_SOCKET here
# also moves the socket the readiness check below asks.
EnvironmentFile=-${l.envFile}
# The datapath pins its maps on bpffs; systemd mounts it at boot, a container host may not.
ExecStartPre=/bin/sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf'
ExecStart=${agent} --config ${l.configFile}
# Started means serving: units ordered after this one (dockerd, containerd) start once the API answers
# (status -o json, not --brief: a degraded part, such as an L7 worker restarting, is no reason to stop).
ExecStartPost=/bin/sh -c 'for i in $$(seq 240); do ${cli} status -o json >/dev/null 2>&1 && exit 0; sleep 0.5; done; echo "membrane-agent: no answer on its API socket" >&2; exit 1'
TimeoutStartSec=150
Restart=always
RestartSec=2s
# Only the agent stops: the L7 proxy workers keep serving with the policy they have and reconnect to
# the next agent, as the pinned datapath keeps forwarding (a restart cuts no connection).
KillMode=process
LimitMEMLOCK=infinity
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
`;
}

/** /etc/membrane/agent.yaml: the defaults, said; only the Docker plugin is switched on. */
export function defaultConfig(l: Layout): string {
  const at = (p: string) => (l.root ? `${l.root}${p}` : p);
  return `# membrane-agent configuration, read by the membrane-agent unit (--config ${l.configFile}).
# The keys are the flags of \`membrane-agent --help\` in camelCase. Flags, then MEMBRANE_* environment
# variables (${l.envFile}), win over this file. Apply a change with \`systemctl restart membrane-agent\`:
# the datapath keeps forwarding meanwhile.

# Where the agent keeps its state, pins the datapath and serves its API (the CLI and membrane-cni use
# the socket; if you move it, set MEMBRANE_SOCKET in ${l.envFile} so the CLI follows).
stateDir: ${at('/var/lib/membrane')}
# bpffsDir: /sys/fs/bpf/membrane
# socket: ${at('/run/membrane/agent.sock')}
# observerSocket: ${at('/run/membrane/observer.sock')}   # Hubble's observer API (hubble observe --server unix://...)

# The node's device holding every network's gateway address.
# hostDevice: membrane0

# Networks: the "default" one for pods, more as NAME=CIDR[,CIDR6].
# pools:
#   - 10.200.0.0/16
#   - blue=10.201.0.0/24,fd00:201::/64

# The Docker network and IPAM driver: docker network create -d membrane --ipam-driver membrane ...
dockerPlugin: membrane
# dockerSocket: /var/run/docker.sock

# metricsAddress: 127.0.0.1:9962
# policyAuditMode: false
# logLevel: info
`;
}
