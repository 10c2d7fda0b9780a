import { sha256 } from '@noble/hashes/sha2.js';
import { bytesToHex, utf8ToBytes } from '@noble/hashes/utils.js';

/**
 * SHA-256 of `text` (UTF-8), as lowercase hex: the very digest of node:crypto's createHash('sha256'), which names
 * derived from it must keep across versions (a resource's state directory, a service's cgroup, a svc's spec hash:
 * an upgraded agent finds and adopts what the last one started by them). Not node:crypto, for the short inputs of a
 * cold run: loading it was ~5 ms there (its module graph and bindings), for a few dozen bytes hashed.
 */
export function sha256Hex(text: string): string {
  return bytesToHex(sha256(utf8ToBytes(text)));
}
