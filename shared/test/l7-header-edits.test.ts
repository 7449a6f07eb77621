// Header edits (headerMatches mismatch actions, the h2c drop) as the server receives them: every edit
// also drops its header's CGI-style aliases ("X_Role" for "X-Role"), which PHP, WSGI and CGI servers
// read as the same variable, so an alias cannot carry past an edit the value it was for. Pure.
import t from 'tap';
import { rewriteHead } from '../src/l7/http/exchange.ts';
import type { HeaderEdit } from '../src/l7/http/rules.ts';

const rewrite = (head: string, edits: HeaderEdit[]) => {
  const buf = Buffer.from(head, 'latin1');
  return rewriteHead(buf, 0, buf.length, edits).toString('latin1');
};
const HEAD = 'GET / HTTP/1.1\r\nHost: a\r\nX-Role: admin\r\nX_Role: admin\r\nx_ROLE: admin\r\nX-Keep: 1\r\n\r\n';

t.test('REPLACE and DELETE leave no alias', async (t) => {
  t.equal(
    rewrite(HEAD, [{ op: 'replace', name: 'X-Role', value: 'user' }]),
    'GET / HTTP/1.1\r\nHost: a\r\nX-Keep: 1\r\nX-Role: user\r\n\r\n',
  );
  t.equal(rewrite(HEAD, [{ op: 'delete', name: 'x-role' }]), 'GET / HTTP/1.1\r\nHost: a\r\nX-Keep: 1\r\n\r\n');
});

t.test('ADD keeps the header of its own name, drops the aliases', async (t) => {
  t.equal(
    rewrite('GET / HTTP/1.1\r\nHost: a\r\nX_Role: admin\r\n\r\n', [{ op: 'add', name: 'X-Role', value: 'user' }]),
    'GET / HTTP/1.1\r\nHost: a\r\nX-Role: user\r\n\r\n',
  );
  t.equal(
    rewrite('GET / HTTP/1.1\r\nHost: a\r\nX-Role: guest\r\n\r\n', [{ op: 'add', name: 'X-Role', value: 'user' }]),
    'GET / HTTP/1.1\r\nHost: a\r\nX-Role: guest\r\nX-Role: user\r\n\r\n',
    'as before: ADD adds',
  );
});

t.test('names that only look alike stay', async (t) => {
  t.equal(
    rewrite('GET / HTTP/1.1\r\nHost: a\r\nX-Roles: a\r\nXRole: b\r\n\r\n', [{ op: 'delete', name: 'X-Role' }]),
    'GET / HTTP/1.1\r\nHost: a\r\nX-Roles: a\r\nXRole: b\r\n\r\n',
  );
});
