import cliProgress from 'cli-progress';
import { formatBytes } from '../lib/ops/sizes.js';

/** A bytes/s progress bar on a terminal; silent elsewhere (pipes, CI, --json). */
export class Progress {
  private bar: cliProgress.SingleBar | null = null;
  private done = 0;
  private started = 0;

  constructor(private readonly enabled: boolean) {}

  start(label: string, total: number): void {
    if (!this.enabled) return;
    this.started = Date.now();
    this.bar = new cliProgress.SingleBar(
      {
        stream: process.stderr,
        format: `${label} {bar} {percentage}% | {doneBytes} / {totalBytes} | {rate}/s | eta {eta_formatted}`,
        hideCursor: true,
        clearOnComplete: true,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(total, 0, { doneBytes: formatBytes(0), totalBytes: formatBytes(total), rate: '-' });
  }

  add(bytes: number): void {
    if (!this.bar) return;
    this.done += bytes;
    const secs = Math.max(1e-3, (Date.now() - this.started) / 1000);
    this.bar.update(this.done, { doneBytes: formatBytes(this.done), rate: formatBytes(this.done / secs) });
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
