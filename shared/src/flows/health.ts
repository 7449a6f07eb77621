// The gRPC health service (grpc.health.v1.Health) beside the observer API, as the agent's observer
// and the relay both serve it (`hubble status` asks it): SERVING for the observer service or the
// server as a whole, NOT_FOUND / SERVICE_UNKNOWN for any other name. A watch stays open (the status
// never changes while we serve) until the server closes its followers.
import * as grpc from '@grpc/grpc-js';
import { OBSERVER_SERVICE } from './proto.ts';

type Follower = { end(): void };

/** `followers`: the server's set of open streams, ended when it closes (read at call time). */
export function observerHealth(followers: () => Set<Follower>): grpc.UntypedServiceImplementation {
  return {
    check: (call: grpc.ServerUnaryCall<{ service?: string }, unknown>, cb: grpc.sendUnaryData<{ status: string }>) => {
      const svc = call.request.service ?? '';
      if (svc && svc !== OBSERVER_SERVICE) {
        cb({ code: grpc.status.NOT_FOUND, details: `unknown service "${svc}"` });
        return;
      }
      cb(null, { status: 'SERVING' });
    },
    watch: (call: grpc.ServerWritableStream<{ service?: string }, { status: string }>) => {
      const svc = call.request.service ?? '';
      call.write({ status: !svc || svc === OBSERVER_SERVICE ? 'SERVING' : 'SERVICE_UNKNOWN' });
      const open = followers();
      open.add(call);
      call.on('cancelled', () => open.delete(call));
    },
  };
}
