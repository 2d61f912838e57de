// Small DOM and number-formatting helpers shared by the dashboard and the report.

type Child = Node | string | number | null | undefined | false;

/** Creates an element; text children are set as text, never parsed as HTML. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number | boolean | null | undefined> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = String(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === 'object' ? c : String(c));
  }
  return el;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function bytes(n: number): string {
  let i = 0;
  while (Math.abs(n) >= 1024 && i < UNITS.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(n >= 100 ? 0 : 1)} ${UNITS[i]}`;
}

export function count(n: number): string {
  return n.toLocaleString('en-US');
}

/** A ratio as a short number: 3 significant digits, exponent form when tiny. */
export function ratio(x: number): string {
  if (x === 0) return '0';
  return Math.abs(x) < 1e-3 ? x.toExponential(2) : x.toPrecision(3);
}

export function percent(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(part === whole ? 0 : 1)}%` : '–';
}

export function shortHash(s: string): string {
  return s.length > 12 ? s.slice(0, 12) : s;
}

export function when(iso: string | null | undefined): string {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}
