// The part of the Kubernetes CRI (runtime.v1) the agent reads: a pod sandbox's status and the list of
// sandboxes, with their labels and annotations. A protobufjs JSON descriptor written from the public
// CRI API (api.proto of k8s.io/cri-api): package, service, message names and field numbers are the
// CRI's; fields the agent does not read are left out (a decoder skips them). Field names are
// lowerCamelCase, as the agent's objects use them.
const map = (id: number) => ({ keyType: 'string', type: 'string', id });

export const CRI_PROTO = {
  nested: {
    runtime: {
      nested: {
        v1: {
          nested: {
            RuntimeService: {
              methods: {
                PodSandboxStatus: { requestType: 'PodSandboxStatusRequest', responseType: 'PodSandboxStatusResponse' },
                ListPodSandbox: { requestType: 'ListPodSandboxRequest', responseType: 'ListPodSandboxResponse' },
              },
            },
            PodSandboxMetadata: {
              fields: {
                name: { type: 'string', id: 1 },
                uid: { type: 'string', id: 2 },
                namespace: { type: 'string', id: 3 },
                attempt: { type: 'uint32', id: 4 },
              },
            },
            PodSandboxState: { values: { SANDBOX_READY: 0, SANDBOX_NOTREADY: 1 } },
            PodSandboxStatusRequest: { fields: { podSandboxId: { type: 'string', id: 1 }, verbose: { type: 'bool', id: 2 } } },
            PodSandboxStatus: {
              fields: {
                id: { type: 'string', id: 1 },
                metadata: { type: 'PodSandboxMetadata', id: 2 },
                state: { type: 'PodSandboxState', id: 3 },
                labels: map(7),
                annotations: map(8),
              },
            },
            PodSandboxStatusResponse: { fields: { status: { type: 'PodSandboxStatus', id: 1 } } },
            PodSandboxStateValue: { fields: { state: { type: 'PodSandboxState', id: 1 } } },
            PodSandboxFilter: {
              fields: { id: { type: 'string', id: 1 }, state: { type: 'PodSandboxStateValue', id: 2 }, labelSelector: map(3) },
            },
            ListPodSandboxRequest: { fields: { filter: { type: 'PodSandboxFilter', id: 1 } } },
            PodSandbox: {
              fields: {
                id: { type: 'string', id: 1 },
                metadata: { type: 'PodSandboxMetadata', id: 2 },
                state: { type: 'PodSandboxState', id: 3 },
                labels: map(5),
                annotations: map(6),
              },
            },
            ListPodSandboxResponse: { fields: { items: { rule: 'repeated', type: 'PodSandbox', id: 1 } } },
          },
        },
      },
    },
  },
};
