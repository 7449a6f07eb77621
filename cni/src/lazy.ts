// Built-in modules only some verbs need, loaded on first use: every plugin start pays for what it
// requires (node:child_process and node:crypto cost ~10 ms each here; VERSION, ADD and DEL need neither).
import type * as ChildProcess from 'node:child_process';

export function childProcess(): typeof ChildProcess {
  return process.getBuiltinModule('node:child_process');
}
