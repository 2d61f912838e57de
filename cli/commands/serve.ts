import { Option, type Command } from 'commander';

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the pipeline locally: the HTTP API and the base-models watcher over Azurite (started unless --storage is given)')
    .option('--port <port>', 'port on 127.0.0.1', '7071')
    .addOption(new Option('--storage <connection-string>', 'use this storage account instead of starting Azurite'))
    .option('--data-dir <dir>', 'where the started Azurite keeps its data', '.azurite')
    .action(async (o) => {
      const { startServe } = await import('../host/serve.js');
      const handle = await startServe({ port: Number(o.port), storage: o.storage, dataDir: o.dataDir });
      const say = (s: string) => process.stdout.write(s + '\n');
      say(`paramdelta serve: ${handle.url}/api (POST deltas, POST models, GET deltas, GET runs/{id})`);
      say(`dashboard: ${handle.dashboardUrl}`);
      // Only Azurite's public development key is ever printed; a connection string given by the user is not.
      if (handle.azurite) say(`storage (Azurite${handle.azurite.reused ? `, pid ${handle.azurite.pid}, reused from a serve that was stopped without closing it` : `, pid ${handle.azurite.pid}`}): ${handle.connectionString}`);
      if (handle.resumed > 0) say(`resumed ${handle.resumed} unfinished orchestration instance(s)`);
      say('watching base-models for uploads; Ctrl-C stops');
      await new Promise<void>((resolve) => {
        const stop = () => void handle.close().then(resolve);
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });
}
