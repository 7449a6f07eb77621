// l7-upstream-death.test.ts's cases once more on libuv's handles (MEMBRANE_L7_WORKER_IO=libuv,
// proxy/io.ts): the layer a node can fall back to from the epoll loop lets go the same way.
import t from 'tap';

process.env.MEMBRANE_L7_WORKER_IO = 'libuv';
void import('../src/l7/proxy/io.ts').then(({ workerIo }) => {
  t.equal(workerIo.name, 'libuv', 'the workers would run on libuv handles');
  return import('./l7-upstream-death.test.ts');
});
