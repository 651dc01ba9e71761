/**
 * The registry-instance provider: reads a cloud registry instance's endpoints through the
 * container-registry API and offers them for every domain the instance answers to, the VPC endpoint first
 * when the nodes' VPC is linked to it, then the internet endpoint. Region and VPC default to those of the
 * machine discovery runs on.
 */
import { ShoalError, type Logger } from '@shoal/mesh';
import { crClient, crEndpointFor, instanceEndpoints, type CrClient } from './alibaba/cr.js';
import {
  cached,
  type CredentialProvider,
  ecsRamRole,
  metadataInfo,
  rrsa,
  staticAccessKey,
  stsEndpointFor,
} from './alibaba/credentials.js';
import { isAliyunApiError } from './alibaba/signer.js';
import type { InstanceSettings } from './config.js';
import type { EndpointProvider } from './endpoint-publisher.js';
import type { EndpointTarget } from './endpoints.js';

/** The credentials the configuration asks for; configuration mistakes are thrown here, naming the key. */
export function credentialsFromConfig(config: InstanceSettings, log: Logger): CredentialProvider {
  const method =
    config.credentialsMethod !== 'auto'
      ? config.credentialsMethod
      : config.accessKeyId
        ? 'access-key'
        : config.rrsaRoleArn
          ? 'rrsa'
          : 'ecs-role';
  const timeoutMs = config.instancesTimeout;
  let provider: CredentialProvider;
  if (method === 'access-key') {
    if (!config.accessKeyId || !config.accessKeySecret) {
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        'credentials.accessKeyId and credentials.accessKeySecret are both needed for the access-key method',
      );
    }
    provider = staticAccessKey(config.accessKeyId, config.accessKeySecret);
  } else if (method === 'rrsa') {
    if (!config.rrsaRoleArn || !config.rrsaOidcProviderArn) {
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        'rrsa.roleArn and rrsa.oidcProviderArn are both needed for the rrsa method',
      );
    }
    provider = rrsa({
      tokenFile: config.rrsaTokenFile,
      oidcProviderArn: config.rrsaOidcProviderArn,
      roleArn: config.rrsaRoleArn,
      ...(config.rrsaAssumeRoleArn ? { assumeRoleArn: config.rrsaAssumeRoleArn } : {}),
      durationSeconds: Math.round(config.rrsaSessionDuration / 1000),
      stsEndpoint:
        config.rrsaStsEndpoint.replace(/\/+$/, '') ||
        (config.region ? stsEndpointFor(config.region, true) : 'https://sts.aliyuncs.com'),
      timeoutMs,
    });
  } else {
    provider = ecsRamRole({
      metadataUrl: config.metadataUrl.replace(/\/+$/, ''),
      ...(config.ecsRole ? { roleName: config.ecsRole } : {}),
      timeoutMs,
    });
  }
  return cached(provider, {
    onError: (err) =>
      log.warn(
        { credentials: provider.describe(), err: err.message },
        'could not renew cloud credentials; using the current ones until they expire',
      ),
  });
}

/** Adds what to do to the errors an operator can fix: refused credentials or missing permissions. */
function explain(err: unknown, credentials: CredentialProvider): Error {
  if (isAliyunApiError(err) && !err.retryable) {
    const auth = /AccessKey|Signature|SecurityToken|Forbidden|NoPermission|AuthenticationFail|Unauthorized/i;
    if (auth.test(err.code)) {
      return new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `${err.message} — credentials from ${credentials.describe()} were refused: check credentials.method and ` +
          'its settings, and that the RAM policy allows cr:ListInstanceEndpoint and cr:GetInstanceVpcEndpoint',
        { cause: err },
      );
    }
  }
  return err instanceof Error ? err : new Error(String(err));
}

export interface InstanceProviderOptions {
  config: InstanceSettings;
  credentials: CredentialProvider;
  log: Logger;
}

/** One provider per configured instance, sharing credentials and the region and VPC worked out once. */
export function instanceProviders(options: InstanceProviderOptions): EndpointProvider[] {
  const { config, credentials, log } = options;
  let placement: Promise<{ client: CrClient; region: string; vpcId: string | undefined }> | undefined;

  async function place() {
    let region = config.region;
    let vpcId: string | undefined = config.vpcId || undefined;
    if (!region || !vpcId) {
      try {
        const here = await metadataInfo({
          metadataUrl: config.metadataUrl.replace(/\/+$/, ''),
          timeoutMs: config.instancesTimeout,
        });
        region ||= here.region;
        vpcId ??= here.vpcId || undefined;
      } catch (err) {
        if (!region) {
          throw new ShoalError(
            'SHOAL_ERR_CONFIG',
            `region is not set and the instance metadata service could not tell it (${
              err instanceof Error ? err.message : String(err)
            }): set region (and vpcId)`,
          );
        }
        log.warn(
          { err: err instanceof Error ? err.message : String(err) },
          'no VPC ID from instance metadata',
        );
      }
    }
    const endpoint = config.instancesApi.replace(/\/+$/, '') || crEndpointFor(region);
    const client = crClient({ region, endpoint, credentials, timeoutMs: config.instancesTimeout });
    log.info(
      { region, vpcId, api: endpoint, credentials: credentials.describe() },
      'reading registry instances',
    );
    return { client, region, vpcId };
  }

  return config.instances.map((instanceId) => ({
    name: `instance ${instanceId}`,
    refreshMs: config.instancesRefresh,
    async fetch(): Promise<EndpointTarget[]> {
      // A failed start (no region yet) is tried again at the next refresh.
      placement ??= place().catch((err: unknown) => {
        placement = undefined;
        throw err;
      });
      const { client, vpcId } = await placement;
      let found;
      try {
        found = await instanceEndpoints(client, instanceId, vpcId === undefined ? {} : { vpcId });
      } catch (err) {
        throw explain(err, credentials);
      }
      if (found.notes.length)
        log.info({ instance: instanceId, notes: found.notes }, 'registry instance endpoints');
      // The instance's region is where its API lives, not a limit on who may pull: reachability is what
      // the VPC link decides, so the candidates carry no region.
      const candidates = found.candidates.map(({ url, kind }) => ({ url, kind }));
      return found.registries.map((registry) => ({
        registry,
        source: `instance:${instanceId}`,
        candidates,
      }));
    },
  }));
}
