// Pod CIDR blocks: a cluster pool cut into equal per-node blocks (--cluster-pool CIDR with
// --node-cidr-mask-size N). Pure: which blocks exist, which are taken, the next free one. The
// operator makes the store the judge (a block is taken by a transaction that creates its key), so
// this only proposes; it never has to be right about other writers.
import { bigIntToIp, ipToBigInt, parseCidr, type Cidr } from '../net/index.ts';

export class PodCidrPool {
  readonly family: 4 | 6;
  private readonly pool: Cidr;
  readonly maskSize: number;
  readonly blocks: bigint;
  private readonly taken = new Map<string, string>(); // block cidr -> node
  private hint = 0n;

  constructor(pool: string, maskSize: number) {
    this.pool = parseCidr(pool);
    this.family = this.pool.family;
    if (!Number.isInteger(maskSize) || maskSize < this.pool.prefix || maskSize > this.pool.bits) {
      throw new RangeError(
        `--node-cidr-mask-size ${maskSize} must be between the pool's prefix length (${this.pool.prefix}) and ${this.pool.bits}`,
      );
    }
    if (this.family === 4 && maskSize > 30)
      throw new RangeError(`--node-cidr-mask-size ${maskSize} leaves no room for pods (at most 30 for IPv4)`);
    this.maskSize = maskSize;
    this.blocks = 1n << BigInt(maskSize - this.pool.prefix);
  }

  get text(): string {
    return `${bigIntToIp(this.pool.base, this.family)}/${this.pool.prefix}`;
  }

  /** Block number n as text ("10.0.3.0/24"). */
  block(n: bigint): string {
    const size = 1n << BigInt(this.pool.bits - this.maskSize);
    return `${bigIntToIp(this.pool.base + n * size, this.family)}/${this.maskSize}`;
  }

  /** Position of a block in the pool, or undefined when `cidr` is not one of its blocks. */
  indexOf(cidr: string): bigint | undefined {
    let c: Cidr;
    try {
      c = parseCidr(cidr);
    } catch {
      return undefined;
    }
    if (c.family !== this.family || c.prefix !== this.maskSize) return undefined;
    if (ipToBigInt(cidr.slice(0, cidr.indexOf('/'))) !== c.base) return undefined; // host bits set: not a block
    const size = 1n << BigInt(this.pool.bits - this.maskSize);
    const off = c.base - this.pool.base;
    if (off < 0n || off % size !== 0n || off / size >= this.blocks) return undefined;
    return off / size;
  }

  contains(cidr: string): boolean {
    return this.indexOf(cidr) !== undefined;
  }

  /** What the store says is taken. */
  markTaken(cidr: string, node: string): void {
    this.taken.set(cidr, node);
  }
  markFree(cidr: string): void {
    this.taken.delete(cidr);
  }
  ownerOf(cidr: string): string | undefined {
    return this.taken.get(cidr);
  }
  get used(): number {
    return this.taken.size;
  }

  /** A free block to try: the requested one when it is a free block of this pool, else the next
   *  free one after the last handed out (freed blocks are reused last). undefined: pool full. */
  propose(requested?: string): string | undefined {
    const want = requested === undefined ? undefined : this.indexOf(requested);
    if (want !== undefined && !this.taken.has(this.block(want))) return this.block(want);
    if (BigInt(this.taken.size) >= this.blocks) return undefined;
    for (let i = 0n; i < this.blocks; i++) {
      const n = (this.hint + i) % this.blocks;
      const b = this.block(n);
      if (!this.taken.has(b)) {
        this.hint = n + 1n;
        return b;
      }
    }
    return undefined;
  }
}
