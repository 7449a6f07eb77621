// netns handles and the setns discipline, against the real kernel (root). Creates one netns of its own.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import {
  currentThreadNetns,
  NetnsError,
  netnsInode,
  openNetns,
  sameNetns,
  threadsOutsideHostNetns,
  warmThreadPool,
  withNetns,
} from '../src/netns/index.ts';

const name = `mbn${randomBytes(4).toString('hex')}`;
const path = `/var/run/netns/${name}`;
const ip = (...a: string[]) => execFileSync('ip', a, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

// The inode of the netns the calling thread is in right now.
const threadNetnsInode = () => fs.statSync('/proc/thread-self/ns/net', { bigint: true }).ino;

ip('netns', 'add', name);
t.teardown(() => {
  try {
    ip('netns', 'del', name);
  } catch {
    // already gone
  }
});

t.test('warmThreadPool starts the pool in the host netns', async (t) => {
  await warmThreadPool();
  t.same(threadsOutsideHostNetns(), [], 'every thread is in the agent netns');
});

t.test('openNetns', async (t) => {
  const ns = openNetns(path);
  t.equal(ns.path, path);
  t.ok(ns.fd >= 0);
  t.notOk(sameNetns(ns, currentThreadNetns()), 'a new netns is not ours');
  const again = openNetns(path);
  t.ok(sameNetns(ns, again), 'same netns through two fds');
  t.equal(netnsInode(ns), netnsInode(again));
  again.close();
  again.close(); // idempotent
  t.equal(again.fd, -1);
  ns.close();

  const self = openNetns('/proc/self/ns/net');
  t.ok(sameNetns(self, currentThreadNetns()), '/proc/self/ns/net is the agent netns');
  self.close();

  const missing = `/var/run/netns/${name}-missing`;
  t.throws(() => openNetns(missing), {
    name: 'NetnsError',
    code: 'netns_not_found',
    message: `network namespace ${missing} does not exist`,
  });
  t.throws(() => openNetns('/etc/hostname'), { code: 'netns_not_found' }, 'a regular file is not a netns');
  t.throws(() => openNetns('/proc/self/ns/mnt'), { code: 'netns_not_found' }, 'a mount namespace is not a netns');
  const e = (() => {
    try {
      openNetns(missing);
    } catch (err) {
      return err;
    }
  })();
  t.ok(e instanceof NetnsError);

  currentThreadNetns().close();
  t.ok(currentThreadNetns().fd >= 0, 'the agent netns handle cannot be closed');
});

t.test('withNetns switches and always switches back', async (t) => {
  const ns = openNetns(path);
  t.teardown(() => ns.close());
  const host = threadNetnsInode();
  const inside = withNetns(ns, () => threadNetnsInode());
  t.equal(inside, netnsInode(ns), 'fn runs inside the netns');
  t.equal(threadNetnsInode(), host, 'back in the host netns');

  // /proc/thread-self/net shows the calling thread's netns: only lo in a fresh one
  const devs = withNetns(ns, () => fs.readFileSync('/proc/thread-self/net/dev', 'utf8'));
  t.same(
    devs
      .split('\n')
      .slice(2)
      .filter(Boolean)
      .map((l) => l.split(':')[0].trim()),
    ['lo'],
    'sees the netns devices',
  );
  t.throws(
    () =>
      withNetns(ns, () => {
        throw new Error('boom');
      }),
    { message: 'boom' },
    'error propagates',
  );
  t.equal(threadNetnsInode(), host, 'restored after a throw');

  // nesting restores the outer netns, not the host
  const nested = withNetns(ns, () => {
    const a = threadNetnsInode();
    const b = withNetns(currentThreadNetns(), () => threadNetnsInode());
    return [a, b, threadNetnsInode()];
  });
  t.same(nested, [netnsInode(ns), host, netnsInode(ns)]);
  t.equal(threadNetnsInode(), host);

  t.throws(() => withNetns(ns, async () => 1), TypeError, 'async fn rejected');
  t.equal(threadNetnsInode(), host);

  const closed = openNetns(path);
  closed.close();
  t.throws(() => withNetns(closed, () => 1), { name: 'NetnsError', code: 'netns_error' }, 'closed handle');
  t.equal(threadNetnsInode(), host);
  t.same(threadsOutsideHostNetns(), []);
});

t.test('a failed switch back aborts the process', async (t) => {
  // In a child: the outer netns handle is closed while inside the inner one, so restoring it must fail.
  const script = `
    import { openNetns, withNetns } from ${JSON.stringify(new URL('../src/netns/index.ts', import.meta.url).pathname)};
    const outer = openNetns(${JSON.stringify(path)});
    const inner = openNetns('/proc/self/ns/net');
    withNetns(outer, () => withNetns(inner, () => outer.close()));
    console.log('survived');
  `;
  const r = spawnSync('bash', ['-c', 'ulimit -c 0; exec node --import tsx --input-type=module -e "$0"', script], {
    encoding: 'utf8',
    cwd: new URL('../..', import.meta.url).pathname,
  });
  t.equal(r.signal, 'SIGABRT', 'aborted');
  t.notMatch(r.stdout, 'survived');
  t.match(r.stderr, `FATAL membrane: cannot switch back from netns /proc/self/ns/net to ${path}`);
});
