import { BlobServiceClient } from '@azure/storage-blob';
import { DefaultAzureCredential } from '@azure/identity';

/**
 * Connecting to the one storage account, with the Azure Functions setting conventions for a
 * connection named `name` (AzureWebJobsStorage by default):
 *   - `name`: a connection string (`UseDevelopmentStorage=true` means Azurite on 127.0.0.1:10000);
 *   - otherwise identity-based: `name__blobServiceUri`, `name__serviceUri` or `name__accountName`,
 *     signed in with DefaultAzureCredential; `name__credential=managedidentity` with `name__clientId`
 *     picks a user-assigned managed identity.
 * Errors name the setting, never its value: connection strings and service URIs can carry keys or SAS.
 */

const ACCOUNT_NAME = /^[a-z0-9]{3,24}$/;

function setting(env: Record<string, string | undefined>, key: string): string | undefined {
  const v = env[key]?.trim();
  return v ? v : undefined;
}

/** The SDK's own parse errors carry no values; anything else (a URL parse error) might, so it is dropped. */
function safeReason(e: unknown): string {
  const msg = e instanceof Error ? e.message : '';
  return /^(Invalid \w+ in the provided Connection String|Connection string must be)/.test(msg) ? ` (${msg.split(/[.\n]/)[0]})` : '';
}

/**
 * A client from a connection string (the CLI's `--storage`, or a Functions connection setting).
 * `label` names where it came from in error messages.
 */
export function blobServiceFromConnectionString(cs: string, label = 'storage connection string'): BlobServiceClient {
  const s = cs.trim();
  if (!s) throw new Error(`${label} is empty`);
  try {
    return BlobServiceClient.fromConnectionString(s);
  } catch (e) {
    throw new Error(
      `${label} is not a usable storage connection string${safeReason(e)}; expected AccountName and AccountKey ` +
        `(or BlobEndpoint with a SharedAccessSignature), or UseDevelopmentStorage=true`,
    );
  }
}

function serviceUrl(value: string, key: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`${key} is not a valid URL; expected https://<account>.blob.core.windows.net`);
  }
  const loopback = url.hostname === '127.0.0.1' || url.hostname === 'localhost' || url.hostname === '[::1]';
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) {
    throw new Error(`${key} must be an https:// URL (plain http only for a local emulator)`);
  }
  // Identity-based settings sign requests with a token; a SAS or user info in the URL would bypass that.
  if (url.search || url.hash || url.username || url.password) {
    throw new Error(`${key} must be a bare service URL without a query string or credentials; put a SAS in a connection string instead`);
  }
  return url.toString();
}

export function blobServiceFromSettings(env: Record<string, string | undefined>, connectionName = 'AzureWebJobsStorage'): BlobServiceClient {
  const name = connectionName;
  const cs = setting(env, name);
  if (cs) return blobServiceFromConnectionString(cs, `setting ${name}`);

  let url: string | undefined;
  for (const key of [`${name}__blobServiceUri`, `${name}__serviceUri`]) {
    const v = setting(env, key);
    if (v) {
      url = serviceUrl(v, `setting ${key}`);
      break;
    }
  }
  if (!url) {
    const account = setting(env, `${name}__accountName`);
    if (account) {
      if (!ACCOUNT_NAME.test(account)) {
        throw new Error(`setting ${name}__accountName is not a valid storage account name (3-24 lowercase letters and digits)`);
      }
      url = `https://${account}.blob.core.windows.net`;
    }
  }
  if (!url) {
    throw new Error(
      `No blob storage configured: set ${name} to a connection string (UseDevelopmentStorage=true for Azurite), ` +
        `or ${name}__blobServiceUri / ${name}__serviceUri / ${name}__accountName for identity-based access`,
    );
  }
  const managed = setting(env, `${name}__credential`)?.toLowerCase() === 'managedidentity';
  const clientId = managed ? setting(env, `${name}__clientId`) : undefined;
  // DefaultAzureCredential does no I/O until the first request, so misconfiguration surfaces there.
  const credential = new DefaultAzureCredential(clientId ? { managedIdentityClientId: clientId } : {});
  return new BlobServiceClient(url, credential);
}
