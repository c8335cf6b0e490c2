/**
 * Full-jitter exponential backoff, as centrifuge-js computes it:
 * `min(max, min + random · min(max, min · 2^attempt))`.
 *
 * Attempt 0 waits between `min` and `2·min`, attempt 1 between `min` and
 * `3·min`, and so on; no delay ever exceeds `max`. The random part spreads a
 * crowd of clients reconnecting to a restarted node over the whole window.
 *
 * @param attempt 0 for the first retry, then 1, 2, … (capped at 31)
 * @param min smallest delay in milliseconds
 * @param max largest delay in milliseconds
 * @param random a number in [0, 1)
 */
export function backoffDelay(attempt: number, min: number, max: number, random: number): number {
  const step = Math.min(Math.max(0, Math.floor(attempt)), 31);
  const window = Math.min(max, min * 2 ** step);
  return Math.min(max, min + Math.floor(random * (window + 1)));
}
