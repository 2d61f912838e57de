import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Importing functions/ outside the Functions host makes @azure/functions announce "test mode"; expected.
    onConsoleLog: (log) => !/@azure\/functions" package is in test mode|Failed to detect the Azure Functions runtime/.test(log),
  },
});
