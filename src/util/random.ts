import { randomFillSync } from 'node:crypto';
import { closeSync, constants, openSync, readSync } from 'node:fs';

/**
 * Fills `buf` from the kernel's CSPRNG through /dev/urandom, or node:crypto where that cannot be read: loading
 * node:crypto (~5 ms, ~8 ms of compiling under load) was on the path to a cold run's first write or service start,
 * the first thing in the run to need randomness.
 */
export function fillRandom(buf: Buffer): void {
  let fd: number | undefined;
  try {
    fd = openSync('/dev/urandom', constants.O_RDONLY);
    for (let got = 0; got < buf.length; ) {
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n <= 0) throw new Error('short read from /dev/urandom');
      got += n;
    }
    return;
  } catch {
    randomFillSync(buf);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** `bytes` random bytes as hex (fillRandom's). */
export function randomHex(bytes: number): string {
  const buf = Buffer.alloc(bytes);
  fillRandom(buf);
  return buf.toString('hex');
}
