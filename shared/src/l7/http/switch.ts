// Protocol switches an allowed request may make. Once the proxy takes a 101 for a switch, the
// connection is a byte tunnel its rules no longer see, so a switch is taken only when it is one:
// - an Upgrade to h2c is never passed on: over HTTP/2 in the tunnel a client could ask for any path
//   (nghttpx takes it); its headers are dropped and the request goes on as HTTP/1.1, as Envoy does;
// - a 101 must name, in its Upgrade header, protocols the client offered (RFC 9110 7.8), and a
//   WebSocket one must carry the Sec-WebSocket-Accept of the client's key (RFC 6455 4.2.2): a server
//   that answers 101 without switching (nginx's "return 101", an httpbin's /status/101) goes on
//   speaking HTTP, and the tunnel would carry the client's next requests past every rule.
// Pure.
import crypto from 'node:crypto';
import type { RequestHead } from './parse.ts';
import { type HeaderEdit, headerValue } from './rules.ts';

/** What an upgrade request offered, for checking the 101 that answers it. */
export interface SwitchOffer {
  /** The Upgrade header's protocols, lower-cased. */
  protocols: string[];
  /** The Sec-WebSocket-Accept a WebSocket switch must carry (none without a Sec-WebSocket-Key). */
  accept: string | undefined;
}

export const DROP_H2C: HeaderEdit[] = [
  { op: 'delete', name: 'upgrade' },
  { op: 'delete', name: 'http2-settings' },
];

const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

function tokens(v: string | undefined): string[] {
  return v === undefined
    ? []
    : v
        .split(',')
        .map((p) => p.trim().toLowerCase())
        .filter(Boolean);
}

/** The protocols an upgrade request (head.upgrade) offers and the answer a WebSocket switch owes it. */
export function switchOffer(head: RequestHead): SwitchOffer {
  const key = headerValue(head.names, head.values, 'sec-websocket-key');
  return {
    protocols: tokens(headerValue(head.names, head.values, 'upgrade')),
    accept: key === undefined ? undefined : crypto.createHash('sha1').update(`${key}${WEBSOCKET_GUID}`).digest('base64'),
  };
}

export function offersH2c(offer: SwitchOffer): boolean {
  return offer.protocols.includes('h2c');
}

/** Why the 101 whose head is `head` (its text, CRLF-separated lines) is no switch to what was offered;
 *  undefined when it is one. */
export function switchProblem(offer: SwitchOffer, head: string): string | undefined {
  let upgrade: string | undefined;
  let accept: string | undefined;
  for (const line of head.split('\r\n').slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'upgrade') upgrade = upgrade === undefined ? value : `${upgrade},${value}`;
    else if (name === 'sec-websocket-accept') accept = value;
  }
  const chosen = tokens(upgrade);
  if (!chosen.length) return 'a 101 with no Upgrade header: no protocol was switched to';
  const other = chosen.find((p) => !offer.protocols.includes(p));
  if (other) return `a 101 to ${other}, which the client did not offer`;
  if (chosen.includes('websocket') && (offer.accept === undefined || accept !== offer.accept))
    return 'a 101 to websocket without the Sec-WebSocket-Accept of the client key';
  return undefined;
}
