/**
 * Reads a JWT's `exp` claim without verifying the token (the server
 * verifies it; the client only needs to know when to renew it).
 *
 * @returns `exp` in seconds since the epoch, or `undefined` when the token
 * is not a JWS compact token or has no numeric `exp`.
 */
export function jwtExpiry(token: string): number | undefined {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const b64 = (parts[1] as string).replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const bin = atob(padded);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof claims === 'object' && claims !== null && 'exp' in claims) {
      const exp = (claims as { exp: unknown }).exp;
      if (typeof exp === 'number' && Number.isFinite(exp)) return exp;
    }
  } catch {
    // not a JWT: no expiry known
  }
  return undefined;
}

/**
 * How long to wait before refreshing credentials, in milliseconds.
 *
 * The remaining lifetime is the smaller of the server's `ttl` (seconds, in
 * the server's clock) and the token's `exp` minus `now` (the local clock);
 * the refresh comes after `ratio` of it (e.g. 0.85), never before 0.
 *
 * @returns `undefined` when neither says when the credentials expire.
 */
export function refreshDelay(
  now: number,
  ratio: number,
  ttlSeconds: number | undefined,
  token: string | undefined,
): number | undefined {
  const candidates: number[] = [];
  if (typeof ttlSeconds === 'number' && Number.isFinite(ttlSeconds)) candidates.push(ttlSeconds * 1000);
  const exp = token === undefined ? undefined : jwtExpiry(token);
  if (exp !== undefined) candidates.push(exp * 1000 - now);
  if (candidates.length === 0) return undefined;
  const remaining = Math.min(...candidates);
  return Math.max(0, Math.floor(remaining * ratio));
}
