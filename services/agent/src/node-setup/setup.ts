/**
 * `shoal node-setup`: points the node's container runtime at the agent, or undoes that. It runs once
 * (an init container of the agent's DaemonSet with the node's root mounted, or a pre-delete hook with
 * the uninstall action) and exits 0 whenever the node is left in a safe state, warnings included, so an
 * init container never crash-loops the agent over something only an operator can fix.
 */
import { execFile } from 'node:child_process';
import { posix } from 'node:path';
import { promisify } from 'node:util';
import { envName, flagName, ShoalError } from '@shoal/mesh';
import { parseRegistries, type RegistryTarget } from '../endpoints.js';
import { checkConfigPath, hostsToml, hostsTomlPath } from './containerd.js';
import type { NodeSetupConfig, Runtime } from './config.js';
import { checkRegistriesConf, CRIO_DROP_IN, crioDropIn } from './crio.js';
import { agentAddress, checkDaemonJson, distributedNames, ETC_HOSTS, hostsBlock } from './docker.js';
import { HostFs } from './host-fs.js';
import { type Desired, NodeState, type Reporter, type Verb } from './state.js';

export interface NodeSetupOutput {
  /** One line per action, and the summary. */
  line(text: string): void;
  /** A warning, possibly of several lines (a snippet to add to a file). */
  warn(text: string): void;
}

export type Exec = (cmd: string, args: readonly string[]) => Promise<void>;

export interface NodeSetupResult {
  runtime: Runtime | undefined;
  actions: { verb: Verb; path: string; detail: string | undefined }[];
  warnings: string[];
}

const execFileAsync = promisify(execFile);

const defaultExec: Exec = async (cmd, args) => {
  await execFileAsync(cmd, [...args], { timeout: 120_000 });
};

function configError(key: string, message: string): ShoalError {
  return new ShoalError('SHOAL_ERR_CONFIG', `${flagName(key)} (${envName(key)}): ${message}`);
}

function registriesOf(config: NodeSetupConfig): RegistryTarget[] {
  if (config.registries.length === 0)
    throw configError('registries', 'name at least one registry to pull through the agent');
  let registries: RegistryTarget[];
  try {
    registries = parseRegistries(config.registries);
  } catch (cause) {
    throw configError('registries', `${(cause as Error).message}`);
  }
  const seen = new Set<string>();
  for (const registry of registries) {
    if (seen.has(registry.name)) throw configError('registries', `"${registry.name}" is named twice`);
    seen.add(registry.name);
  }
  return registries;
}

const CONTAINERD_SOCKET = '/run/containerd/containerd.sock';

/** The runtime whose configuration exists under the root, and the path that gave it away. */
export async function detectRuntime(
  fs: HostFs,
  config: NodeSetupConfig,
): Promise<{ runtime: Runtime; evidence: string }> {
  const probes: [Runtime, string][] = [
    ['containerd', config.containerdConfig],
    ['containerd', CONTAINERD_SOCKET],
    ['crio', '/etc/crio'],
    ['crio', '/etc/containers'],
    ['docker', '/etc/docker'],
  ];
  for (const [runtime, path] of probes) if (await fs.exists(path)) return { runtime, evidence: path };
  throw configError(
    'node-setup.runtime',
    `cannot tell the container runtime under ${config.root}: none of ${probes.map(([, p]) => p).join(', ')} exists there; set the runtime (or the root)`,
  );
}

/** The command that makes a runtime re-read its registry configuration, run on the node itself. */
export function restartCommand(runtime: Runtime, root: string): string[] | undefined {
  const command =
    runtime === 'containerd'
      ? ['systemctl', 'restart', 'containerd']
      : runtime === 'crio'
        ? ['systemctl', 'reload', 'crio']
        : undefined;
  if (!command) return undefined;
  // From a container, systemctl has to run in the node's namespaces (PID 1's), which needs hostPID.
  return root === '/' ? command : ['nsenter', '-t', '1', '-m', '-u', '-i', '-n', '-p', '--', ...command];
}

interface Plan {
  desired: Desired[];
  /** Checks and notices once the files are in place: warnings to print, or info lines. */
  after(): Promise<{ warnings: string[]; info: string[] }>;
}

function plan(runtime: Runtime, fs: HostFs, config: NodeSetupConfig, registries: RegistryTarget[]): Plan {
  const mirror = config.mirror.replace(/\/+$/, '');
  switch (runtime) {
    case 'containerd':
      return {
        desired: registries.map((r) => ({
          kind: 'file',
          path: hostsTomlPath(config.certsDir, r),
          content: hostsToml(r, mirror),
        })),
        async after() {
          const check = await checkConfigPath(fs, config.containerdConfig, config.certsDir, registries);
          return { warnings: check.warning ? [check.warning] : [], info: check.info ? [check.info] : [] };
        },
      };
    case 'crio': {
      const dropIn = crioDropIn(registries, mirror);
      return {
        desired: [{ kind: 'file', path: CRIO_DROP_IN, content: dropIn.content }],
        async after() {
          const conf = await checkRegistriesConf(fs);
          return { warnings: [...dropIn.warnings, ...(conf ? [conf] : [])], info: dropIn.info };
        },
      };
    }
    case 'docker': {
      const names = distributedNames(registries, config.distributedSuffix);
      const address = agentAddress(mirror);
      return {
        desired: [{ kind: 'block', path: ETC_HOSTS, content: hostsBlock(names, address) }],
        async after() {
          const check = await checkDaemonJson(fs, names, config.distributedPort);
          return { warnings: check.warning ? [check.warning] : [], info: check.info ? [check.info] : [] };
        },
      };
    }
  }
}

export async function runNodeSetup(
  config: NodeSetupConfig,
  output: NodeSetupOutput,
  exec: Exec = defaultExec,
): Promise<NodeSetupResult> {
  const fs = new HostFs(config.root);
  const result: NodeSetupResult = { runtime: undefined, actions: [], warnings: [] };
  const report: Reporter = {
    action(verb, path, detail) {
      result.actions.push({ verb, path, detail });
      output.line(`${verb.padEnd(9)} ${path}${detail ? ` (${detail})` : ''}`);
    },
    warn(text) {
      result.warnings.push(text);
      output.warn(text);
    },
  };
  const where = config.root === '/' ? '' : ` under ${config.root}`;

  if (config.action === 'install') {
    // Options are checked before anything is touched.
    const registries = registriesOf(config);
    let runtime: Runtime;
    if (config.runtime === 'auto') {
      const detected = await detectRuntime(fs, config);
      runtime = detected.runtime;
      output.line(`node-setup install for ${runtime}${where} (found ${detected.evidence})`);
    } else {
      runtime = config.runtime;
      output.line(`node-setup install for ${runtime}${where}`);
    }
    result.runtime = runtime;
    const steps = plan(runtime, fs, config, registries);
    const state = await NodeState.load(fs, config.stateDir, report);
    const wanted = new Set(steps.desired.map((d) => d.path));
    // What an earlier install wrote and this one no longer wants (another registry list or runtime).
    for (const entry of [...state.manifest.entries]) if (!wanted.has(entry.path)) await state.undo(entry);
    state.manifest.runtime = runtime;
    for (const desired of steps.desired) {
      if (desired.kind === 'file') await state.installFile(desired);
      else await state.installBlock(desired);
    }
    await state.save();
    const after = await steps.after();
    for (const info of after.info) output.line(info);
    for (const warning of after.warnings) report.warn(warning);
    await maybeRestart(config, runtime, result, output, exec);
  } else {
    const state = await NodeState.load(fs, config.stateDir, report);
    result.runtime = state.manifest.runtime;
    output.line(
      `node-setup uninstall${state.manifest.runtime ? ` for ${state.manifest.runtime}` : ''}${where}${
        state.recorded ? '' : ` (no record in ${config.stateDir}: nothing Shoal wrote is known)`
      }`,
    );
    for (const entry of [...state.manifest.entries]) await state.undo(entry);
    const hostDirs = await fs.list(config.certsDir);
    await state.sweep([
      ...hostDirs.map((name) => posix.join(config.certsDir, name, 'hosts.toml')),
      CRIO_DROP_IN,
      ETC_HOSTS,
    ]);
    await state.finishUninstall();
    if (result.runtime) await maybeRestart(config, result.runtime, result, output, exec);
  }

  const count = (verb: Verb) => result.actions.filter((a) => a.verb === verb).length;
  const parts = (['written', 'backed up', 'restored', 'removed', 'kept', 'skipped'] as const)
    .map((verb) => [verb, count(verb)] as const)
    .filter(([, n]) => n > 0)
    .map(([verb, n]) => `${n} ${verb}`);
  const warnings = result.warnings.length;
  output.line(
    `node-setup ${config.action} done: ${parts.length > 0 ? parts.join(', ') : 'nothing to do'}${
      warnings > 0 ? `; ${warnings} warning${warnings === 1 ? '' : 's'} above` : ''
    }`,
  );
  return result;
}

async function maybeRestart(
  config: NodeSetupConfig,
  runtime: Runtime,
  result: NodeSetupResult,
  output: NodeSetupOutput,
  exec: Exec,
): Promise<void> {
  if (!config.restart) return;
  const changed = result.actions.some((a) => a.verb !== 'skipped' && a.verb !== 'kept');
  const command = restartCommand(runtime, config.root);
  if (!command) {
    output.line(`restart   skipped (${runtime} needs none for this change)`);
    return;
  }
  if (!changed) {
    output.line('restart   skipped (nothing changed)');
    return;
  }
  const [cmd, ...args] = command as [string, ...string[]];
  try {
    await exec(cmd, args);
  } catch (cause) {
    const err = cause as Error & { stderr?: string };
    const why = (err.stderr ?? '').trim().split('\n')[0] || err.message;
    throw new ShoalError(
      'SHOAL_ERR_INTERNAL',
      `could not restart ${runtime}: \`${command.join(' ')}\` failed: ${why}. The configuration is in place; restart ${runtime} by hand.`,
      { cause },
    );
  }
  output.line(`restarted ${runtime} (${command.join(' ')})`);
}
