// The open client connections of a proxy worker, as a doubly linked list through the connections
// themselves instead of a Set. One request per connection adds and removes an entry per request, and
// a Set under that churn is rebuilt every few dozen removals; V8 links each replaced table to its
// successor (for live iterators), so a replaced table that had been promoted to the old generation
// is, until the next full collection, a root of every young collection for the chain of tables after
// it and every connection they still name. A worker's young collections then kept all connections
// since the last full one alive (about 1 KB each: 2-3 MB more per collection, 4-20 ms pauses, a full
// collection every 1-2 s, against 0.5-1 ms and none at keep-alive). Here a removed entry's links are
// cleared, so nothing dead points at a live connection.

/** What the list needs of an entry: its two links (undefined: not in a list, or an end). */
export interface Linked<T> {
  prevLink?: T;
  nextLink?: T;
}

export class LinkList<T extends Linked<T>> {
  private head?: T;
  size = 0;

  add(x: T): void {
    x.prevLink = undefined;
    x.nextLink = this.head;
    if (this.head) this.head.prevLink = x;
    this.head = x;
    this.size++;
  }

  /** Removes x (a no-op when it is not in this list). */
  delete(x: T): void {
    const { prevLink: p, nextLink: n } = x;
    if (p) p.nextLink = n;
    else if (this.head === x) this.head = n;
    else return; // not in the list
    if (n) n.prevLink = p;
    x.prevLink = x.nextLink = undefined;
    this.size--;
  }

  /** Every entry; the callback may delete the entry it is given (e.g. by destroying it). */
  forEach(fn: (x: T) => void): void {
    let x = this.head;
    while (x) {
      const next = x.nextLink;
      fn(x);
      x = next;
    }
  }
}
