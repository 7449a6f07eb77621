// The endpoint manager's errors (kinds in shared/src/errors.ts). Apart from the manager so that
// code without native dependencies (unit-test fakes, front doors) can throw and test them.
import { MembraneError } from '../errors.ts';

export type EndpointErrorCode =
  | 'bad_request'
  | 'netns_not_found'
  | 'netns_not_allowed'
  | 'network_not_found'
  | 'endpoint_exists'
  | 'endpoint_not_found';

export class EndpointError extends MembraneError<EndpointErrorCode> {
  override readonly name = 'EndpointError';
}
