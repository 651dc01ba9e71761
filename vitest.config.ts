import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// Unit tests import the mesh library from source so they need no build; integration tests run the
// built services as real processes, so `npm test` builds first.
const meshSource = fileURLToPath(new URL('./services/mesh/src/index.ts', import.meta.url));
const meshTesting = fileURLToPath(new URL('./services/mesh/src/testing/index.ts', import.meta.url));

export default defineConfig({
  resolve: {
    alias: [
      { find: /^@shoal\/mesh\/testing$/, replacement: meshTesting },
      { find: /^@shoal\/mesh$/, replacement: meshSource },
    ],
  },
  test: {
    globals: true,
    projects: [
      {
        extends: true,
        test: { name: 'unit', include: ['services/*/test/**/*.test.ts'], testTimeout: 20_000 },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['test/**/*.test.ts'],
          testTimeout: 180_000,
          hookTimeout: 120_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
