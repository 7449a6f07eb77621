// HTTP rule matching with Cilium's semantics, request-target normalization, and the regex guards.
import t from 'tap';
import { compileHttpRule, matchHttp, normalizeTarget, type RequestView } from '../src/l7/http/rules.ts';
import { compilePolicyRegex, translateRe2 } from '../src/l7/http/regex.ts';
import type { HttpRule } from '../src/policy/types.ts';

const rule = (r: Partial<HttpRule>): HttpRule => ({ headers: [], headerMatches: [], ...r });
const view = (method: string, target: string, headers: Record<string, string> = {}, host = 'svc'): RequestView => {
  const n = normalizeTarget(target, host);
  return {
    method,
    path: n.path,
    altPath: n.altPath,
    host: n.host,
    names: Object.keys(headers).map((k) => k.toLowerCase()),
    values: Object.values(headers),
  };
};

t.test('fields are regexes over the whole value; rules are alternatives', async (t) => {
  const rules = [
    compileHttpRule(rule({ method: 'GET', path: '/path1$' })),
    compileHttpRule(rule({ method: 'PUT', path: '/path2$', headers: [{ name: 'X-My-Header', value: 'true' }] })),
  ];
  t.ok(matchHttp(rules, view('GET', '/path1')).allowed);
  t.equal(matchHttp(rules, view('GET', '/path1')).rule, 0);
  t.notOk(matchHttp(rules, view('GET', '/path1/x')).allowed, 'the whole path must match');
  t.notOk(matchHttp(rules, view('GETX', '/path1')).allowed, 'the whole method must match');
  t.notOk(matchHttp(rules, view('PUT', '/path2')).allowed, 'rule 2 needs the header');
  t.notOk(matchHttp(rules, view('PUT', '/path2', { 'X-My-Header': 'false' })).allowed, 'with that exact value');
  t.equal(matchHttp(rules, view('PUT', '/path2', { 'x-my-header': 'true' })).rule, 1, 'header names are case-insensitive');
  t.ok(matchHttp([compileHttpRule(rule({ method: 'GET|HEAD' }))], view('HEAD', '/')).allowed);
  t.ok(matchHttp([compileHttpRule(rule({}))], view('DELETE', '/x')).allowed, 'an empty rule allows everything');
  t.notOk(matchHttp([], view('GET', '/')).allowed, 'no rule: nothing matches');
});

t.test('path includes the query; dot segments are resolved before matching', async (t) => {
  const pub = [compileHttpRule(rule({ path: '/public/.*' }))];
  t.ok(matchHttp(pub, view('GET', '/public/a?x=1')).allowed);
  t.notOk(matchHttp(pub, view('GET', '/public/../private')).allowed, '/public/../private is /private');
  t.notOk(matchHttp(pub, view('GET', '/public/%2e%2e/private')).allowed, 'encoded dots are dots');
  t.ok(
    matchHttp([compileHttpRule(rule({ path: '/public' }))], view('GET', '/%70ublic')).allowed,
    'encoded unreserved characters are decoded',
  );
  t.same(
    normalizeTarget('http://api.example.com:8080/a/./b?q', 'other'),
    { path: '/a/b?q', host: 'api.example.com:8080' },
    'absolute-form: path and authority from the target',
  );
  t.same(normalizeTarget('/a/b/..', 'h'), { path: '/a/', host: 'h' });
  t.same(normalizeTarget('*', 'h'), { path: '*', host: 'h' });
});

t.test('a path lenient servers read otherwise must be allowed as they read it too', async (t) => {
  // What Debian's nginx serves for each (its $uri, measured): "/admin" for the first four.
  const readings: [string, string | undefined][] = [
    ['/public/..%2Fadmin', '/admin'],
    ['/public/%2e%2e%2fadmin', '/admin'],
    ['/public//../admin', '/admin'],
    ['/public%2F..%2Fadmin?x=1', '/admin?x=1'],
    ['/public/..;/admin', '/admin'], // Tomcat's reading
    ['/public/..%5Cadmin', '/admin'], // a Windows server's
    ['/public/..\\admin', '/admin'],
    ['/public/a%2Fb', '/public/a/b'],
    ['/public/a', undefined],
    ['/public/a?q=%2F//;', undefined], // the query is not the path
  ];
  for (const [target, alt] of readings) t.equal(normalizeTarget(target, 'h').altPath, alt, `${target} read leniently as ${alt}`);
  const rules = [compileHttpRule(rule({ method: 'GET', path: '/public/.*' }))];
  for (const target of ['/public/..%2Fadmin', '/public//../admin', '/public/..;/admin', '/public/..%5Cadmin']) {
    const m = matchHttp(rules, view('GET', target));
    t.notOk(m.allowed, `${target}: allowed as written, denied as a lenient server reads it`);
    t.equal(m.readAs, '/admin', 'and the verdict says which reading was denied');
  }
  t.ok(matchHttp(rules, view('GET', '/public/a%2Fb')).allowed, 'an encoded slash inside an allowed prefix: allowed either way');
  t.ok(matchHttp(rules, view('GET', '/public/file;v=2')).allowed, 'a ;parameter under an allowed prefix too');
  const oneSegment = [compileHttpRule(rule({ path: '/items/[^/]+' }))];
  t.notOk(
    matchHttp(oneSegment, view('GET', '/items/a%2Fb')).allowed,
    'a rule for one segment: an encoded slash makes two for nginx, so it is denied (fail closed)',
  );
  t.ok(
    matchHttp([compileHttpRule(rule({ path: '/admin' }))], view('GET', '/public/..%2Fadmin')).allowed === false,
    'and a rule for the lenient reading alone does not allow it either',
  );
});

t.test('host and headers', async (t) => {
  const r = [compileHttpRule(rule({ method: 'POST', host: '^partner-api\\.example$' }))];
  t.ok(matchHttp(r, view('POST', '/', {}, 'partner-api.example')).allowed);
  t.notOk(matchHttp(r, view('POST', '/', {}, 'partner-api.example.attacker.test')).allowed);
  const present = [compileHttpRule(rule({ headers: [{ name: 'X-Token' }] }))];
  t.ok(matchHttp(present, view('GET', '/', { 'X-Token': '' })).allowed, 'a bare name only needs the header present');
  t.notOk(matchHttp(present, view('GET', '/')).allowed);
});

t.test('headerMatches: mismatch actions let the request through and change it', async (t) => {
  const m = (mismatch?: 'LOG' | 'ADD' | 'DELETE' | 'REPLACE', value = 'v1') => [
    compileHttpRule(rule({ headerMatches: [{ name: 'X-Ver', value, ...(mismatch ? { mismatch } : {}) }] })),
  ];
  t.notOk(matchHttp(m(), view('GET', '/', { 'X-Ver': 'v2' })).allowed, 'no action: a mismatch fails the rule');
  t.ok(matchHttp(m(), view('GET', '/', { 'X-Ver': 'v1' })).allowed);
  t.match(matchHttp(m('LOG'), view('GET', '/', { 'X-Ver': 'v2' })), {
    allowed: true,
    edits: [],
    mismatches: [/X-Ver: mismatch \(LOG\)/],
  });
  t.match(matchHttp(m('ADD'), view('GET', '/')), { allowed: true, edits: [{ op: 'add', name: 'X-Ver', value: 'v1' }] });
  t.match(matchHttp(m('DELETE'), view('GET', '/', { 'X-Ver': 'v2' })), {
    allowed: true,
    edits: [{ op: 'delete', name: 'x-ver' }],
  });
  t.match(matchHttp(m('REPLACE'), view('GET', '/', { 'X-Ver': 'v2' })), {
    allowed: true,
    edits: [{ op: 'replace', name: 'X-Ver', value: 'v1' }],
  });
  t.match(matchHttp(m('REPLACE'), view('GET', '/', { 'X-Ver': 'v1' })), { allowed: true, edits: [] }, 'a match changes nothing');
});

t.test('a header rule never matches beside a CGI-style alias of its header', async (t) => {
  const token = [compileHttpRule(rule({ headers: [{ name: 'X-Token', value: 's3cret' }] }))];
  t.ok(matchHttp(token, view('GET', '/', { 'X-Token': 's3cret' })).allowed);
  t.notOk(
    matchHttp(token, view('GET', '/', { 'X-Token': 's3cret', X_Token: 'other' })).allowed,
    'X_Token beside it: a CGI server may read either as HTTP_X_TOKEN',
  );
  t.ok(matchHttp(token, view('GET', '/', { 'X-Token': 's3cret', X_Tokens: 'x' })).allowed, 'another name');
  const m = (mismatch?: 'LOG' | 'DELETE' | 'REPLACE') => [
    compileHttpRule(rule({ headerMatches: [{ name: 'X-Ver', value: 'v1', ...(mismatch ? { mismatch } : {}) }] })),
  ];
  const aliased = { 'X-Ver': 'v1', X_Ver: 'v2' };
  t.notOk(matchHttp(m(), view('GET', '/', aliased)).allowed, 'no action: denied');
  t.match(matchHttp(m('REPLACE'), view('GET', '/', aliased)), {
    allowed: true,
    edits: [{ op: 'replace', name: 'X-Ver', value: 'v1' }],
    mismatches: [/X-Ver: alias present \(REPLACE\)/],
  });
  t.match(
    matchHttp(m('DELETE'), view('GET', '/', { X_Ver: 'v2' })),
    { allowed: true, edits: [{ op: 'delete', name: 'x-ver' }] },
    'DELETE with only the alias there: still an edit, which drops the alias',
  );
});

t.test('regexes: RE2 spellings, and no input can make matching slow', async (t) => {
  t.same(translateRe2('(?i)get'), { source: 'get', flags: 'i' });
  t.ok(compilePolicyRegex('(?i)get').test('GET'));
  t.ok(compilePolicyRegex('[[:digit:]]+').test('123'));
  t.notOk(compilePolicyRegex('[[:digit:]]+').test('12a'));
  t.throws(() => compilePolicyRegex('(a)\\1'), /backreferences or lookaround/);
  t.throws(() => compilePolicyRegex('(?=a)a'), /backreferences or lookaround/);
  t.throws(() => compilePolicyRegex('a(?i)b'), /only supported at the start/);
  t.throws(() => compilePolicyRegex('(unclosed'), /not a valid regular expression/);
  const evil = compilePolicyRegex('(a+)+b');
  const t0 = performance.now();
  t.notOk(evil.test(`${'a'.repeat(40)}!`));
  t.ok(
    performance.now() - t0 < 2000,
    `a catastrophic-backtracking pattern returns quickly (${Math.round(performance.now() - t0)} ms)`,
  );
});
