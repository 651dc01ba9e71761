/** Discovery options: each key defined once, with its flag, environment variable, default and help. */
import {
  eventsRetentionOptions,
  instanceOption,
  logOptions,
  metricsPortOption,
  natsOptions,
  opt,
  type ConfigOf,
} from '@shoal/mesh';

export const instanceSpec = {
  instances: opt.list(
    'instances',
    [],
    'Registry instance IDs (e.g. cri-xxxxxxxx) whose endpoints are read from the cloud container-registry API (ListInstanceEndpoint, GetInstanceVpcEndpoint) and published for every domain the instance answers to.',
    { pattern: /^[A-Za-z0-9-]{1,64}$/, hint: 'instance ID' },
  ),
  region: opt.string(
    'region',
    '',
    'Region of the registry instances; defaults to the region of the machine discovery runs on (instance metadata). Set it when the cluster is in another region or data centre.',
    { pattern: /^([a-z]{2}-[a-z0-9-]+)?$/, hint: 'region ID, e.g. cn-hangzhou' },
  ),
  vpcId: opt.string(
    'vpcId',
    '',
    "VPC the nodes pull from: the instance's VPC endpoint is used when this VPC is linked to it. Defaults to the VPC of the machine discovery runs on; set it when the cluster is in another region or data centre.",
    { pattern: /^([A-Za-z0-9-]{1,64})?$/, hint: 'VPC ID' },
  ),
  instancesApi: opt.string(
    'instances.api',
    '',
    'Base URL of the container-registry API; defaults to https://cr.<region>.aliyuncs.com.',
    { pattern: /^(|https?:\/\/[^\s/?#@]+\/?)$/, hint: 'http(s)://host[:port] URL' },
  ),
  instancesRefresh: opt.duration(
    'instances.refresh',
    '5m',
    "How often the instances' endpoints are read again. A failed read is retried from 1 s, doubling up to this; the last endpoints read stay published meanwhile.",
    { minMs: 1_000 },
  ),
  instancesTimeout: opt.duration('instances.timeout', '10s', 'Timeout of one cloud API call.', {
    minMs: 100,
  }),
  credentialsMethod: opt.oneOf(
    'credentials.method',
    ['auto', 'access-key', 'ecs-role', 'rrsa'] as const,
    'auto',
    "How discovery gets credentials for the cloud API: an access-key pair, the node's RAM role from instance metadata (ecs-role), or the pod's OIDC token exchanged for a role (rrsa). auto: access-key when credentials.accessKeyId is set, rrsa when rrsa.roleArn is, else ecs-role.",
  ),
  accessKeyId: opt.string('credentials.accessKeyId', '', 'AccessKey ID of a RAM user (access-key method).', {
    secret: true,
  }),
  accessKeySecret: opt.string(
    'credentials.accessKeySecret',
    '',
    'AccessKey secret of that RAM user; pass it by environment from a Secret, never in a file.',
    { secret: true },
  ),
  metadataUrl: opt.string(
    'credentials.metadataUrl',
    'http://100.100.100.200',
    'Instance metadata service, for the ecs-role method and the default region and VPC.',
    { pattern: /^https?:\/\/[^\s/?#@]+\/?$/, hint: 'http(s)://host[:port] URL' },
  ),
  ecsRole: opt.string(
    'credentials.ecsRole',
    '',
    'RAM role name of the node (ecs-role method); read from instance metadata when empty.',
  ),
  rrsaTokenFile: opt.string(
    'rrsa.tokenFile',
    '/var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token',
    "The pod's projected service-account token (rrsa method); read afresh at every exchange, since it rotates.",
  ),
  rrsaOidcProviderArn: opt.string(
    'rrsa.oidcProviderArn',
    '',
    "ARN of the cluster's OIDC provider (rrsa method).",
  ),
  rrsaRoleArn: opt.string(
    'rrsa.roleArn',
    '',
    'ARN of the role the pod assumes with its OIDC token (rrsa method).',
  ),
  rrsaAssumeRoleArn: opt.string(
    'rrsa.assumeRoleArn',
    '',
    "ARN of a further role assumed with the first one's credentials, e.g. in the registry's account (rrsa method).",
  ),
  rrsaSessionDuration: opt.duration(
    'rrsa.sessionDuration',
    '1h',
    'Lifetime of the STS session (rrsa method), 1h to 12h; credentials are renewed 5 minutes before they expire.',
    { minMs: 3_600_000, maxMs: 43_200_000 },
  ),
  rrsaStsEndpoint: opt.string(
    'rrsa.stsEndpoint',
    '',
    'STS API base URL (rrsa method); defaults to https://sts-vpc.<region>.aliyuncs.com.',
    { pattern: /^(|https?:\/\/[^\s/?#@]+\/?)$/, hint: 'http(s)://host[:port] URL' },
  ),
};

export type InstanceSettings = ConfigOf<typeof instanceSpec>;

export const topologySpec = {
  topologySource: opt.oneOf(
    'topology.source',
    ['heartbeats', 'kubernetes'] as const,
    'heartbeats',
    "Where nodes' zone, vSwitch and pool come from: the agents' own heartbeats (bare metal, local), or the Kubernetes API, which also reports nodes without a working agent and why.",
  ),
  kubeconfig: opt.string(
    'kubernetes.kubeconfig',
    '',
    'Kubeconfig file to reach the Kubernetes API with; empty uses the service account of the pod discovery runs in.',
  ),
  zoneLabel: opt.string(
    'kubernetes.zoneLabel',
    'topology.kubernetes.io/zone',
    'Node label holding the zone.',
  ),
  regionLabel: opt.string(
    'kubernetes.regionLabel',
    'topology.kubernetes.io/region',
    'Node label holding the region.',
  ),
  vswitchLabel: opt.string(
    'kubernetes.vswitchLabel',
    'topology.shoal.io/vswitch',
    'Node label holding the vSwitch (subnet); peers on the same vSwitch are preferred.',
  ),
  poolLabel: opt.string(
    'kubernetes.poolLabel',
    'alibabacloud.com/nodepool-id',
    'Node label holding the node pool.',
  ),
  pool: opt.string(
    'kubernetes.pool',
    '',
    'When set, only nodes of this node pool (e.g. an edge node pool) are in the mesh; heartbeats from others are refused.',
  ),
  agentNamespace: opt.string(
    'kubernetes.agentNamespace',
    '',
    'Namespace of the agent pods; empty watches all namespaces.',
  ),
  kubeResync: opt.duration(
    'kubernetes.resync',
    '5m',
    "How often every node's topology is published again and live nodes checked against it, making good a write lost while NATS was away (also done on every reconnect).",
    { minMs: 1_000 },
  ),
  agentSelector: opt.string(
    'kubernetes.agentSelector',
    'app.kubernetes.io/name=shoal,app.kubernetes.io/component=agent',
    'Label selector of the agent pods.',
  ),
};

export type TopologySettings = ConfigOf<typeof topologySpec>;

export const discoverySpec = {
  ...natsOptions,
  ...logOptions,
  ...instanceOption('discovery'),
  ...metricsPortOption(9401),
  ...eventsRetentionOptions,
  nodeTtl: opt.duration(
    'node.ttl',
    '15s',
    'A node that has not sent a heartbeat for this long is removed from the node registry (checked every third of it).',
    { minMs: 300 },
  ),
  registries: opt.list(
    'registries',
    [],
    "Registries to publish as endpoints, each [name=]URL (the name images use defaults to the URL's host), e.g. registry.example.com=https://registry.example.com.",
    { pattern: /^([^\s=/@]+=)?https?:\/\/[^\s/?#@]+\/?$/, hint: '[name=]http(s)://host[:port]' },
  ),
  mirrors: opt.list(
    'mirrors',
    [],
    'Further endpoints of registries listed in registries, tried before the registry itself: name[@zone:Z|@region:R]=URL. A zone mirror is preferred by nodes of that zone; a region endpoint is used only by nodes of that region.',
    { pattern: /^[^@=\s]+(@(zone|region):[^=\s]+)?=https?:\/\/\S+$/, hint: 'name[@zone:Z|@region:R]=URL' },
  ),
  endpointsInterval: opt.duration(
    'endpoints.interval',
    '10s',
    'How often each registry endpoint is health-checked.',
    {
      minMs: 100,
    },
  ),
  ...instanceSpec,
  ...topologySpec,
  endpointsTimeout: opt.duration(
    'endpoints.timeout',
    '5s',
    'How long a registry endpoint may take to answer a health check.',
    {
      minMs: 10,
    },
  ),
};

export type DiscoveryConfig = ConfigOf<typeof discoverySpec>;

/** The part of the configuration discovery itself uses; the command handles NATS, logs and metrics. */
export type DiscoverySettings = Pick<
  DiscoveryConfig,
  'nodeTtl' | 'registries' | 'mirrors' | 'endpointsInterval' | 'endpointsTimeout' | 'kubeResync'
>;
