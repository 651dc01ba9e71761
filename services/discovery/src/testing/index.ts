// Test support for discovery's own tests and the integration suite; published as
// @shoal/discovery/testing, never imported by service code.
export {
  agentLabels,
  agentSelector,
  daemonSetTolerations,
  makeAgentPod,
  makeNode,
  startFakeKube,
} from './fake-kube.js';
export type { FakeKube, FakeRequest, Resource } from './fake-kube.js';
