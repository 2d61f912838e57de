import type { Store } from '../storage/types.js';
import { InputError } from '../errors.js';

/**
 * A run's working files (its plan and each shard's result), kept in storage so that orchestration
 * payloads stay small and a retried activity can pick up where a lost one stopped.
 */
export class RunState<P extends { hash: string }, R> {
  private cached: P | null = null;
  constructor(private readonly store: Store) {}

  async savePlan(plan: P): Promise<void> {
    await this.store.writeFile('plan.json', JSON.stringify(plan));
    this.cached = plan;
  }

  async loadPlan(expectHash?: string): Promise<P> {
    if (!this.cached || (expectHash && this.cached.hash !== expectHash)) {
      let text: string;
      try {
        text = await this.store.readText('plan.json');
      } catch {
        throw new InputError(`${this.store.ref}: the run's plan.json is missing`);
      }
      this.cached = JSON.parse(text) as P;
    }
    if (expectHash && this.cached.hash !== expectHash) {
      throw new Error(`${this.store.ref}/plan.json: plan hash ${this.cached.hash} is not the expected ${expectHash}`);
    }
    return this.cached;
  }

  private resultFile(index: number): string {
    return `shard-${String(index + 1).padStart(5, '0')}.json`;
  }

  async saveShardResult(index: number, result: R): Promise<void> {
    await this.store.writeFile(this.resultFile(index), JSON.stringify(result));
  }

  async loadShardResult(index: number): Promise<R | null> {
    const f = this.resultFile(index);
    if (!(await this.store.exists(f))) return null;
    return JSON.parse(await this.store.readText(f)) as R;
  }
}

