/** Where discovery finds the Kubernetes API: a kubeconfig file, or the pod's own service account. */
import { KubeConfig } from '@kubernetes/client-node';
import { ShoalError } from '@shoal/mesh';

export function kubeConfigFrom(file: string): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (file) kc.loadFromFile(file);
    else kc.loadFromCluster();
  } catch (cause) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `kubernetes.kubeconfig: cannot load ${file || 'the in-cluster service account'}: ${
        cause instanceof Error ? cause.message : String(cause)
      }`,
      { cause },
    );
  }
  const server = kc.getCurrentCluster()?.server ?? '';
  // Outside a pod the in-cluster loader still "succeeds", with https://undefined:undefined.
  if (!server || server.includes('undefined')) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      file
        ? `kubernetes.kubeconfig: ${file} names no current cluster`
        : 'kubernetes.kubeconfig: not running in a Kubernetes pod (no KUBERNETES_SERVICE_HOST); set kubernetes.kubeconfig',
    );
  }
  if (server.startsWith('http://') && !kc.getCurrentCluster()?.skipTLSVerify) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `kubernetes.kubeconfig: the cluster's server ${server} is plain HTTP, which the client refuses unless the cluster sets insecure-skip-tls-verify: true`,
    );
  }
  return kc;
}
