import type { InspectResult } from '../lib/ops/inspect.js';
import { describeFusion } from '../lib/fusion/options.js';
import { formatBytes } from '../lib/ops/sizes.js';

function humanCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

export function printInspect(r: InspectResult, write = (s: string) => process.stdout.write(s + '\n')): void {
  write(`${r.kind} ${r.path}`);
  if (r.config?.architectures) write(`architecture: ${JSON.stringify(r.config.architectures)}`);
  write(`files: ${r.files.join(', ')}`);
  write(`tensors: ${r.tensors.length}, parameters: ${humanCount(r.parameters)} (${r.parameters}), size: ${formatBytes(r.bytes)}`);
  write(`dtypes: ${Object.entries(r.dtypes).map(([d, n]) => `${d} ${humanCount(n)}`).join(', ')}`);
  if (r.delta) {
    const d = r.delta;
    write(`delta: ${d.layout} layout, policy ${d.policy}, made by ${d.tool} at ${d.createdAt}`);
    if (d.codec) write(`codec: ${d.codec}, chunks of ${d.chunkElements} elements`);
    write(
      `stored: ${formatBytes(d.storedBytes)} = ${(d.storedBytes / d.rawBytes).toFixed(3)}× the raw delta (${formatBytes(d.rawBytes)}), ` +
        `${(d.storedBytes / d.modelBytes).toFixed(3)}× the post model (${formatBytes(d.modelBytes)})`,
    );
    write(`carried files: ${r.delta.files.join(', ') || '(none)'}`);
  }
  if (r.model) {
    const m = r.model;
    write(`model: ${m.base} + ${m.deltas.map((d) => `${d.scale}·${d.ref}`).join(' + ')}, made by ${m.tool} at ${m.createdAt}`);
    write(`method: ${m.fusion ? describeFusion(m.fusion) : 'linear'}`);
  }
  const compact = r.delta?.layout === 'compact' || r.tensors.some((t) => t.compressedBytes !== undefined);
  const nameWidth = Math.min(60, Math.max(...r.tensors.map((t) => t.name.length), 4));
  write('');
  write(
    `${'name'.padEnd(nameWidth)}  ${'dtype'.padEnd(5)}  ${'shape'.padEnd(16)}  ${'params'.padStart(8)}  ${'size'.padStart(10)}${compact ? `  ${'stored'.padStart(10)}` : ''}${r.delta ? '  ‖Δ‖/‖W‖' : ''}`,
  );
  for (const t of r.tensors) {
    const norm = r.delta ? `  ${t.zero ? 'zero' : (t.relNorm ?? 0).toExponential(3)}` : '';
    write(
      `${t.name.padEnd(nameWidth)}  ${t.dtype.padEnd(5)}  ${JSON.stringify(t.shape).padEnd(16)}  ${humanCount(t.parameters).padStart(8)}  ${formatBytes(t.bytes).padStart(10)}${compact ? `  ${formatBytes(t.compressedBytes ?? 0).padStart(10)}` : ''}${norm}`,
    );
  }
}
