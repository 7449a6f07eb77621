// Interface names: the kernel's rules (dev_valid_name), which libcni checks CNI_IFNAME against too.

/** IFNAMSIZ minus the terminating NUL. */
export const MAX_IFNAME_BYTES = 15;

/** What is wrong with an interface name, or undefined when the kernel accepts it. */
export function ifNameProblem(name: string): string | undefined {
  if (typeof name !== 'string' || !name) return 'is empty';
  if (Buffer.byteLength(name) > MAX_IFNAME_BYTES) return `is longer than ${MAX_IFNAME_BYTES} bytes`;
  if (name === '.' || name === '..') return 'may not be "." or ".."';
  if (/[/:\s]/.test(name)) return 'may not contain "/", ":" or whitespace';
  return undefined;
}

export function validIfName(name: string): boolean {
  return ifNameProblem(name) === undefined;
}
