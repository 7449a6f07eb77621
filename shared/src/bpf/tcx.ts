// tcx attachments (kernel >= 6.6) as links pinned in the agent's bpffs dir. Why tcx and not classic
// tc (clsact + cls_bpf): classic dispatch (tc_run -> tcf_classify -> cls_bpf_classify) costs ~0.9 us a
// connection on native routing (scripts/bench/tcx-swap.ts). Why pinned: a tcx link is detached when
// its last reference goes, so the pin is what lets the datapath outlive the agent as classic filters did.
//
// One pin per (ifindex, direction): `link_tcx_<ifindex>_<direction>`. An ifindex may be reused by a
// later interface, but the kernel detaches a tcx link when its device is unregistered (the link then
// reports ifindex 0), so a pin whose link no longer sits on that ifindex is stale and replaced, never
// reused. Re-attaching a live pin replaces its program in place (bpf_link_update): no moment without
// one. After the link is in place our classic filter (handle 0x4d42) is removed: tcx runs before
// classic tc and our programs return TCX_NEXT only for packets they take no decision on (the node's
// own traffic on the underlay device: bpf/lib/common.h), so during the swap no packet skips
// enforcement.
//
// Place in the chain: a new link goes to the head (BPF_F_BEFORE, no relative object). A tcx chain
// runs in order until a program returns anything but TCX_NEXT, so a program another tool attached
// earlier that returns TCX_PASS (TC_ACT_OK) would end the chain before ours: a pod's traffic would
// leave or arrive unenforced. At the head, the enforcement point decides first, and its verdicts end
// the chain (bpf/lib/common.h: the return codes under tcx).
// What we do not do: take the head back later. bpf_link_update keeps a link where it is, and a root
// tool may insert itself ahead of us afterwards (BPF_F_BEFORE too) or detach us outright: we cannot
// prevent either. Moving back to the head cannot be done without a gap (the kernel refuses the same
// program twice on one hook, so a move is detach + attach: a moment with no enforcement), and two
// tools that each re-take the head would flap. So it is reported instead (tcxHooksBehind): a warning
// at agent start, and the membrane_tcx_hooks_behind_foreign gauge at every scrape.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as bpf from './libbpf.ts';
import { TC_HANDLE, TC_PRIORITY, TCX_LINK_PIN, tcxLinkPinName } from './layout.ts';
import { describeDevice, deviceName } from '../netns/device.ts';

export type TcxDirection = 'ingress' | 'egress';
export interface TcxHook {
  ifindex: number;
  direction: TcxDirection;
}

export function tcxPinPath(pinDir: string, hook: TcxHook): string {
  return path.join(pinDir, tcxLinkPinName(hook.ifindex, hook.direction));
}

function describe(hook: TcxHook): string {
  return `tcx ifindex ${hook.ifindex} ${hook.direction}`;
}

/** A failed call on the hook, rethrown naming the device (name, netns) and the hook, not only the
 *  ifindex: "bpf_link_create tcx ingress hook of mbr1a2b (ifindex 12) in netns …: File exists (EEXIST)".
 *  The device is looked up only then, in the netns the call was made in. Errors of other calls (the
 *  classic filter's, tc.ts, which names the device itself) pass unchanged. */
function named(err: unknown, hook: TcxHook): unknown {
  if (!(err instanceof bpf.BpfError) || err.target !== describe(hook)) return err;
  const e = new bpf.BpfError(err.op, `tcx ${hook.direction} hook of ${describeDevice(hook.ifindex)}`, err.errno, err.log);
  // A kernel without tcx (before 6.6) refuses the attach type with EINVAL: say what is missing.
  if (err.op === 'bpf_link_create' && err.code === 'EINVAL')
    return new Error(
      `${e.message}: the datapath attaches with tcx links, which need Linux >= 6.6 (this kernel is ${os.release()})`,
      {
        cause: e,
      },
    );
  return e;
}

/** The pinned link's fd if it is live on this hook; a stale pin (its device went) is unlinked. */
function openLive(pinDir: string, hook: TcxHook): number | undefined {
  const pin = tcxPinPath(pinDir, hook);
  if (!fs.existsSync(pin)) return undefined;
  const fd = bpf.objGet(pin);
  const info = bpf.tcxLinkInfo(fd, pin);
  const type = hook.direction === 'ingress' ? bpf.BPF_TCX_INGRESS : bpf.BPF_TCX_EGRESS;
  if (info && info.ifindex === hook.ifindex && info.attachType === type) return fd;
  fs.closeSync(fd);
  fs.rmSync(pin, { force: true });
  return undefined;
}

/** progFd on the hook, through the pinned link (created, or its program replaced), then our classic
 *  filter of an earlier version removed. Throws (leaving any classic filter enforcing) on failure. */
export function attachTcx(pinDir: string, hook: TcxHook, progFd: number): void {
  try {
    attachLink(pinDir, hook, progFd);
  } catch (err) {
    throw named(err, hook);
  }
}

function attachLink(pinDir: string, hook: TcxHook, progFd: number): void {
  const live = openLive(pinDir, hook);
  if (live !== undefined) {
    try {
      bpf.linkUpdate(live, progFd, describe(hook));
    } finally {
      fs.closeSync(live);
    }
  } else {
    const type = hook.direction === 'ingress' ? bpf.BPF_TCX_INGRESS : bpf.BPF_TCX_EGRESS;
    const link = bpf.linkCreate(progFd, hook.ifindex, type, describe(hook), bpf.BPF_F_BEFORE); // at the head (above)
    try {
      bpf.objPin(link, tcxPinPath(pinDir, hook));
    } catch (err) {
      bpf.linkDetach(link, describe(hook)); // an unpinned link would vanish with the fd anyway: say so now
      throw err;
    } finally {
      fs.closeSync(link);
    }
  }
  bpf.tcDetach(hook.ifindex, hook.direction === 'ingress' ? bpf.BPF_TC_INGRESS : bpf.BPF_TC_EGRESS, TC_HANDLE, TC_PRIORITY);
}

/** Detaches and unpins our link on the hook; false when there was none (or its device is gone). */
export function detachTcx(pinDir: string, hook: TcxHook): boolean {
  const live = openLive(pinDir, hook);
  if (live === undefined) return false;
  try {
    bpf.linkDetach(live, describe(hook));
  } catch (err) {
    throw named(err, hook);
  } finally {
    fs.closeSync(live);
    fs.rmSync(tcxPinPath(pinDir, hook), { force: true });
  }
  return true;
}

/** Kernel id of the program our link runs on the hook, or undefined when we have none there. */
export function tcxProgramId(pinDir: string, hook: TcxHook): number | undefined {
  const live = openLive(pinDir, hook);
  if (live === undefined) return undefined;
  try {
    return bpf.tcxLinkInfo(live, describe(hook))?.progId;
  } finally {
    fs.closeSync(live);
  }
}

/** Ids of the programs that run ahead of ours on the hook (another tool's, attached at the head after
 *  ours); [] when ours is first, or when we have no link there. */
export function tcxAhead(pinDir: string, hook: TcxHook): number[] {
  const ours = tcxProgramId(pinDir, hook);
  if (ours === undefined) return [];
  const type = hook.direction === 'ingress' ? bpf.BPF_TCX_INGRESS : bpf.BPF_TCX_EGRESS;
  let ids: number[];
  try {
    ids = bpf.tcxProgramIds(hook.ifindex, type, describe(hook));
  } catch {
    return []; // the device went between the two calls: nothing runs there any more
  }
  const at = ids.indexOf(ours);
  return at < 0 ? [] : ids.slice(0, at);
}

/** Our live hooks with another tool's program ahead of ours, and those programs' ids. */
export function tcxHooksBehind(pinDir: string): { hook: TcxHook; ahead: number[] }[] {
  if (!fs.existsSync(pinDir)) return [];
  return listTcxPins(pinDir)
    .map((hook) => ({ hook, ahead: tcxAhead(pinDir, hook) }))
    .filter((h) => h.ahead.length > 0);
}

/** What `membrane status` lists: our hooks with another tool's program ahead of ours, by device. */
export interface TcxHookBehind extends TcxHook {
  /** The device's name in the agent's netns ('' when it went meanwhile). */
  device: string;
  /** The other programs' kernel ids, in the order they run (`bpftool prog show id <id>`). */
  aheadProgramIds: number[];
}

export function tcxHooksBehindByDevice(pinDir: string): TcxHookBehind[] {
  return tcxHooksBehind(pinDir)
    .map(({ hook, ahead }) => ({ device: deviceName(hook.ifindex) ?? '', ...hook, aheadProgramIds: ahead }))
    .sort((a, b) => a.device.localeCompare(b.device) || a.direction.localeCompare(b.direction));
}

/** Logs each of our hooks where another tool's program runs ahead of ours (at agent start; the gauge
 *  membrane_tcx_hooks_behind_foreign follows it after). */
export function warnTcxHooksBehind(pinDir: string, log: { warn(o: object, msg: string): void }): void {
  for (const hook of tcxHooksBehindByDevice(pinDir))
    log.warn(hook, "another tool's tcx program runs ahead of ours: if it passes a packet, our enforcement never sees it");
}

/** Every hook we hold a pin for (live or stale). */
export function listTcxPins(pinDir: string): TcxHook[] {
  const hooks: TcxHook[] = [];
  for (const name of fs.readdirSync(pinDir)) {
    const m = TCX_LINK_PIN.exec(name);
    if (m) hooks.push({ ifindex: Number(m[1]), direction: m[2] as TcxDirection });
  }
  return hooks;
}

/** Unlinks the pins of links whose device went (the kernel detached them); the hooks swept. */
export function sweepStaleTcx(pinDir: string): TcxHook[] {
  return listTcxPins(pinDir).filter((h) => {
    const live = openLive(pinDir, h);
    if (live === undefined) return true;
    fs.closeSync(live);
    return false;
  });
}

/** After an interface was deleted: unlinks its hooks' pins if the kernel detached their links (never
 *  a live link: the ifindex may already be a newer interface's). */
export function releaseDetachedTcx(pinDir: string, ifindex: number): void {
  for (const direction of ['ingress', 'egress'] as const) {
    const live = openLive(pinDir, { ifindex, direction });
    if (live !== undefined) fs.closeSync(live);
  }
}
