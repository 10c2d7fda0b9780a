/** The SHA-256 round constants (FIPS 180-4, 4.2.2). */
const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
  0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** The message schedule, reused: one hash at a time on this thread. */
const W = new Int32Array(64);

/**
 * SHA-256 of `text` (UTF-8, a lone surrogate as U+FFFD), as lowercase hex: the very digest of node:crypto's
 * createHash('sha256'), which names derived from it must keep across versions (a resource's state directory, a
 * service's cgroup, a svc's spec hash: an upgraded agent finds and adopts what the last one started by them). A test
 * holds it to node:crypto's.
 *
 * Not node:crypto, for the few short inputs of a cold run: loading it was ~5 ms there (its module graph and
 * bindings). And not a library's layered hasher either: @noble/hashes took 1.6-4 ms for the four names of the nginx
 * stack's run (its classes, views and the first calls of each method); this one function takes 0.5-0.7 ms for them.
 * FIPS 180-4, section 6.2, in 32-bit integer arithmetic (`| 0` wraps each sum as the standard's mod 2^32 does).
 */
export function sha256Hex(text: string): string {
  const data = Buffer.from(text, 'utf8');
  const n = data.length;
  // The message, one 0x80 byte, zeros, then its length in bits as a 64-bit big-endian number fill whole 64-byte blocks.
  const m = Buffer.alloc(((n + 72) >>> 6) * 64);
  data.copy(m);
  m[n] = 0x80;
  const end = m.length;
  const hi = Math.floor(n / 0x20000000);
  const lo = (n << 3) >>> 0;
  m[end - 8] = hi >>> 24;
  m[end - 7] = hi >>> 16;
  m[end - 6] = hi >>> 8;
  m[end - 5] = hi;
  m[end - 4] = lo >>> 24;
  m[end - 3] = lo >>> 16;
  m[end - 2] = lo >>> 8;
  m[end - 1] = lo;
  const w = W;
  let h0 = 0x6a09e667 | 0;
  let h1 = 0xbb67ae85 | 0;
  let h2 = 0x3c6ef372 | 0;
  let h3 = 0xa54ff53a | 0;
  let h4 = 0x510e527f | 0;
  let h5 = 0x9b05688c | 0;
  let h6 = 0x1f83d9ab | 0;
  let h7 = 0x5be0cd19 | 0;
  for (let off = 0; off < end; off += 64) {
    for (let i = 0, j = off; i < 16; i++, j += 4) w[i] = (m[j]! << 24) | (m[j + 1]! << 16) | (m[j + 2]! << 8) | m[j + 3]!;
    for (let i = 16; i < 64; i++) {
      const x = w[i - 15]!;
      const y = w[i - 2]!;
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = (w[i - 16]! + s0 + w[i - 7]! + s1) | 0;
    }
    let a = h0;
    let b = h1;
    let c = h2;
    let d = h3;
    let e = h4;
    let f = h5;
    let g = h6;
    let h = h7;
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i]! + w[i]!) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
    h5 = (h5 + f) | 0;
    h6 = (h6 + g) | 0;
    h7 = (h7 + h) | 0;
  }
  return hex8(h0) + hex8(h1) + hex8(h2) + hex8(h3) + hex8(h4) + hex8(h5) + hex8(h6) + hex8(h7);
}

function hex8(v: number): string {
  return (v >>> 0).toString(16).padStart(8, '0');
}
