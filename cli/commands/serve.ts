import { Option, type Command } from 'commander';

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the pipeline locally: the HTTP API and the base-models watcher over Azurite (started unless --storage is given)')
    .option('--port <port>', 'port on 127.0.0.1', '7071')
    .addOption(new Option('--storage <connection-string>', 'use this storage account instead of starting Azurite'))
    .option('--data-dir <dir>', 'where the started Azurite keeps its data', '.azurite')
    .option('--azurite-ports <ports>', 'ports of the started Azurite: standard (10000-10002 when free, else free ones), free, or BLOB,QUEUE,TABLE', 'standard')
    .action(async (o) => {
      const { startServe } = await import('../host/serve.js');
      const { parseAzuritePorts, portsNote } = await import('../host/azurite.js');
      const azuritePorts = parseAzuritePorts(o.azuritePorts);
      const handle = await startServe({ port: Number(o.port), storage: o.storage, dataDir: o.dataDir, azuritePorts });
      const say = (s: string) => process.stdout.write(s + '\n');
      say(`paramdelta serve: ${handle.url}/api (POST deltas, POST models, GET deltas, GET runs/{id})`);
      say(`dashboard: ${handle.dashboardUrl}`);
      // Only Azurite's public development key is ever printed; a connection string given by the user is not.
      const a = handle.azurite;
      if (a) say(`storage (Azurite, pid ${a.pid}${a.reused ? ', reused from a serve that was stopped without closing it' : ''}, ${portsNote(a, azuritePorts)}): ${handle.connectionString}`);
      if (handle.resumed > 0) say(`resumed ${handle.resumed} unfinished orchestration instance(s)`);
      say('watching base-models for uploads; Ctrl-C stops');
      await new Promise<void>((resolve) => {
        const stop = () => void handle.close().then(resolve);
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });
}
