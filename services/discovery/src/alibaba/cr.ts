/**
 * Container Registry Enterprise Edition: which domains an instance's images are referenced by, and which
 * endpoints this node should fetch them from. Answers are checked loosely, only for the fields used here,
 * and turned into camelCase shapes so nothing downstream touches the raw API.
 */
import { ShoalError } from '@shoal/mesh';
import type { CredentialProvider } from './credentials.js';
import { AliyunApiError, LocalErrorCodes, rpcCall } from './signer.js';

export const CR_API_VERSION = '2018-12-01';

export interface EndpointDomain {
  domain: string;
  /** SYSTEM (the instance's own name, with Alibaba's certificate) or USER (a custom domain). */
  type: string;
}

export interface InstanceEndpoint {
  /** internet or vpc. */
  endpointType: string;
  enable: boolean;
  /** RUNNING when usable. */
  status: string;
  domains: EndpointDomain[];
  linkedVpcs: string[];
}

export interface ListInstanceEndpointAnswer {
  requestId: string;
  endpoints: InstanceEndpoint[];
}

export interface VpcLink {
  vpcId: string;
  vswitchId: string;
  ip: string;
  /** RUNNING when usable; CREATING while the link is set up. */
  status: string;
  defaultAccess: boolean;
  /** A problem the registry reports with the link, e.g. PRIVATE_ZONE_CONFLICT_AT_<zone>. */
  issue?: string;
}

export interface GetInstanceVpcEndpointAnswer {
  requestId: string;
  /** The API documents this flag ambiguously (endpoint or access control), so nothing here relies on it. */
  enable: boolean | undefined;
  domains: string[];
  linkedVpcs: VpcLink[];
}

export interface CrClient {
  /** host[:port] of the API endpoint. */
  readonly host: string;
  listInstanceEndpoint(instanceId: string): Promise<ListInstanceEndpointAnswer>;
  getInstanceVpcEndpoint(instanceId: string): Promise<GetInstanceVpcEndpointAnswer>;
}

export interface CrClientOptions {
  region: string;
  /** https://cr.<region>.aliyuncs.com by default. */
  endpoint?: string;
  credentials: CredentialProvider;
  timeoutMs: number;
  fetch?: typeof fetch;
}

export function crEndpointFor(region: string): string {
  return `https://cr.${region}.aliyuncs.com`;
}

/** A field of the answer that is missing or of the wrong type; the path names it (Endpoints[0].Domains). */
class MalformedAnswer extends Error {}

type Json = Record<string, unknown>;

function object(value: unknown, path: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new MalformedAnswer(`${path} is not an object`);
  }
  return value as Json;
}

function string(record: Json, key: string, path: string, fallback?: string): string {
  const value = record[key];
  if (typeof value === 'string') return value;
  if (value === undefined && fallback !== undefined) return fallback;
  throw new MalformedAnswer(`${path}${key} is ${value === undefined ? 'missing' : 'not a string'}`);
}

/** Some Alibaba APIs spell booleans as strings; both are accepted. */
function boolean(record: Json, key: string, path: string, fallback?: boolean): boolean {
  const value = record[key];
  if (typeof value === 'boolean') return value;
  if (value === 'true' || value === 'false') return value === 'true';
  if (value === undefined && fallback !== undefined) return fallback;
  throw new MalformedAnswer(`${path}${key} is ${value === undefined ? 'missing' : 'not a boolean'}`);
}

function array(record: Json, key: string, path: string, required: boolean): unknown[] {
  const value = record[key];
  if (Array.isArray(value)) return value;
  if (value === undefined || value === null) {
    if (!required) return [];
    throw new MalformedAnswer(`${path}${key} is missing`);
  }
  throw new MalformedAnswer(`${path}${key} is not an array`);
}

function parseListInstanceEndpoint(answer: Json): ListInstanceEndpointAnswer {
  const endpoints = array(answer, 'Endpoints', '', true).map((raw, i): InstanceEndpoint => {
    const path = `Endpoints[${i}].`;
    const entry = object(raw, `Endpoints[${i}]`);
    return {
      endpointType: string(entry, 'EndpointType', path),
      enable: boolean(entry, 'Enable', path),
      status: string(entry, 'Status', path, 'UNKNOWN'),
      domains: array(entry, 'Domains', path, false).map((d, j) => {
        const domain = object(d, `${path}Domains[${j}]`);
        return {
          domain: string(domain, 'Domain', `${path}Domains[${j}].`),
          type: string(domain, 'Type', `${path}Domains[${j}].`, 'UNKNOWN'),
        };
      }),
      linkedVpcs: array(entry, 'LinkedVpcs', path, false).map((v, j) =>
        string(object(v, `${path}LinkedVpcs[${j}]`), 'VpcId', `${path}LinkedVpcs[${j}].`),
      ),
    };
  });
  return { requestId: string(answer, 'RequestId', '', ''), endpoints };
}

function parseGetInstanceVpcEndpoint(answer: Json): GetInstanceVpcEndpointAnswer {
  const domains = array(answer, 'Domains', '', false).map((d, i) => {
    if (typeof d !== 'string') throw new MalformedAnswer(`Domains[${i}] is not a string`);
    return d;
  });
  const linkedVpcs = array(answer, 'LinkedVpcs', '', true).map((raw, i): VpcLink => {
    const path = `LinkedVpcs[${i}].`;
    const link = object(raw, `LinkedVpcs[${i}]`);
    const issue = link.Issue;
    return {
      vpcId: string(link, 'VpcId', path),
      vswitchId: string(link, 'VswitchId', path, ''),
      ip: string(link, 'Ip', path, ''),
      status: string(link, 'Status', path),
      defaultAccess: boolean(link, 'DefaultAccess', path, false),
      ...(typeof issue === 'string' && issue !== '' ? { issue } : {}),
    };
  });
  const enable = answer.Enable;
  return {
    requestId: string(answer, 'RequestId', '', ''),
    enable: typeof enable === 'boolean' ? enable : undefined,
    domains,
    linkedVpcs,
  };
}

export function crClient(options: CrClientOptions): CrClient {
  const endpoint = options.endpoint ?? crEndpointFor(options.region);
  const host = new URL(endpoint).host;
  const rpcOptions = { timeoutMs: options.timeoutMs, ...(options.fetch ? { fetch: options.fetch } : {}) };

  const call = async <T>(action: string, instanceId: string, parse: (answer: Json) => T): Promise<T> => {
    const credentials = await options.credentials.get();
    const answer = await rpcCall(
      endpoint,
      action,
      CR_API_VERSION,
      { InstanceId: instanceId, ModuleName: 'Registry' },
      credentials,
      rpcOptions,
    );
    try {
      return parse(answer);
    } catch (err) {
      if (!(err instanceof MalformedAnswer)) throw err;
      const requestId = typeof answer.RequestId === 'string' ? answer.RequestId : undefined;
      throw new AliyunApiError({
        host,
        action,
        code: LocalErrorCodes.malformedAnswer,
        detail: `unexpected answer for instance ${instanceId}: ${err.message}`,
        status: 200,
        ...(requestId === undefined ? {} : { requestId }),
        retryable: false,
      });
    }
  };

  return {
    host,
    listInstanceEndpoint: (instanceId) => call('ListInstanceEndpoint', instanceId, parseListInstanceEndpoint),
    getInstanceVpcEndpoint: (instanceId) =>
      call('GetInstanceVpcEndpoint', instanceId, parseGetInstanceVpcEndpoint),
  };
}

export interface EndpointCandidate {
  /** 'https://' + domain. */
  url: string;
  kind: 'vpc' | 'internet';
  vpc?: string;
  region?: string;
}

export interface InstanceEndpoints {
  instanceId: string;
  /** Every domain images may be referenced by (internet and VPC, SYSTEM and USER). */
  registries: string[];
  /**
   * Candidates in the order to try: the VPC endpoint when the instance's VPC endpoint is linked (RUNNING)
   * to vpcId, then the internet endpoint when enabled and running. SYSTEM domains come before USER ones
   * within a kind, since their certificates never need configuring.
   */
  candidates: EndpointCandidate[];
  /** Why a kind was left out, e.g. 'internet endpoint disabled'. */
  notes: string[];
}

export interface InstanceEndpointsOptions {
  /** The VPC this node runs in; without it the VPC endpoint is not considered. */
  vpcId?: string;
  region?: string;
}

function systemFirst(domains: string[], typeOf: ReadonlyMap<string, string>): string[] {
  const rank = (domain: string): number => (typeOf.get(domain) === 'SYSTEM' ? 0 : 1);
  return [...domains].sort((a, b) => rank(a) - rank(b));
}

/**
 * Works out where a registry instance's images can be fetched from by this node. Any failure of the API
 * calls is passed on: falling back to the internet endpoint when the VPC could not be checked would pull
 * images over paid public bandwidth without anyone having chosen to.
 */
export async function instanceEndpoints(
  client: CrClient,
  instanceId: string,
  options: InstanceEndpointsOptions,
): Promise<InstanceEndpoints> {
  const { vpcId, region } = options;
  const [list, vpcAnswer] = await Promise.all([
    client.listInstanceEndpoint(instanceId),
    vpcId === undefined ? Promise.resolve(undefined) : client.getInstanceVpcEndpoint(instanceId),
  ]);

  const typeOf = new Map<string, string>();
  const registries: string[] = [];
  const remember = (domain: string, type?: string): void => {
    if (type !== undefined && !typeOf.has(domain)) typeOf.set(domain, type);
    if (!registries.includes(domain)) registries.push(domain);
  };
  for (const endpoint of list.endpoints) for (const d of endpoint.domains) remember(d.domain, d.type);
  for (const domain of vpcAnswer?.domains ?? []) remember(domain);

  const candidates: EndpointCandidate[] = [];
  const notes: string[] = [];
  const candidate = (domain: string, kind: 'vpc' | 'internet'): EndpointCandidate => ({
    url: `https://${domain}`,
    kind,
    ...(kind === 'vpc' && vpcId !== undefined ? { vpc: vpcId } : {}),
    ...(region === undefined ? {} : { region }),
  });

  const vpcEntry = list.endpoints.find((e) => e.endpointType === 'vpc');
  if (vpcId === undefined || vpcAnswer === undefined) {
    notes.push('no VPC ID configured or known for this node: VPC endpoints not used');
  } else if (vpcEntry !== undefined && !vpcEntry.enable) {
    notes.push(`VPC endpoint of instance ${instanceId} disabled`);
  } else {
    const link = vpcAnswer.linkedVpcs.find((l) => l.vpcId === vpcId);
    const vpcDomains =
      vpcAnswer.domains.length > 0 ? vpcAnswer.domains : (vpcEntry?.domains.map((d) => d.domain) ?? []);
    if (link === undefined) {
      const linked = vpcAnswer.linkedVpcs.map((l) => l.vpcId);
      notes.push(
        `VPC ${vpcId} is not linked to instance ${instanceId} (linked: ${linked.length > 0 ? linked.join(', ') : 'none'})`,
      );
    } else if (link.status !== 'RUNNING') {
      notes.push(
        `VPC ${vpcId} is linked to instance ${instanceId} but the link is ${link.status}, not RUNNING`,
      );
    } else if (vpcDomains.length === 0) {
      notes.push(`VPC ${vpcId} is linked to instance ${instanceId} but the instance lists no VPC domain`);
    } else {
      if (link.issue !== undefined)
        notes.push(`VPC ${vpcId} link of instance ${instanceId} reports ${link.issue}`);
      for (const domain of systemFirst(vpcDomains, typeOf)) candidates.push(candidate(domain, 'vpc'));
    }
  }

  const internet = list.endpoints.find((e) => e.endpointType === 'internet');
  if (internet === undefined) {
    notes.push(`instance ${instanceId} has no internet endpoint`);
  } else if (!internet.enable) {
    notes.push('internet endpoint disabled');
  } else if (internet.status !== 'RUNNING') {
    notes.push(`internet endpoint is ${internet.status}, not RUNNING`);
  } else if (internet.domains.length === 0) {
    notes.push('internet endpoint lists no domain');
  } else {
    const domains = systemFirst(
      internet.domains.map((d) => d.domain),
      typeOf,
    );
    for (const domain of domains) candidates.push(candidate(domain, 'internet'));
  }

  if (candidates.length === 0) {
    throw new ShoalError(
      'SHOAL_ERR_UPSTREAM',
      `registry instance ${instanceId} has no endpoint this node can use: ${notes.join('; ')}`,
      { details: { instanceId, notes } },
    );
  }
  return { instanceId, registries, candidates, notes };
}
