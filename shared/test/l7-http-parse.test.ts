// The proxy's HTTP/1.1 parser: message heads, framing, chunked bodies, and the requests it refuses
// because two parsers could frame them differently (request smuggling).
import t, { type Test } from 'tap';
import { ChunkedScanner, HttpParseError, findHeadEnd, parseRequestHead, parseResponseHead } from '../src/l7/http/parse.ts';

const req = (text: string) => {
  const b = Buffer.from(text, 'latin1');
  const end = findHeadEnd(b, 0, b.length);
  if (end < 0) throw new Error('incomplete');
  return parseRequestHead(b, 0, end);
};
const res = (text: string, method = 'GET') => {
  const b = Buffer.from(text, 'latin1');
  return parseResponseHead(b, 0, findHeadEnd(b, 0, b.length), method);
};
/** The HttpParseError fn throws (or undefined). */
const caught = (fn: () => unknown): HttpParseError | undefined => {
  try {
    fn();
  } catch (e) {
    if (e instanceof HttpParseError) return e;
    throw e;
  }
  return undefined;
};
const refused = (tt: Test, text: string, status: number, why: RegExp) => {
  const e = caught(() => req(text));
  tt.match(
    { status: e?.status, message: e?.message },
    { status, message: why },
    `${JSON.stringify(text.slice(0, 50))} -> ${status}`,
  );
};

t.test('request heads', async (t) => {
  const h = req('GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nX-My-Header:  true \r\nAccept: */*\r\n\r\n');
  t.match(h, {
    method: 'GET',
    target: '/a/b?c=1',
    minor: 1,
    host: 'example.com:8080',
    body: 'none',
    keepAlive: true,
    upgrade: false,
    expectContinue: false,
  });
  t.same(h.names, ['host', 'x-my-header', 'accept']);
  t.same(h.values, ['example.com:8080', 'true', '*/*'], 'values lose surrounding whitespace only');
  t.match(req('POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n'), { body: 'length', contentLength: 12 });
  t.match(req('POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n'), { body: 'chunked' });
  t.match(
    req('GET / HTTP/1.0\r\n\r\n'),
    { minor: 0, keepAlive: false, host: undefined },
    'HTTP/1.0 needs no Host and closes by default',
  );
  t.match(req('GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n'), { keepAlive: true });
  t.match(req('GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'), { keepAlive: false });
  t.match(req('GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n'), { upgrade: true });
  t.match(req('PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n'), { expectContinue: true });
  t.match(
    req('GET http://u@A.Example:8080/x HTTP/1.1\r\nHost: a.example:8080\r\n\r\n'),
    { target: 'http://u@A.Example:8080/x' },
    "absolute-form: a Host identical to the target's authority (any case, without userinfo)",
  );
  t.match(req('GET http://a.example/x HTTP/1.0\r\n\r\n'), { target: 'http://a.example/x' }, 'HTTP/1.0 without Host');
  for (const host of ['[::1]:8080', '[fe80::1%25eth0]', 'a_b.example:80', '198.18.0.1', 'xn--bcher-kva.example', ''])
    t.match(req(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`), { host }, `Host ${JSON.stringify(host)}`);
  const b = Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n');
  t.equal(findHeadEnd(b, 0, b.length), -1, 'an incomplete head waits for more bytes');
});

t.test('Connection: one token, a list, several lines, any case', async (t) => {
  const get = (conn: string) => req(`GET / HTTP/1.1\r\nHost: a\r\n${conn}\r\n`);
  t.match(get('Connection: CLOSE\r\n'), { keepAlive: false }, 'a token in any case');
  t.match(get('Connection:  close \t\r\n'), { keepAlive: false }, 'around the value: whitespace only');
  t.match(get('Connection: closed\r\n'), { keepAlive: true }, 'a longer token is another token');
  t.match(get('Connection: close, Upgrade\r\n'), { keepAlive: false, upgrade: false }, 'a list (no Upgrade header)');
  t.match(get('Connection: Upgrade ,close\r\nUpgrade: websocket\r\n'), { keepAlive: false, upgrade: true });
  t.match(get('Connection: keep-alive\r\nConnection: close\r\n'), { keepAlive: false }, 'a token on a second line counts');
  t.match(get('Connection: close\r\nConnection: keep-alive\r\n'), { keepAlive: false }, 'and on the first');
  t.match(get('Connection: upgrade\r\nConnection: x\r\nConnection: y\r\nUpgrade: h2c\r\n'), { upgrade: true, keepAlive: true });
  t.match(req('GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n'), { keepAlive: true });
  t.match(req('GET / HTTP/1.0\r\nConnection: x, keep-alive\r\n\r\n'), { keepAlive: true });
  // Only a lone `Connection: close` line may be dropped on the way to a reused upstream.
  t.ok(get('Connection: Close\r\n').closeLine > 0);
  t.equal(get('Connection: close, x\r\n').closeLine, -1);
  t.equal(get('Connection: close\r\nConnection: close\r\n').closeLine, -1);
  t.match(res('HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n'), { keepAlive: false });
  t.match(res('HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n'), { keepAlive: true });
  t.match(res('HTTP/1.1 200 OK\r\nConnection: x,close\r\nContent-Length: 0\r\n\r\n'), { keepAlive: false });
  t.match(res('HTTP/1.1 200 OK\r\nConnection: x\r\nConnection: CLOSE\r\nContent-Length: 0\r\n\r\n'), { keepAlive: false });
  t.match(res('HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n'), { keepAlive: true });
  t.match(res('HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n'), { keepAlive: false });
});

t.test('requests that could be framed two ways are refused', async (t) => {
  refused(
    t,
    'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n',
    400,
    /both Transfer-Encoding and Content-Length/,
  );
  refused(t, 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n', 400, /more than one Content-Length/);
  refused(t, 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n', 400, /more than one Content-Length/);
  refused(t, 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n', 400, /not a number/);
  refused(t, 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n', 400, /not a number/);
  refused(t, 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n', 501, /without a final chunked/);
  refused(
    t,
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n',
    400,
    /more than once/,
  );
  refused(t, 'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n', 400, /HTTP\/1\.0/);
  refused(t, 'GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n', 400, /folding/);
  refused(t, 'GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n', 400, /malformed header line/);
  refused(t, 'GET / HTTP/1.1\r\nHost: a\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n', 400, /bare CR\/LF/);
  refused(t, 'GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n', 400, /bare CR\/LF/);
  refused(t, 'GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n', 400, /control characters/);
  refused(t, 'GET / HTTP/1.1\r\n\r\n', 400, /needs a Host/);
  refused(t, 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400, /more than one Host/);
  refused(t, 'GET  / HTTP/1.1\r\nHost: a\r\n\r\n', 400, /malformed request line/);
  refused(t, 'GET / HTTP/2.0\r\nHost: a\r\n\r\n', 400, /malformed request line/);
  refused(t, 'G<T / HTTP/1.1\r\nHost: a\r\n\r\n', 400, /malformed request line/);
  refused(
    t,
    'GET http://partner.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n',
    400,
    /Host "evil.example" is not the request-target's authority "partner.example"/,
  );
  refused(t, 'GET http://u@a.example:8080/ HTTP/1.1\r\nHost: a.example\r\n\r\n', 400, /authority "a.example:8080"/);
  for (const host of ['evil.test#.partner.example', 'a/b', 'user@a', 'a b', 'a\\b', 'a:8o'])
    refused(t, `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 400, /is not a host and port/);
  refused(t, 'GET /admin#/../public/x HTTP/1.1\r\nHost: a\r\n\r\n', 400, /"#" in the request-target/);
  refused(t, 'GET /public/x?a#b HTTP/1.1\r\nHost: a\r\n\r\n', 400, /"#" in the request-target/);
  t.throws(
    () => findHeadEnd(Buffer.from('GET / HTTP/1.1\nHost: a\n\n'), 0, 24),
    /CRLF/,
    'LF-only heads are refused before they could grow',
  );
  const big = Buffer.from(`GET / HTTP/1.1\r\nHost: a\r\nX: ${'a'.repeat(70_000)}`);
  t.equal(caught(() => findHeadEnd(big, 0, big.length))?.status, 431, 'an endless head is cut at 64 KiB');
});

t.test('response framing follows the request', async (t) => {
  t.match(res('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n'), {
    status: 200,
    body: 'length',
    contentLength: 3,
    keepAlive: true,
  });
  t.match(
    res('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n', 'HEAD'),
    { body: 'none' },
    'HEAD: no body whatever the length says',
  );
  t.match(res('HTTP/1.1 204 No Content\r\n\r\n'), { body: 'none' });
  t.match(res('HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n'), { body: 'none' });
  t.match(res('HTTP/1.1 100 Continue\r\n\r\n'), { status: 100, body: 'none' });
  t.match(res('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'), { body: 'chunked' });
  t.match(res('HTTP/1.1 200 OK\r\n\r\n'), { body: 'close' }, 'no length: until the server closes');
  t.match(res('HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n'), { minor: 0, keepAlive: false });
  t.match(res('HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n'), { status: 200 }, 'an empty reason phrase');
  t.match(res('HTTP/1.1 200 Connection established\r\n\r\n', 'CONNECT'), { body: 'none' });
  t.equal(caught(() => res('HTTP/1.1 2000 OK\r\n\r\n'))?.status, 502, 'a malformed status line is a bad gateway');
  t.equal(caught(() => res('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n'))?.status, 502);
});

t.test('chunked bodies are delimited without being copied', async (t) => {
  const body = Buffer.from('5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\nGET / HTTP/1.1\r\n');
  const s = new ChunkedScanner();
  t.equal(s.scan(body, 0, body.length), body.indexOf('GET'), 'ends right before the next request');
  // Byte by byte gives the same answer.
  const s2 = new ChunkedScanner();
  let end = -1;
  for (let i = 0; i < body.length && end < 0; i++) end = s2.scan(body, i, i + 1);
  t.equal(end, body.indexOf('GET'));
  const bad = (text: string, why: RegExp) =>
    t.match(caught(() => new ChunkedScanner().scan(Buffer.from(text), 0, text.length))?.message, why, JSON.stringify(text));
  bad('5 \r\nhello\r\n0\r\n\r\n', /malformed chunk size/);
  bad('-5\r\nhello\r\n0\r\n\r\n', /malformed chunk size/);
  bad('\r\nhello\r\n', /malformed chunk size/);
  bad('5\r\nhelloX\r\n', /must end with CRLF/);
  bad('5\nhello\r\n', /malformed chunk size/);
  bad('fffffffffffffff\r\n', /too large/);
  const huge = new ChunkedScanner();
  t.equal(huge.scan(Buffer.from('10000000\r\n'), 0, 10), -1, 'a 256 MiB chunk is fine: it is streamed');
});
