// Where the Docker API is: --docker-socket (or DOCKER_SOCKET, or the config file's dockerSocket) when
// given, else DOCKER_HOST the way every Docker client reads it, else /var/run/docker.sock. Pure.

export interface DockerApiTarget {
  socketPath?: string;
  host?: string;
  port?: number;
}

export const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';

/** Reads a DOCKER_HOST value: unix:///path, tcp://host[:port] (2375 by default), or a bare path.
 *  Throws RangeError naming what is not supported (ssh://, TLS, npipe). */
export function parseDockerHost(value: string): DockerApiTarget {
  const v = value.trim();
  if (v.startsWith('/')) return { socketPath: v };
  const m = /^([a-z]+):\/\/(.*)$/.exec(v);
  if (!m) throw new RangeError(`DOCKER_HOST "${value}" is not unix:///path or tcp://host:port`);
  const [, scheme, rest] = m;
  if (scheme === 'unix') {
    if (!rest.startsWith('/'))
      throw new RangeError(`DOCKER_HOST "${value}": a unix socket needs an absolute path (unix:///run/docker.sock)`);
    return { socketPath: rest };
  }
  if (scheme === 'tcp' || scheme === 'http') {
    const hp = /^\[?([^\]/]+?)\]?(?::(\d+))?\/?$/.exec(rest);
    if (!hp?.[1]) throw new RangeError(`DOCKER_HOST "${value}": expected tcp://host:port`);
    const port = hp[2] ? Number(hp[2]) : 2375;
    if (port < 1 || port > 65535) throw new RangeError(`DOCKER_HOST "${value}": port ${port} is out of range`);
    return { host: hp[1], port };
  }
  throw new RangeError(
    `DOCKER_HOST "${value}": ${scheme}:// is not supported by the agent (use unix:// or tcp://, or --docker-socket)`,
  );
}

/** The agent's Docker API: an explicit socket wins, then DOCKER_HOST, then the default socket. */
export function dockerApiTarget(explicitSocket: string | undefined, env: { DOCKER_HOST?: string }): DockerApiTarget {
  if (explicitSocket) return { socketPath: explicitSocket };
  if (env.DOCKER_HOST) return parseDockerHost(env.DOCKER_HOST);
  return { socketPath: DEFAULT_DOCKER_SOCKET };
}
