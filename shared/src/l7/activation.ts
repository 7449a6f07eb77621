// The node's half of diverting flows to the proxies (L7 HTTP and DNS): the policy routing rule and
// local table that deliver marked packets (routing.ts), and for the HTTP proxy the host device's
// hairpin program and the netns's socket lookup program (datapath.ts). Set up when the first policy
// that needs a proxy is applied, before the policy engine writes any entry that sends a flow to one
// (PolicyEngineDeps.activateProxies): until then, packets pay for neither. A node's first routing rule
// makes the kernel take every route lookup through the rules from then on (and unmerges its local and
// main tables); the socket lookup program runs for every socket lookup of the netns, each VXLAN
// datagram included. Measured in the cross-node benchmark's profile: route lookups ~15 % and
// sk_lookup ~3 % of what a connection costs Membrane beyond plain VXLAN.
//
// Never taken down once set up: the kernel keeps going through the rules after the last one is
// deleted (fib_has_custom_rules stays set), conntrack entries of proxied flows keep diverting after
// their policy is gone, and a marked packet without the rule would be forwarded to its original
// destination past the proxy. Set up in order, the rule first: a failure throws, and the policy
// change that needed the proxies fails with nothing written.
import type { Datapath } from '../bpf/datapath.ts';
import type { Netlink } from '../netlink/index.ts';
import { attachProxyHairpin, attachProxySteering } from './datapath.ts';
import { ensureProxyRouting } from './routing.ts';

export interface ProxyDatapathDeps {
  host: Netlink;
  hostDevice: string;
  ipv6: boolean;
  datapath: Datapath;
  /** The HTTP proxy runs (--l7-proxy): hairpin and socket lookup too; the DNS proxy needs the rule only. */
  http: boolean;
  log?: { info(o: object, msg: string): void };
}

export class ProxyDatapath {
  private active = false;

  constructor(private readonly d: ProxyDatapathDeps) {}

  get isActive(): boolean {
    return this.active;
  }

  /** Idempotent. Throws when a part cannot be set up (the caller writes no diverting entry then). */
  activate = (): void => {
    if (this.active) return;
    const { host, hostDevice, ipv6, datapath, http } = this.d;
    ensureProxyRouting(host, hostDevice, ipv6);
    if (http) {
      const dev = host.linkByName(hostDevice);
      if (!dev) throw new Error(`host device ${hostDevice} is missing: cannot hairpin flows to the L7 proxy`);
      attachProxyHairpin(datapath, dev);
      attachProxySteering(datapath);
    }
    this.active = true;
    this.d.log?.info({ http }, 'proxy datapath set up (routing rule, socket lookup): a policy needs a proxy');
  };
}
