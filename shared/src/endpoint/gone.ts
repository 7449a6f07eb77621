// Whether an endpoint's network namespace still exists. A netns path that no longer opens as a
// netns (the bind mount removed, the task of /proc/PID/ns/net exited) means the container is gone:
// its veth pair went with the namespace, only our records, addresses and map entries remain.
import { NetnsError, openNetns } from '../netns/index.ts';

/** True only when the path names no netns any more; other errors (EACCES, EMFILE) are not proof. */
export function netnsGone(path: string): boolean {
  try {
    openNetns(path).close();
    return false;
  } catch (e) {
    return e instanceof NetnsError && e.code === 'netns_not_found';
  }
}
