// Asking a delegated IPAM plugin which CNI versions it speaks: one failed call is made again, and a
// second failure is an error naming the plugin and why (it was swallowed as "speaks none of our
// versions", which sent a GC looking for the wrong problem). Pure (the exec is injected).
import t from 'tap';
import { type DelegateCall, delegateVersions } from '../src/delegate.ts';
import { CniError } from '../src/errors.ts';

const ANSWER = { stdout: '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' };

function execFailing(times: number, err: unknown) {
  const calls: DelegateCall[] = [];
  const exec = (c: DelegateCall) => {
    calls.push(c);
    if (calls.length <= times) throw err;
    return ANSWER;
  };
  return { calls, exec };
}

t.test('a VERSION call that fails once is made again', async (t) => {
  const { calls, exec } = execFailing(1, new CniError(999, 'cannot run delegated plugin host-local VERSION', 'spawnSync EAGAIN'));
  t.same(delegateVersions(exec, 'host-local', ['/opt/cni/bin']), ['0.4.0', '1.0.0']);
  t.same(
    calls.map((c) => [c.type, c.verb]),
    [
      ['host-local', 'VERSION'],
      ['host-local', 'VERSION'],
    ],
  );
});

t.test('twice: an error naming the plugin and the cause, with the cause code', async (t) => {
  const { exec } = execFailing(2, new CniError(999, 'cannot run delegated plugin host-local VERSION', 'spawnSync EAGAIN'));
  const e = t.throws(() => delegateVersions(exec, 'host-local', ['/opt/cni/bin'])) as CniError;
  t.match(
    { code: e.code, message: e.message, details: e.details },
    {
      code: 999,
      message: 'cannot ask ipam plugin host-local which versions it speaks',
      details: 'cannot run delegated plugin host-local VERSION: spawnSync EAGAIN',
    },
  );
  const garbled: DelegateCall[] = [];
  const notJson = (c: DelegateCall) => {
    garbled.push(c);
    return { stdout: 'not json' };
  };
  t.match(
    (t.throws(() => delegateVersions(notJson, 'host-local', [])) as CniError).details,
    /JSON/,
    'an answer that is not JSON: the parse error',
  );
  t.equal(garbled.length, 2);
  t.same(
    delegateVersions(() => ({ stdout: '{"cniVersion":"1.0.0"}' }), 'old', []),
    [],
    'an answer without the list: none',
  );
});
