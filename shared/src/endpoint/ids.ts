// Endpoint ids: small numbers (they key the datapath's per-endpoint maps and flows), unique on the
// node among live endpoints, creates in flight and deleted endpoints not reaped yet.
import { EndpointError } from './errors.ts';

// Below the datapath's MAX_ENDPOINTS (bpf/lib/maps.h, 4096 endpoints_cfg entries): ep_counters is an
// array indexed by endpoint id, sized like endpoints_cfg. The lowest free id is taken, so ids only get
// near this with that many endpoints, more than the datapath can configure anyway.
const MAX_ENDPOINT_ID = 4095;

export class EndpointIds {
  private readonly inUse = new Set<number>();

  /** The lowest free id, taken at once (before the caller's first await). */
  reserve(): number {
    for (let id = 1; id <= MAX_ENDPOINT_ID; id++) {
      if (!this.inUse.has(id)) {
        this.inUse.add(id);
        return id;
      }
    }
    throw new EndpointError('bad_request', `no endpoint id left (${MAX_ENDPOINT_ID} endpoints on this node)`);
  }

  /** An id known to be taken (a restored endpoint, one waiting to be reaped). */
  take(id: number): void {
    this.inUse.add(id);
  }

  release(id: number): void {
    this.inUse.delete(id);
  }
}
