// Client side of /v1/policy and /v1/identities, over the agent's AgentClient. Imports send the text
// as application/yaml (not JSON: the API's JSON body limit is 1 MiB).
import type { AgentClient } from '../api/client.ts';
import type { ChangeResult, EndpointPolicyView } from './engine.ts';
import type { PolicyIssue } from './parse.ts';
import type { RuleDescription, TraceHttp, TraceResult, TraceSide } from './trace.ts';
import type { PolicyRecord } from './types.ts';
import type { IdentityView } from '../identity/allocator.ts';

export interface PolicySummary {
  name: string;
  kind: string;
  revision: number;
  updatedAt: string;
  specs: number;
  rules: { ingress: number; egress: number };
}

function nsQuery(opts: { namespace?: string }): string {
  return opts.namespace ? `?namespace=${encodeURIComponent(opts.namespace)}` : '';
}

export class PolicyClient {
  constructor(private readonly c: AgentClient) {}

  list(): Promise<{ revision: number; items: PolicySummary[] }> {
    return this.c.request('GET', '/v1/policy');
  }
  get(name: string): Promise<PolicyRecord> {
    return this.c.request('GET', `/v1/policy/get?name=${encodeURIComponent(name)}`);
  }
  status(): Promise<{
    revision: number;
    policies: number;
    auditMode: boolean;
    policyEntries: number;
    ipcachePrefixes: number;
    endpoints: number;
    drops: Record<string, number>;
  }> {
    return this.c.request('GET', '/v1/policy/status');
  }
  /** `namespace`: for documents that name none (membrane policy import -n). */
  import(text: string, opts: { namespace?: string } = {}): Promise<ChangeResult> {
    return this.postText(`/v1/policy${nsQuery(opts)}`, text);
  }
  validate(
    text: string,
    opts: { namespace?: string } = {},
  ): Promise<{ valid: boolean; policies: string[]; issues: PolicyIssue[] }> {
    return this.postText(`/v1/policy/validate${nsQuery(opts)}`, text);
  }
  delete(names: string[] | 'all'): Promise<ChangeResult & { unknown: string[] }> {
    const q = names === 'all' ? 'all=true' : names.map((n) => `name=${encodeURIComponent(n)}`).join('&');
    return this.c.request('DELETE', `/v1/policy?${q}`);
  }
  trace(src: TraceSide, dst: TraceSide, port: string, http?: TraceHttp, dnsQuery?: string): Promise<TraceResult> {
    return this.c.request('POST', '/v1/policy/trace', {
      src,
      dst,
      port,
      ...(http ? { http } : {}),
      ...(dnsQuery ? { dnsQuery } : {}),
    });
  }
  describeRule(ruleId: number): Promise<RuleDescription> {
    return this.c.request('GET', `/v1/policy/rules/${ruleId}`);
  }
  endpoint(containerId: string, ifName: string): Promise<EndpointPolicyView> {
    return this.c.request('GET', `/v1/policy/endpoints/${encodeURIComponent(containerId)}/${encodeURIComponent(ifName)}`);
  }
  setAudit(containerId: string, ifName: string, audit: boolean | null): Promise<{ audit: boolean }> {
    return this.c.request('PUT', `/v1/policy/endpoints/${encodeURIComponent(containerId)}/${encodeURIComponent(ifName)}/audit`, {
      audit,
    });
  }
  async identities(): Promise<(IdentityView & { endpoints: number })[]> {
    return (await this.c.request<{ items: (IdentityView & { endpoints: number })[] }>('GET', '/v1/identities')).items;
  }

  private postText<T>(path: string, text: string): Promise<T> {
    return this.c.request('POST', path, text, { contentType: 'application/yaml', timeoutMs: 120_000 });
  }
}
