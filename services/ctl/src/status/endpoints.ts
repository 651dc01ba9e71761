/** The registries the mesh knows, as discovery publishes them in the endpoints bucket. */
import type { NatsConnection } from '@nats-io/transport-node';
import { buckets, decode, endpointKeyToRegistry, endpointRecord, type EndpointRecord } from '@shoal/mesh';
import { readBucket } from '../nodes.js';

/** Every registry's endpoint record, ordered by registry name; unreadable keys are named by registry. */
export async function readEndpoints(
  nc: NatsConnection,
): Promise<{ registries: EndpointRecord[]; unreadable: string[] }> {
  const { values, unreadable } = await readBucket(nc, buckets.endpoints, (value, key) =>
    decode(endpointRecord, value, `endpoints of ${endpointKeyToRegistry(key)}`),
  );
  return {
    registries: values.sort((a, b) => a.registry.localeCompare(b.registry)),
    unreadable: unreadable.map((key) => `endpoints ${endpointKeyToRegistry(key)}`),
  };
}
