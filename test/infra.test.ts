// Holds the deployment (infra/, azure.yaml, Dockerfile) and the local settings to the code. The Bicep
// compiler and Docker do not run where these tests run, so this reads the files as text: small
// regexes over conventionally formatted templates, one helper per thing looked up.
import { describe, it, expect } from 'vitest';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { SETTING_NAMES, readSettings } from '../functions/settings.js';
import { eventGridTriggers, httpRoutes } from '../functions/catalog.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const read = (file: string) => readFileSync(path.join(root, file), 'utf8');

const main = read('infra/main.bicep');
const containerApps = read('infra/modules/containerapps.bicep');
const identityBicep = read('infra/modules/identity.bicep');
const storageBicep = read('infra/modules/storage.bicep');
const subscriptionBicep = read('infra/modules/eventgrid-subscription.bicep');
const hook = read('infra/hooks/postdeploy.sh');
const azureYaml = read('azure.yaml');
const dockerfile = read('Dockerfile');
const dockerignore = read('.dockerignore');
const hostJson = JSON.parse(read('host.json'));
const hostJsonText = read('host.json');
const localValues: Record<string, string> = JSON.parse(read('local.settings.example.json')).Values;
const readme = read('README.md');

const infraFiles = (dir = 'infra'): string[] =>
  readdirSync(path.join(root, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? infraFiles(`${dir}/${e.name}`) : [`${dir}/${e.name}`],
  );
const bicepFiles = infraFiles().filter((f) => f.endsWith('.bicep'));

// ---- Small Bicep text helpers ---------------------------------------------------------------

/** The balanced `{…}` or `[…]` that opens at the first bracket at or after `from`. */
function block(text: string, from: number): string {
  const start = text.slice(from).search(/[{[]/) + from;
  let depth = 0;
  for (let i = start; i < text.length; i++) {
    if (text[i] === '{' || text[i] === '[') depth++;
    else if (text[i] === '}' || text[i] === ']') depth--;
    if (depth === 0) return text.slice(start, i + 1);
  }
  throw new Error(`unbalanced block at ${start}`);
}

/** The block that follows `marker` (e.g. "env: [" or "module storage '"). */
function blockAfter(text: string, marker: string): string {
  const at = text.indexOf(marker);
  if (at < 0) throw new Error(`"${marker}" not found`);
  return block(text, at);
}

/** Keys declared directly inside an object block (not in nested objects). */
function topLevelKeys(obj: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  for (const line of obj.split('\n')) {
    const m = /^\s*'?([\w-]+)'?:/.exec(line);
    if (depth === 1 && m) keys.push(m[1]);
    for (const ch of line.replace(/\/\/.*$/, '')) {
      if (ch === '{' || ch === '[') depth++;
      else if (ch === '}' || ch === ']') depth--;
    }
  }
  return keys;
}

/** The container's app settings: `{ name: '…' value: … }` entries of its `env: [ … ]`, as name -> value text. */
function appSettings(bicep: string): Map<string, string> {
  const env = blockAfter(bicep, 'env: [');
  const settings = new Map<string, string>();
  for (const m of env.matchAll(/name: '([^']+)'\s*\n\s*value: (.+)/g)) settings.set(m[1], m[2].trim());
  return settings;
}

/** `param <name> <type> = '<default>'` -> the default string. */
function paramDefault(bicep: string, name: string): string | undefined {
  return new RegExp(`^param ${name} \\w+ = '([^']*)'`, 'm').exec(bicep)?.[1];
}

/** The `@allowed([...])` values right above `param <name>`. */
function allowedValues(bicep: string, name: string): string[] {
  const m = new RegExp(`@allowed\\(\\[([^\\]]*)\\]\\)\\s*\\nparam ${name} `).exec(bicep);
  if (!m) throw new Error(`no @allowed list on param ${name}`);
  return [...m[1].matchAll(/'([^']+)'/g)].map((v) => v[1]);
}

/** Quoted literal of a setting's value, or undefined if it is an expression. */
const literal = (value: string | undefined) => /^'([^'$]*)'$/.exec(value ?? '')?.[1];

const settings = appSettings(containerApps);
const hostRefs = [...hostJsonText.matchAll(/%([A-Za-z0-9_]+)%/g)].map((m) => m[1]);
const defaults = readSettings({});
const DTS_TYPE = 'AzureFunctionsJobHost__extensions__durableTask__storageProvider__type';
const DTS_CONNECTION_NAME = 'AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionStringName';

// ---- App settings ----------------------------------------------------------------------------

describe('app settings in the template', () => {
  const storageCode = read('lib/storage/azure.ts');
  /** `<conn>__<suffix>` identity settings that lib/storage/azure.ts reads for the connection. */
  const readByStorageCode = (name: string) => {
    const m = /^AzureWebJobsStorage__(\w+)$/.exec(name);
    return !!m && storageCode.includes(`\`\${name}__${m[1]}\``);
  };
  const codeReads = new Set<string>(Object.values(SETTING_NAMES));
  // Host and platform settings the code does not read, each for a documented reason.
  const dtsConnection = literal(settings.get(DTS_CONNECTION_NAME));
  const allowList = (name: string) =>
    name === 'FUNCTIONS_WORKER_RUNTIME' || // the Functions host: which language worker to start
    name === 'APPLICATIONINSIGHTS_CONNECTION_STRING' || // the host's telemetry target
    name === 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING' || // Entra auth for that telemetry
    name.startsWith('AzureFunctionsJobHost__') || // host.json overrides
    name === dtsConnection; // the setting the storageProvider override names

  it('holds every setting the code, host.json and the host need', () => {
    const needed = [
      ...Object.values(SETTING_NAMES),
      ...hostRefs,
      'FUNCTIONS_WORKER_RUNTIME',
      'AzureWebJobsStorage__accountName',
      'AzureWebJobsStorage__credential',
      'AzureWebJobsStorage__clientId',
    ];
    for (const name of needed) expect(settings.has(name), `${name} missing from the app's env`).toBe(true);
    expect(literal(settings.get('FUNCTIONS_WORKER_RUNTIME'))).toBe('node');
  });

  it('holds nothing unused: each setting is read by the code, referenced by host.json, or allow-listed', () => {
    expect(settings.size).toBeGreaterThan(10);
    for (const name of settings.keys()) {
      const used = codeReads.has(name) || readByStorageCode(name) || hostRefs.includes(name) || allowList(name);
      expect(used, `${name} is set but nothing reads it`).toBe(true);
    }
  });

  it('points every host.json override at a section host.json has', () => {
    for (const name of settings.keys()) {
      if (!name.startsWith('AzureFunctionsJobHost__')) continue;
      const [section, ...rest] = name.split('__').slice(1);
      expect(rest.length, name).toBeGreaterThan(0);
      if (section === 'extensions') expect(hostJson.extensions?.[rest[0]], `${name}: host.json has no extensions.${rest[0]}`).toBeDefined();
    }
  });

  it('connects to storage by identity with the one user-assigned identity', () => {
    expect(settings.has('AzureWebJobsStorage')).toBe(false); // no connection-string form
    expect(literal(settings.get('AzureWebJobsStorage__credential'))).toBe('managedidentity');
    expect(settings.get('AzureWebJobsStorage__clientId')).toBe('identityClientId');
    expect(literal(settings.get('PARAMDELTA_STORAGE_CONNECTION'))).toBe(defaults.connection);
    expect(settings.get('APPLICATIONINSIGHTS_AUTHENTICATION_STRING')).toBe("'Authorization=AAD;ClientId=${identityClientId}'");
  });

  it('gives the container settings and sizes the code defaults', () => {
    const containerVar = blockAfter(main, 'var containers = {');
    for (const [key, name] of Object.entries(SETTING_NAMES)) {
      if (!(key in defaults.containers)) continue;
      expect(settings.get(name), name).toBe(`containers.${key}`);
      const param = new RegExp(`^\\s*${key}: (\\w+)$`, 'm').exec(containerVar)?.[1];
      expect(param, `var containers has no ${key}`).toBeDefined();
      expect(paramDefault(main, param!), `${param} default`).toBe(defaults.containers[key as keyof typeof defaults.containers]);
    }
    const templateDefaults = readSettings({
      [SETTING_NAMES.bufferBytes]: paramDefault(main, 'bufferBytes'),
      [SETTING_NAMES.shardSize]: paramDefault(main, 'shardSize'),
      [SETTING_NAMES.hubOwners]: paramDefault(main, 'hubOwners'),
    });
    expect(settings.get(SETTING_NAMES.hubOwners)).toBe('hubOwners');
    expect(templateDefaults).toEqual(defaults);
  });

  it('creates exactly the containers the code uses', () => {
    const passed = blockAfter(blockAfter(main, "module storage 'modules/storage.bicep'"), 'containerNames: [');
    const names = [...passed.matchAll(/^\s*(\w+Container)$/gm)].map((m) => paramDefault(main, m[1]));
    expect(names.sort()).toEqual(Object.values(defaults.containers).sort());
    expect(storageBicep).toMatch(/for containerName in containerNames:/);
  });
});

// ---- Durable backend ---------------------------------------------------------------------------

describe('Durable Task Scheduler', () => {
  it('is selected by app settings only, so host.json stays on Azure Storage for local runs', () => {
    expect(hostJson.extensions.durableTask.storageProvider).toBeUndefined();
    expect(hostJson.extensions.durableTask.hubName).toBe('%PARAMDELTA_TASK_HUB%');
    expect(literal(settings.get(DTS_TYPE))).toBe('azureManaged');
    expect(localValues.AzureWebJobsStorage).toBe('UseDevelopmentStorage=true');
  });

  it('connects with the managed identity through a connection string that holds no secret', () => {
    const name = literal(settings.get(DTS_CONNECTION_NAME));
    expect(name).toBeDefined();
    const value = settings.get(name!) ?? '';
    expect(value).toBe("'Endpoint=${schedulerEndpoint};Authentication=ManagedIdentity;ClientID=${identityClientId}'");
  });

  it('pins an extension bundle that carries the scheduler provider for Node apps (4.32.0 on)', () => {
    // Microsoft Learn, "Quickstart: Configure a Durable Functions app to use Durable Task Scheduler":
    // non-.NET apps need Microsoft.Azure.Functions.ExtensionBundle [4.32.0, 5.0.0).
    expect(hostJson.extensionBundle).toEqual({ id: 'Microsoft.Azure.Functions.ExtensionBundle', version: '[4.32.0, 5.0.0)' });
    expect(readme).toContain('[4.32.0, 5.0.0)');
  });

  it('names the same task hub as local runs', () => {
    expect(settings.get('PARAMDELTA_TASK_HUB')).toBe('taskHubName');
    expect(paramDefault(main, 'taskHubName')).toBe(localValues.PARAMDELTA_TASK_HUB);
  });
});

// ---- Identity and secrets ----------------------------------------------------------------------

describe('identity, roles and secrets', () => {
  const expectedRoles = {
    'Storage Blob Data Owner': 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b',
    'Storage Queue Data Contributor': '974c5e8b-45b9-4653-ba55-5f855dd0fb88',
    'Storage Table Data Contributor': '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3',
    AcrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d',
    'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb',
    'Durable Task Data Contributor': '0ad04412-c4d5-4796-b79c-f76d14c8d402',
  };
  const GUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

  it('grants exactly the listed roles, once each, to the one identity', () => {
    const guids = bicepFiles.flatMap((f) => read(f).match(GUID) ?? []);
    expect(guids.sort()).toEqual(Object.values(expectedRoles).sort());
    const assignments = bicepFiles.flatMap((f) =>
      [...read(f).matchAll(/^resource \w+ 'Microsoft\.Authorization\/roleAssignments@[^']+' = \{/gm)].map((m) => block(read(f), m.index!)),
    );
    expect(assignments).toHaveLength(Object.keys(expectedRoles).length);
    for (const a of assignments) {
      expect(a).toContain('principalId: identity.properties.principalId');
      expect(a).toMatch(/roleDefinitionId: subscriptionResourceId\('Microsoft\.Authorization\/roleDefinitions', roles\.\w+\)/);
    }
    const identities = bicepFiles.flatMap((f) => read(f).match(/'Microsoft\.ManagedIdentity\/userAssignedIdentities@[^']+' = \{/g) ?? []);
    expect(identities).toHaveLength(1);
  });

  it('runs the app and pulls its image as that identity', () => {
    expect(containerApps).toMatch(/type: 'UserAssigned'/);
    expect(blockAfter(containerApps, 'registries: [')).toContain('identity: identityId');
  });

  it('contains no keys: no listKeys, no account keys, no secrets, shared-key access off', () => {
    for (const file of infraFiles()) {
      const text = read(file);
      expect(text, file).not.toMatch(/listKeys\(/);
      expect(text, file).not.toMatch(/AccountKey/i);
      expect(text, file).not.toMatch(/secretRef|sharedKey|adminUserEnabled: true/);
      // "connection string" appears only for Application Insights and the keyless DTS string.
      for (const line of text.split('\n').filter((l) => /connection_?string/i.test(l))) {
        expect(line, `${file}: ${line.trim()}`).toMatch(/insights|DURABLE_TASK_SCHEDULER|storageProvider__connectionStringName/i);
      }
    }
    expect(storageBicep).toMatch(/allowSharedKeyAccess: false/);
    expect(read('infra/modules/monitoring.bicep')).toMatch(/DisableLocalAuth: true/);
  });

  it('never makes the Event Grid system key a setting or an output', () => {
    expect(subscriptionBicep).toMatch(/@secure\(\)\s*\n(@description\([^\n]*\)\s*\n)?param eventGridSystemKey string/);
    for (const file of bicepFiles) {
      for (const line of read(file).split('\n').filter((l) => l.startsWith('output '))) {
        expect(line, file).not.toMatch(/eventGridSystemKey|systemKey|listKeys/i);
      }
    }
    for (const name of settings.keys()) expect(name).not.toMatch(/KEY$/i);
  });
});

// ---- Function registrations ----------------------------------------------------------------------

describe('function registrations', () => {
  const sources = (dir: string): string[] =>
    readdirSync(path.join(root, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? sources(`${dir}/${e.name}`) : e.name.endsWith('.ts') ? [`${dir}/${e.name}`] : [],
    );

  it('all go through functions/app.ts, which the routing table of paramdelta serve reads', () => {
    const direct = /\b(?:app\.(?:http|get|post|put|patch|deleteRequest|eventGrid|generic|timer|storageBlob|storageQueue)|df\.app\.\w+)\(/;
    const offenders = sources('functions').filter((f) => f !== 'functions/app.ts' && direct.test(read(f)));
    expect(offenders).toEqual([]);
    const calls = sources('functions').flatMap((f) => [...read(f).matchAll(/^register\.(\w+)\('(\w+)'/gm)].map((m) => `${m[1]} ${m[2]}`));
    expect(calls.length).toBeGreaterThan(10);
    expect(calls.filter((c) => c.startsWith('http ')).map((c) => c.slice(5)).sort()).toEqual(httpRoutes.map((r) => r.name).sort());
  });
});

// ---- Event Grid ------------------------------------------------------------------------------

describe('Event Grid subscription', () => {
  const triggerSource = read('functions/triggers/baseModelUploaded.ts');

  it('delivers BlobCreated under the base models container to the Event Grid trigger', () => {
    const fn = paramDefault(subscriptionBicep, 'functionName');
    expect(Object.keys(eventGridTriggers)).toContain(fn);
    expect(triggerSource).toContain(`register.eventGrid('${fn}'`);
    expect(subscriptionBicep).toContain(
      "endpointUrl: 'https://${appFqdn}/runtime/webhooks/eventgrid?functionName=${functionName}&code=${eventGridSystemKey}'",
    );
    expect(blockAfter(subscriptionBicep, 'includedEventTypes: [')).toContain("'Microsoft.Storage.BlobCreated'");
    expect(triggerSource).toContain("'Microsoft.Storage.BlobCreated'");
    expect(subscriptionBicep).toContain("subjectBeginsWith: '/blobServices/default/containers/${baseModelsContainer}/'");
    expect(subscriptionBicep).toContain("eventDeliverySchema: 'EventGridSchema'");
  });

  it('gets the base models container the app is configured with', () => {
    expect(main).toMatch(/^output BASE_MODELS_CONTAINER string = baseModelsContainer$/m);
    expect(paramDefault(main, 'baseModelsContainer')).toBe(defaults.containers.baseModels);
    expect(hook).toContain('baseModelsContainer="$BASE_MODELS_CONTAINER"');
  });

  it('is created by the postdeploy hook azure.yaml runs, from values main.bicep outputs', () => {
    expect(azureYaml).toMatch(/postdeploy:\s*\n\s*posix:\s*\n\s*shell: sh\s*\n\s*run: \.\/infra\/hooks\/postdeploy\.sh/);
    expect(hook).toContain('--template-file infra/modules/eventgrid-subscription.bicep');
    expect(existsSync(path.join(root, 'infra/modules/eventgrid-subscription.bicep'))).toBe(true);
    // azd sets AZURE_SUBSCRIPTION_ID itself; everything else the hook needs is a main.bicep output.
    const provided = ['AZURE_SUBSCRIPTION_ID', ...[...main.matchAll(/^output (\w+) /gm)].map((m) => m[1])];
    for (const m of hook.matchAll(/: "\$\{(\w+):\?/g)) expect(provided, `hook needs ${m[1]}`).toContain(m[1]);
    // The key only ever travels through the temp parameters file.
    expect(hook).toMatch(/--parameters "@\$params"/);
    expect(hook).not.toMatch(/echo[^\n]*\$\{?key/);
  });
});

// ---- Worker profile, azd wiring, modules -----------------------------------------------------

describe('azd template', () => {
  it('offers the three worker profiles, Consumption by default, and runs the app on the chosen one', () => {
    const profiles = ['Consumption', 'Consumption-GPU-NC8as-T4', 'Consumption-GPU-NC24-A100'];
    expect(allowedValues(main, 'workerProfile')).toEqual(profiles);
    expect(paramDefault(main, 'workerProfile')).toBe('Consumption');
    expect(allowedValues(containerApps, 'workerProfile')).toEqual(profiles);
    expect(topLevelKeys(blockAfter(containerApps, 'var profiles = {')).sort()).toEqual([...profiles].sort());
    expect(containerApps).toMatch(/workloadProfileName: profile\.name/);
    expect(containerApps).toMatch(/workloadProfileType: workerProfile/);
    expect(blockAfter(main, "module app 'modules/containerapps.bicep'")).toMatch(/workerProfile: workerProfile/);
  });

  it('evaluates re-posted models on CUDA on a GPU profile and on the CPU otherwise; the default gate is empty', () => {
    expect(settings.get(SETTING_NAMES.evalProvider)).toBe("workerProfile == 'Consumption' ? 'cpu' : 'cuda'");
    expect(settings.get(SETTING_NAMES.gate)).toBe('gate');
    expect(paramDefault(main, 'gate')).toBe('');
    expect(readSettings({ [SETTING_NAMES.gate]: paramDefault(main, 'gate') }).gate).toEqual(defaults.gate);
    // The image skips onnxruntime's CUDA parts unless built for a GPU profile.
    expect(dockerfile).toMatch(/^ARG ORT_INSTALL=skip$/m);
    expect(dockerfile).toMatch(/^ENV ONNXRUNTIME_NODE_INSTALL=\$\{ORT_INSTALL\}$/m);
  });

  it('is an azd project: env name, location, tags, parameters, one containerapp service from the Dockerfile', () => {
    expect(main).toMatch(/^targetScope = 'subscription'$/m);
    expect(main).toMatch(/^param environmentName string$/m);
    expect(main).toMatch(/^param location string$/m);
    expect(main).toContain("'azd-env-name': environmentName");
    const parameters = JSON.parse(read('infra/main.parameters.json')).parameters;
    expect(parameters.environmentName.value).toBe('${AZURE_ENV_NAME}');
    expect(parameters.location.value).toBe('${AZURE_LOCATION}');
    for (const name of Object.keys(parameters)) expect(main, `param ${name}`).toMatch(new RegExp(`^param ${name} `, 'm'));
    expect(azureYaml).toMatch(/services:\s*\n\s+api:\s*\n(\s+.*\n)*?\s+host: containerapp/);
    expect(azureYaml).toMatch(/docker:\s*\n\s+path: \.\/Dockerfile/);
    expect(containerApps).toContain("'azd-service-name': 'api'");
    expect(containerApps).toContain("kind: 'functionapp'");
  });

  it('outputs the storage account, the API base URL and a function-key command', () => {
    const outputs = [...main.matchAll(/^output (\w+) string = (.+)$/gm)];
    const out = new Map(outputs.map((m) => [m[1], m[2]]));
    expect(out.get('AZURE_STORAGE_ACCOUNT_NAME')).toBe('storage.outputs.name');
    expect(out.get('API_BASE_URL')).toBe("'https://${app.outputs.fqdn}/api'");
    expect(out.get('FUNCTION_KEY_COMMAND')).toMatch(/^'az containerapp function keys list .*--key-type hostKey'$/);
    expect(out.has('AZURE_CONTAINER_REGISTRY_ENDPOINT')).toBe(true);
  });

  it('passes every module the parameters it declares, and only those', () => {
    for (const m of main.matchAll(/^module \w+ '(modules\/[\w-]+\.bicep)' = \{/gm)) {
      const moduleText = read(`infra/${m[1]}`);
      const declared = [...moduleText.matchAll(/^param (\w+) \w+( = .*)?$/gm)];
      const required = declared.filter((p) => !p[2]).map((p) => p[1]);
      const passed = topLevelKeys(blockAfter(block(main, m.index!), 'params: {'));
      for (const p of required) expect(passed, `${m[1]} needs ${p}`).toContain(p);
      for (const p of passed) expect(declared.map((d) => d[1]), `${m[1]} has no param ${p}`).toContain(p);
    }
  });
});

// ---- Local settings and host.json --------------------------------------------------------------

describe('local settings agree with host.json and the code', () => {
  it('defines every %NAME% host.json references', () => {
    expect(hostRefs.length).toBeGreaterThan(0);
    for (const name of hostRefs) expect(localValues, name).toHaveProperty(name);
  });

  it('documents every pipeline setting with its default', () => {
    for (const name of Object.values(SETTING_NAMES)) expect(localValues, name).toHaveProperty(name);
    expect(readSettings(localValues)).toEqual(defaults);
  });

  it('runs the node worker', () => {
    expect(localValues.FUNCTIONS_WORKER_RUNTIME).toBe('node');
  });
});

// ---- Image ---------------------------------------------------------------------------------------

describe('Dockerfile', () => {
  const froms = [...dockerfile.matchAll(/^FROM (\S+)/gm)].map((m) => m[1]);

  it('builds with Node 22 and runs on the Functions Node 22 image', () => {
    expect(froms[0]).toMatch(/^node:22\b/);
    expect(froms.at(-1)).toBe('mcr.microsoft.com/azure-functions/node:4-node22');
    for (const step of ['npm ci', 'npm run build', 'npm prune --omit=dev']) expect(dockerfile).toContain(step);
    expect(dockerfile).toMatch(/AzureWebJobsScriptRoot=\/home\/site\/wwwroot/);
    expect(dockerfile).toMatch(/AzureFunctionsJobHost__Logging__Console__IsEnabled=true/);
  });

  it('copies host.json, package.json (whose main is in dist), dist and node_modules into the final stage', () => {
    const final = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    const entry = JSON.parse(read('package.json')).main as string;
    expect(entry.startsWith('dist/')).toBe(true);
    expect(final).toMatch(/^COPY host\.json /m);
    expect(final).toMatch(/^COPY --from=build \S+\/package\.json /m);
    expect(final).toMatch(/^COPY --from=build \S+\/dist /m);
    expect(final).toMatch(/^COPY --from=build \S+\/node_modules /m);
  });

  it('copies every folder tsc compiles, and .dockerignore keeps none of them out', () => {
    const include: string[] = JSON.parse(read('tsconfig.json')).include;
    const folders = [...new Set(include.map((g) => g.split('/')[0]))];
    for (const f of folders) expect(dockerfile, `build stage must copy ${f}/`).toMatch(new RegExp(`^COPY ${f} `, 'm'));
    const ignored = dockerignore.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    for (const f of [...folders, 'host.json', 'package.json', 'package-lock.json', 'tsconfig.json']) expect(ignored).not.toContain(f);
    for (const f of ['node_modules', 'dist', '.azurite', 'local.settings.json', 'test']) expect(ignored).toContain(f);
    // `npm run build` also builds the dashboard from web/ (Vite) into dist/web.
    expect(JSON.parse(read('package.json')).scripts.build).toContain('build:web');
    expect(dockerfile).toMatch(/^COPY web /m);
    expect(ignored).not.toContain('web');
  });
});

// ---- README ------------------------------------------------------------------------------------

describe('README deployment section', () => {
  const at = readme.indexOf('## Deploying to Azure');
  const section = readme.slice(at);

  it('exists, last', () => {
    expect(at).toBeGreaterThan(0);
    expect(section.slice(3)).not.toMatch(/^## /m);
  });

  it('mentions only routes and functions the app has', () => {
    const routes = httpRoutes.map((r) => ({ methods: r.methods, re: new RegExp(`^${r.route.replace(/\{[^}]+\}/g, '[^/]+')}$`) }));
    const mentioned = [...section.matchAll(/(?:(GET|POST) )?\/api\/([\w{}./-]+)/g)];
    expect(mentioned.length).toBeGreaterThan(2);
    for (const [text, method, route] of mentioned) {
      const clean = route.replace(/[.,]+$/, '');
      expect(routes.some((r) => r.re.test(clean) && (!method || r.methods.includes(method))), text).toBe(true);
    }
    for (const m of section.matchAll(/functionName=(\w+)/g)) expect(Object.keys(eventGridTriggers)).toContain(m[1]);
  });
});
