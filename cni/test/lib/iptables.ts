// What portmap leaves in the nat table, and removing exactly that: the top-level CNI-HOSTPORT-* chains it
// creates on first use (and never deletes) go only if this test created them and they are empty.
import { execFileSync } from 'node:child_process';

const TOP_CHAINS = ['CNI-HOSTPORT-DNAT', 'CNI-HOSTPORT-SETMARK', 'CNI-HOSTPORT-MASQ'];
const BINS = ['iptables', 'ip6tables'] as const;

export type NatSnapshot = Record<(typeof BINS)[number], string[]>;

function rules(bin: string): string[] {
  try {
    return execFileSync(bin, ['-w', '-t', 'nat', '-S'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

export function natChains(bin: string): string[] {
  return rules(bin)
    .filter((l) => l.startsWith('-N '))
    .map((l) => l.slice(3));
}

export function snapshotNat(): NatSnapshot {
  return { iptables: natChains('iptables'), ip6tables: natChains('ip6tables') };
}

export function natRulesMentioning(text: string): string[] {
  return BINS.flatMap((b) =>
    rules(b)
      .filter((l) => l.includes(text))
      .map((l) => `${b} ${l}`),
  );
}

/** What portmap puts in its top-level chains itself; anything else means another user of the chain. */
const SKELETON: Record<string, RegExp> = {
  'CNI-HOSTPORT-DNAT': /^$/,
  'CNI-HOSTPORT-SETMARK': /--comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000\/0x2000$/,
  'CNI-HOSTPORT-MASQ': /-m mark --mark 0x2000\/0x2000 -j MASQUERADE$/,
};
const BUILTIN = /^-A (PREROUTING|INPUT|OUTPUT|POSTROUTING) /;

/** Removes the top-level portmap chains (and the jumps to them) that did not exist in `before`, when
 *  nothing but portmap's own skeleton is in them and only built-in chains jump to them. */
export function removePortmapLeftovers(before: NatSnapshot): string[] {
  const removed: string[] = [];
  for (const bin of BINS) {
    for (const chain of TOP_CHAINS) {
      if (before[bin].includes(chain) || !natChains(bin).includes(chain)) continue;
      const all = rules(bin);
      const body = all.filter((l) => l.startsWith(`-A ${chain} `));
      const jumps = all.filter((l) => l.startsWith('-A ') && l.endsWith(`-j ${chain}`));
      if (body.some((l) => !SKELETON[chain].test(l)) || jumps.some((l) => !BUILTIN.test(l))) continue;
      for (const jump of jumps) execFileSync(bin, ['-w', '-t', 'nat', ...splitRule(jump.replace(/^-A /, '-D '))]);
      execFileSync(bin, ['-w', '-t', 'nat', '-F', chain]);
      execFileSync(bin, ['-w', '-t', 'nat', '-X', chain]);
      removed.push(`${bin} ${chain}`);
    }
  }
  return removed;
}

/** iptables -S quotes arguments with spaces ("--comment "dnat name""). */
function splitRule(rule: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|(\S+)/g;
  for (let m = re.exec(rule); m; m = re.exec(rule)) out.push(m[1] ?? m[2]);
  return out;
}
