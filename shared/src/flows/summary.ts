// The one line of text a flow carries in Hubble's Summary field (the hubble CLI prints it in
// parentheses): the L4 detail, a connection's totals, and why policy allowed or dropped it. Pure.
import { DropCode } from './codes.ts';
import { RESERVED } from '../identity/reserved.ts';
import type { Flow, FlowPolicy, Icmp, TcpFlags } from './types.ts';

const FLAG_ORDER: (keyof TcpFlags)[] = ['SYN', 'FIN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR', 'NS'];

export function tcpFlagsText(flags: TcpFlags | undefined): string {
  return FLAG_ORDER.filter((k) => flags?.[k]).join(', ');
}

/** "TCP Flags: SYN, ACK", "UDP", "ICMPv4 type 8/0 id 5". */
export function l4Summary(f: Flow): string {
  const l4 = f.l4 ?? {};
  if (l4.TCP) {
    const fl = tcpFlagsText(l4.TCP.flags);
    return fl ? `TCP Flags: ${fl}` : 'TCP';
  }
  if (l4.UDP) return 'UDP';
  if (l4.SCTP) return 'SCTP';
  const icmp = (name: string, i: Icmp) =>
    [name, i.type !== undefined ? `type ${i.type}/${i.code ?? 0}` : '', i.membraneEchoId ? `id ${i.membraneEchoId}` : '']
      .filter(Boolean)
      .join(' ');
  if (l4.ICMPv4) return icmp('ICMPv4', l4.ICMPv4);
  if (l4.ICMPv6) return icmp('ICMPv6', l4.ICMPv6);
  return '';
}

export function bytesText(b: number): string {
  return b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`;
}

export function countersText(f: Flow): string {
  const c = f.membrane?.counters;
  return c ? `${c.packets ?? 0} pkts ${bytesText(c.bytes ?? 0)}` : '';
}

/** The name `membrane policy get` knows it by: "shop/allow-web", or "allow-web" when it is clusterwide
 *  or in the default namespace. */
export function policyFullName(p: FlowPolicy): string {
  return p.namespace && p.namespace !== 'default' ? `${p.namespace}/${p.name}` : p.name;
}

function policyText(p: FlowPolicy, direction: string, action: string): string {
  if (!p.name) return `rule id ${p.membraneRuleId ?? '?'}`;
  return `policy ${policyFullName(p)} (${direction} ${action} rule ${p.membraneRuleIndex ?? '?'})`;
}

const isPolicyDrop = (f: Flow) => f.dropReason === DropCode.POLICY_DENIED || f.dropReason === DropCode.POLICY_DENY;

/** Why policy let it through or stopped it; '' when policy had no say. */
export function verdictReason(f: Flow): string {
  const denied = [
    ...(f.ingressDeniedBy ?? []).map((p) => policyText(p, 'ingress', 'deny')),
    ...(f.egressDeniedBy ?? []).map((p) => policyText(p, 'egress', 'deny')),
  ];
  const allowed = [
    ...(f.ingressAllowedBy ?? []).map((p) => policyText(p, 'ingress', 'allow')),
    ...(f.egressAllowedBy ?? []).map((p) => policyText(p, 'egress', 'allow')),
  ];
  if (f.verdict === 'DROPPED' || f.verdict === 'AUDIT') {
    const would = f.verdict === 'AUDIT' ? 'audit mode, would be ' : '';
    if (denied.length) return `${would}denied by ${denied.join(', ')}`;
    // An audited flow is a would-be policy drop: no deny rule named means default deny.
    if (isPolicyDrop(f) || f.verdict === 'AUDIT') {
      const dir = f.trafficDirection === 'EGRESS' ? 'egress' : 'ingress';
      // The endpoint whose policy decided: the sender for egress, the receiver for ingress.
      const own = f.trafficDirection === 'EGRESS' ? f.source : f.destination;
      if (own?.identity === RESERVED.init) {
        return `${would}denied by the init policy (the endpoint's labels are not known yet: identity init is closed while any policy exists)`;
      }
      return `${would}denied by default deny (the endpoint's ${dir} is selected by a policy and no rule allows this peer)`;
    }
    return '';
  }
  return allowed.length ? `allowed by ${allowed.join(', ')}` : '';
}

export function summaryOf(f: Flow): string {
  return [l4Summary(f), countersText(f), verdictReason(f)].filter(Boolean).join('; ');
}
