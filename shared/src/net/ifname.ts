// Interface names: the kernel's rules (dev_valid_name), which libcni checks CNI_IFNAME against too.

/** IFNAMSIZ minus the terminating NUL. */
export const MAX_IFNAME_BYTES = 15;

/** What is wrong with an interface name, or undefined when the kernel accepts it. */
export function ifNameProblem(name: string): string | undefined {
  if (typeof name !== 'string' || !name) return 'is empty';
  if (Buffer.byteLength(name) > MAX_IFNAME_BYTES) return `is longer than ${MAX_IFNAME_BYTES} bytes`;
  if (name === '.' || name === '..') return 'may not be "." or ".."';
  if (/[/:\s]/.test(name)) return 'may not contain "/", ":" or whitespace';
  // NUL ends the name in the kernel (netlink refuses it); "%" makes it a template ("eth%d": the kernel
  // picks the number), so the interface would not have the name that was asked for.
  if (/[\0%]/.test(name)) return 'may not contain NUL or "%"';
  return undefined;
}

export function validIfName(name: string): boolean {
  return ifNameProblem(name) === undefined;
}
