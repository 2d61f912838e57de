import { InputError } from '../errors.js';

const UNITS: Record<string, number> = {
  '': 1, B: 1,
  KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12,
  KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40,
};

/** Parses "5GB", "500MB", "2GiB" or a byte count, as transformers' max_shard_size does (GB = 10^9). */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2].toUpperCase()] : undefined;
  if (!m || unit === undefined) throw new InputError(`${what}: "${text}" is not a size like 5GB, 500MB or 2GiB`);
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!(bytes > 0)) throw new InputError(`${what}: must be more than 0 bytes`);
  return bytes;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
