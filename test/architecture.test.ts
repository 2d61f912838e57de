// The house rules as a test: lib/ is the engine and never imports functions/ or cli/; functions/
// never imports cli/; nothing that runs imports build/ (the build's own steps); web/ is a page of its
// own; and no module imports itself through a cycle.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const ROOMS = ['lib', 'functions', 'cli', 'bench', 'build'];

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir)) {
    const p = path.join(dir, e);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (/\.tsx?$/.test(e) && !e.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** Relative imports of a module (static, re-exports and dynamic), resolved to .ts files under the root. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [
    ...text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]/g), // import … from, export … from
    ...text.matchAll(/(?:^|\n)\s*import\s*['"]([^'"]+)['"]/g), // side-effect imports
    ...text.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g), // dynamic imports
  ].map((m) => m[1]);
  return specs.filter((s) => s.startsWith('.')).map((s) => path.relative(root, path.resolve(path.dirname(file), s)).replace(/\.js$/, '.ts'));
}

const graph = new Map<string, string[]>();
for (const room of ROOMS) for (const f of sources(path.join(root, room))) graph.set(path.relative(root, f), importsOf(f));

describe('architecture', () => {
  it('reads every module (the scan is not empty)', () => {
    expect([...graph.keys()].filter((f) => f.startsWith('lib/')).length).toBeGreaterThan(30);
    expect(graph.get('cli/index.ts')).toContain('cli/commands/compute.ts');
  });

  it('has no upward imports: lib/ never reaches functions/ or cli/, functions/ never reaches cli/, none reaches build/', () => {
    const upward: string[] = [];
    for (const [from, tos] of graph) {
      for (const to of tos) {
        if (from.startsWith('lib/') && /^(functions|cli|bench|build|test)\//.test(to)) upward.push(`${from} -> ${to}`);
        if (from.startsWith('functions/') && /^(cli|bench|build|test)\//.test(to)) upward.push(`${from} -> ${to}`);
        if (from.startsWith('cli/') && /^(bench|build|test)\//.test(to)) upward.push(`${from} -> ${to}`);
      }
    }
    expect(upward).toEqual([]);
  });

  it('has no import cycles', () => {
    // Tarjan's strongly connected components: any component of two or more modules is a cycle.
    let next = 0;
    const index = new Map<string, number>();
    const low = new Map<string, number>();
    const stack: string[] = [];
    const on = new Set<string>();
    const cycles: string[][] = [];
    const visit = (v: string) => {
      index.set(v, next);
      low.set(v, next++);
      stack.push(v);
      on.add(v);
      for (const w of graph.get(v) ?? []) {
        if (!graph.has(w)) continue;
        if (!index.has(w)) {
          visit(w);
          low.set(v, Math.min(low.get(v)!, low.get(w)!));
        } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
      if (low.get(v) === index.get(v)) {
        const scc: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          on.delete(w);
          scc.push(w);
        } while (w !== v);
        if (scc.length > 1) cycles.push(scc.sort());
      }
    };
    for (const v of graph.keys()) if (!index.has(v)) visit(v);
    expect(cycles).toEqual([]);
  });
});
