// Which upgrades an allowed request may make: a WebSocket's is passed on (the connection becomes a
// tunnel once the server answers 101), an h2c one never is (over HTTP/2 in that tunnel a client could
// ask for any path): its headers are dropped and the request goes on as an ordinary one. Pure.
import t from 'tap';
import { rewriteHead } from '../src/l7/http/exchange.ts';
import { parseRequestHead } from '../src/l7/http/head.ts';
import { findHeadEnd } from '../src/l7/http/parse.ts';
import { requestSlot } from '../src/l7/http/queue.ts';
import { switchProblem } from '../src/l7/http/switch.ts';

const allow = { decide: () => ({ allowed: true, edits: [] }) };
const deny = { decide: () => ({ allowed: false, edits: [] }) };

function slot(text: string, o = allow) {
  const buf = Buffer.from(text, 'latin1');
  const end = findHeadEnd(buf, 0, buf.length);
  const head = parseRequestHead(buf, 0, end);
  const p = requestSlot(head, o);
  return { p, forwarded: rewriteHead(buf, 0, end, p.x.verdict.edits).toString('latin1') };
}

t.test('a WebSocket upgrade is passed on and switches', async (t) => {
  const { p } = slot(
    'GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n',
  );
  t.equal(p.switching, true);
  t.same(p.x.verdict.edits, [], 'forwarded unchanged');
});

t.test('a 101 is a switch only to what was offered, and a WebSocket one only with the accept of the key', async (t) => {
  const key = 'dGhlIHNhbXBsZSBub25jZQ==';
  const offer = (upgrade: string, withKey = true) =>
    slot(
      `GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\n${withKey ? `Sec-WebSocket-Key: ${key}\r\n` : ''}\r\n`,
    ).p.offer!;
  const ok = 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='; // RFC 6455 1.3's example answer for that key
  const answer = (lines: string) => `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade${lines}`;
  t.equal(
    switchProblem(offer('websocket'), answer(`\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: ${ok}`)),
    undefined,
    'the right accept',
  );
  t.equal(
    switchProblem(offer('WebSocket'), answer(`\r\nupgrade: WEBSOCKET\r\nsec-websocket-accept: ${ok}`)),
    undefined,
    'any case',
  );
  t.match(switchProblem(offer('websocket'), answer('')), /no Upgrade header/, "nginx's return 101");
  t.match(switchProblem(offer('websocket'), answer('\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x')), /Sec-WebSocket-Accept/);
  t.match(
    switchProblem(offer('websocket', false), answer('\r\nUpgrade: websocket')),
    /Sec-WebSocket-Accept/,
    'no key, no WebSocket',
  );
  t.match(switchProblem(offer('websocket'), answer('\r\nUpgrade: tcp')), /to tcp, which the client did not offer/);
  t.equal(
    switchProblem(offer('echo-tunnel', false), answer('\r\nUpgrade: echo-tunnel')),
    undefined,
    'another protocol: named is enough',
  );
});

t.test('an h2c upgrade is dropped: the request goes on as HTTP/1.1', async (t) => {
  for (const upgrade of ['h2c', 'H2C', 'foo, h2c']) {
    const { p, forwarded } = slot(
      `GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: ${upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Keep: 1\r\n\r\n`,
    );
    t.equal(p.switching, false, `Upgrade: ${upgrade}: no switch`);
    t.notMatch(forwarded, /^upgrade:/im, 'no Upgrade header reaches the server');
    t.notMatch(forwarded, /^http2-settings:/im, 'nor HTTP2-Settings');
    t.match(forwarded, /^GET \/public\/x HTTP\/1\.1\r\n[\s\S]*X-Keep: 1\r\n\r\n$/, 'the rest of the request as sent');
  }
  const denied = slot('GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n', deny);
  t.equal(denied.p.switching, false);
  t.ok(denied.p.local, 'a denied one is answered by the proxy as ever');
});
