/** Bad input: a malformed file, mismatched models, a bad request. The message names what to fix. */
export class InputError extends Error {
  override name = 'InputError';
}

/** Several input problems found while planning, reported together before anything is written. */
export class PlanError extends InputError {
  override name = 'PlanError';
  constructor(readonly problems: string[]) {
    super(problems.length === 1 ? problems[0] : `${problems.length} problems:\n  - ${problems.join('\n  - ')}`);
  }
}
