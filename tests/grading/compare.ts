/**
 * Byte-level comparisons with escaped diffs, for replies (exact) and for a
 * client's output (the reply somewhere in it, among prompts and prefixes).
 *
 * @module
 */

/**
 * The uppercase service as the programs must implement it: decode the bytes
 * as UTF-8 (invalid bytes become U+FFFD, a leading BOM is kept), uppercase,
 * encode. This is the one definition every reply is checked against.
 *
 * @example
 * ```ts
 * expectedReply(new TextEncoder().encode("ß")); // bytes of "SS"
 * ```
 */
export function expectedReply(input: Uint8Array): Uint8Array {
  const text = new TextDecoder("utf-8", { ignoreBOM: true }).decode(input);
  return new TextEncoder().encode(text.toUpperCase());
}

/** UTF-8 bytes of a string. */
export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/**
 * Shows bytes with everything outside printable ASCII escaped, so a failing
 * comparison says exactly which byte differs.
 *
 * @example
 * ```ts
 * escapeBytes(utf8("ä\n")); // "\\xc3\\xa4\\n"
 * ```
 */
export function escapeBytes(bytes: Uint8Array, max = 200): string {
  let out = "";
  for (const b of bytes.subarray(0, max)) {
    if (b === 0x0a) out += "\\n";
    else if (b === 0x5c) out += "\\\\";
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += `\\x${b.toString(16).padStart(2, "0")}`;
  }
  return bytes.length > max ? `${out}... (${bytes.length} bytes)` : out;
}

/**
 * Asserts two byte arrays are equal, with an escaped diff on failure.
 *
 * @example
 * ```ts
 * assertBytes(reply, expectedReply(request));
 * ```
 */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, what = "reply") {
  if (actual.length === expected.length && actual.every((b, i) => b === expected[i])) return;
  let first = 0;
  while (first < actual.length && actual[first] === expected[first]) first++;
  const from = Math.max(0, first - 20);
  throw new Error(
    `${what} differs at byte ${first} (got ${actual.length} bytes, want ${expected.length})\n` +
      `  got:  ${escapeBytes(actual.subarray(from), 80)}\n` +
      `  want: ${escapeBytes(expected.subarray(from), 80)}`,
  );
}

/**
 * A check's verdict "failed", with the reason as its message.
 *
 * @example
 * ```ts
 * throw new CheckFailure("the reply differs at byte 0 (got 0 bytes, want 11)");
 * ```
 */
export class CheckFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckFailure";
  }
}

/**
 * Whether a server's reply is the expected one. One trailing line end
 * ("\n" or "\r\n") is tolerated: line-based servers (Java's readLine and
 * println, for example) add one.
 *
 * @example
 * ```ts
 * replyMatches(utf8("HI\n"), utf8("HI")); // true
 * ```
 */
export function replyMatches(actual: Uint8Array, expected: Uint8Array): boolean {
  const same = (length: number) =>
    actual.length === length && expected.every((byte, i) => actual[i] === byte);
  const tail = actual.subarray(expected.length);
  return same(expected.length) ||
    (same(expected.length + 1) && tail[0] === 0x0a) ||
    (same(expected.length + 2) && tail[0] === 0x0d && tail[1] === 0x0a);
}

/**
 * The escaped diff between a reply and the expected bytes, or undefined if
 * they match (see {@linkcode replyMatches}).
 *
 * @example
 * ```ts
 * replyDiff(utf8("HELLO"), utf8("HELLO WORLD"));
 * // "the reply differs at byte 5 (got 5 bytes, want 11)\n  got:  HELLO\n  want: HELLO WORLD"
 * ```
 */
export function replyDiff(actual: Uint8Array, expected: Uint8Array): string | undefined {
  if (replyMatches(actual, expected)) return undefined;
  try {
    assertBytes(actual, expected, "the reply");
  } catch (error) {
    return (error as Error).message;
  }
  return undefined;
}

/**
 * Where `needle` first occurs in `haystack`, or -1.
 *
 * @example
 * ```ts
 * indexOfBytes(utf8("From Server: HI\n"), utf8("HI")); // 13
 * ```
 */
export function indexOfBytes(haystack: Uint8Array, needle: Uint8Array): number {
  if (needle.length === 0) return 0;
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) {
      if (haystack[i + j] !== needle[j]) continue outer;
    }
    return i;
  }
  return -1;
}

/**
 * Explains why `expected` is not in a client's output: finds the place in
 * the output that agrees with the longest start of the expected reply and
 * shows, escaped, where the two part.
 *
 * @example
 * ```ts
 * outputDiff(utf8("From Server: HELL\n"), utf8("HELLO"));
 * // "the closest match in the output agrees with the first 4 of 5 bytes, then differs: ..."
 * ```
 */
export function outputDiff(output: Uint8Array, expected: Uint8Array): string {
  const searched = output.subarray(0, 256 * 1024);
  let bestAt = -1;
  let bestLength = 0;
  for (let i = 0; i < searched.length && bestLength < expected.length; i++) {
    let n = 0;
    while (n < expected.length && i + n < searched.length && searched[i + n] === expected[n]) n++;
    if (n > bestLength) {
      bestAt = i;
      bestLength = n;
    }
  }
  if (bestAt < 0) {
    return "no part of the expected reply appears in the output\n" +
      `  output: ${escapeBytes(output, 160)}\n` +
      `  want:   ${escapeBytes(expected, 160)}`;
  }
  const from = Math.max(0, bestLength - 20);
  return `the closest match in the output agrees with the first ${bestLength} of ` +
    `${expected.length} bytes of the reply, then differs:\n` +
    `  got:  ${escapeBytes(searched.subarray(bestAt + from, bestAt + bestLength + 60), 80)}\n` +
    `  want: ${escapeBytes(expected.subarray(from, bestLength + 60), 80)}`;
}
