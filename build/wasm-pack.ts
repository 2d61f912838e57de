// Part of `npm run build`: assembles every hand-written WebAssembly module with wabt into the pack that the
// built code loads instead (lib/wasm/assembler.ts). Run from dist/ after tsc, so each text comes from the very
// code it is built with, and the pack records the sha256 of the files that generated them.
import { rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { planesModule } from '../lib/codec/chunk.js';
import { keyhistModules } from '../lib/fusion/keyhist.js';
import { ties2Modules } from '../lib/fusion/ties2.js';
import { kernelModules } from '../lib/kernels/wat.js';
import { assembleWithWabt, loadWabt, packFile, sha256File, type WasmModuleSource } from '../lib/wasm/assembler.js';
import { encodePack } from '../lib/wasm/pack.js';

/** Every module the code can compile: the kernels, the fusion kernels and the codec's transposes. */
export function* wasmModules(): Generator<WasmModuleSource> {
  yield* kernelModules();
  yield* ties2Modules();
  yield* keyhistModules();
  yield planesModule;
}

/** Writes the pack (under a temporary name, then renamed: a half-written pack is never read). */
export async function buildPack(file = packFile()): Promise<{ modules: number; bytes: number }> {
  await loadWabt();
  // One process generates every text in this order: the kernels' constant pool is laid out once for all of them.
  const modules = [...wasmModules()].map((m) => ({ name: m.name, binary: assembleWithWabt(m.name, m.text()), source: m.source }));
  const sources: Record<string, string> = {};
  for (const m of modules) {
    const f = fileURLToPath(m.source);
    sources[path.relative(path.dirname(file), f)] ??= sha256File(f);
  }
  const bytes = encodePack(modules, sources);
  await writeFile(`${file}.tmp`, bytes);
  await rename(`${file}.tmp`, file);
  return { modules: modules.length, bytes: bytes.length };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { modules, bytes } = await buildPack();
  console.log(`${path.relative(process.cwd(), packFile())}: ${modules} WebAssembly modules, ${bytes} bytes`);
}
