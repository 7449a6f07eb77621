// Logs a test run wants after it: with MEMBRANE_KEEP_LOGS=DIR set, a test cluster's logs are
// copied out before its cleanup removes them.
import fs from 'node:fs';
import path from 'node:path';

/** With MEMBRANE_KEEP_LOGS=DIR set, a cluster's logs (agents, operators, etcd) are copied to
 *  DIR/<root's name>/ before its root is removed: a flake seen once can be read afterwards. */
export function keepLogs(root: string): void {
  const dest = process.env.MEMBRANE_KEEP_LOGS;
  if (!dest) return;
  try {
    const to = path.join(dest, path.basename(root));
    for (const rel of fs.readdirSync(root, { recursive: true }) as string[]) {
      if (!rel.endsWith('.log')) continue;
      fs.mkdirSync(path.dirname(path.join(to, rel)), { recursive: true });
      fs.copyFileSync(path.join(root, rel), path.join(to, rel));
    }
  } catch (e) {
    console.error(`keeping the logs of ${root} in ${dest}: ${(e as Error).message}`);
  }
}
