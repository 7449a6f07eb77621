// What bpf/endpoint.o holds, by name: its maps (each pinned as `${pinDir}/${name}`), its programs'
// pin names, and the tc filter identity our attachments use.
import fs from 'node:fs';
import path from 'node:path';
import { removeKnownPins } from './pins.ts';

/** Every map of bpf/endpoint.o, pinned as `${pinDir}/${name}`. Checked against the object on load. */
export const MAP_NAMES = [
  'endpoints_cfg',
  'local_endpoints',
  'ep_counters', // by endpoint id; replaced endpoint_counters (RETIRED_MAP_PINS)
  'ipcache',
  'policy',
  'conntrack',
  'ct_owned',
  'ct_reclaimed',
  'ct_server_ports', // ports that opened flows: conntrack's lookup order only (bpf/lib/ct.h)
  'fragments',
  'events',
  'drop_counters',
  'events_lost',
  'event_bucket',
  'datapath_config',
  'proxy_config',
  'proxy_udp_dst',
  'proxy_tcp_divert',
  'proxy_listeners',
  'tunnel_map',
  'overlay_config', // cluster mode's overlay (shared/src/overlay)
  'dns_answers', // the DNS answer cache (bpf/lib/dns_cache.h, shared/src/dns/answer-cache.ts)
  'dns_answers_scratch',
  'dns_cache_config',
  'dns_cache_hits',
] as const;
export type MapName = (typeof MAP_NAMES)[number];

export const PROGRAM_PINS = {
  from_container: 'prog_from_container',
  to_container: 'prog_to_container',
  from_host_device: 'prog_from_host_device', // the L7 proxy's hairpin (l7/datapath.ts attaches it)
  from_tunnel: 'prog_from_tunnel',
  to_tunnel: 'prog_to_tunnel', // the tunnel device's (routing/device.ts attaches them)
  from_underlay: 'prog_from_underlay', // native routing's receive path (routing/device.ts attaches it)
  proxy_steer: 'prog_proxy_steer', // the L7 proxy's sk_lookup (l7/datapath.ts attaches it)
} as const;

/** Links pinned so an attachment outlives the agent: the L7 proxy's sk_lookup on the agent's netns. */
export const LINK_PINS = { proxy_steer: 'link_proxy_steer' } as const;

/** tcx links (tcx.ts), one per hook: `link_tcx_<ifindex>_<ingress|egress>`. */
export const TCX_LINK_PIN = /^link_tcx_(\d+)_(ingress|egress)$/;
export function tcxLinkPinName(ifindex: number, direction: 'ingress' | 'egress'): string {
  return `link_tcx_${ifindex}_${direction}`;
}

/** Fixed tc filter identity, so attach is an idempotent replace and query/detach find our filter. */
export const TC_HANDLE = 0x4d42; // "MB"
export const TC_PRIORITY = 1;

/** `${pinDir}/${PROGRAM_STAMP_PREFIX}<sha256 of the object>`: an empty directory saying which object the
 *  pinned programs were loaded from, so a restart of the same object reuses them (datapath.ts). */
export const PROGRAM_STAMP_PREFIX = 'prog_stamp_';

export function removeProgramStamps(pinDir: string): void {
  for (const name of fs.readdirSync(pinDir)) {
    if (name.startsWith(PROGRAM_STAMP_PREFIX)) fs.rmdirSync(path.join(pinDir, name));
  }
}

/** Pins of maps an earlier object had and this one has not: an upgrade's load unlinks them once the new
 *  programs are pinned (the old programs still attached keep theirs until replaced). endpoint_counters was
 *  a per-CPU hash by ifindex; ep_counters, an array by endpoint id, replaced it under a new name so the
 *  old pin never conflicts with the new definition. */
export const RETIRED_MAP_PINS = ['endpoint_counters'] as const;

export function removeRetiredPins(pinDir: string): void {
  for (const name of RETIRED_MAP_PINS) fs.rmSync(path.join(pinDir, name), { force: true });
}

/** Unlink our pins and the directory (uninstall, tests); refuses to delete pins it does not know. */
export function removePins(pinDir: string): void {
  if (fs.existsSync(pinDir)) removeProgramStamps(pinDir);
  // Unlinking a tcx link's pin, its last reference, detaches it.
  const tcx = fs.existsSync(pinDir) ? fs.readdirSync(pinDir).filter((n) => TCX_LINK_PIN.test(n)) : [];
  removeKnownPins(pinDir, [
    ...MAP_NAMES,
    ...RETIRED_MAP_PINS,
    ...Object.values(PROGRAM_PINS),
    ...Object.values(LINK_PINS),
    ...tcx,
  ]);
}
