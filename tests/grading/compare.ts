/**
 * Byte-level comparisons with escaped diffs, for replies (exact) and for a
 * client's output (the reply somewhere in it, among prompts and prefixes).
 *
 * @module
 */

/**
 * The services the kit grades: `upper`, the textbook's uppercase app, and
 * `count-s`, its suggested modification: the reply is the number of times
 * the letter s appears (s and S alike), as decimal digits.
 */
export type Service = "upper" | "count-s";

/**
 * Every service, in the order the documents list them.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(SERVICES, ["upper", "count-s"]);
 * ```
 */
export const SERVICES: readonly Service[] = ["upper", "count-s"];

/**
 * The service as the programs must implement it: decode the bytes as UTF-8
 * (invalid bytes become U+FFFD, a leading BOM is kept), then for `upper`
 * (the default) uppercase and encode; for `count-s` count the letter s, in
 * either case (s and S; ß and ſ are other letters), and send the number as
 * decimal digits, once for the whole request. This is the one definition
 * every reply is checked against.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const reply = expectedReply(new TextEncoder().encode("ß"));
 * assert.equal(new TextDecoder().decode(reply), "SS");
 * const count = expectedReply(new TextEncoder().encode("Sis ß"), "count-s");
 * assert.equal(new TextDecoder().decode(count), "2");
 * ```
 */
export function expectedReply(input: Uint8Array, service: Service = "upper"): Uint8Array {
  const text = new TextDecoder("utf-8", { ignoreBOM: true }).decode(input);
  const reply = service === "count-s"
    ? String(text.match(/[sS]/g)?.length ?? 0)
    : text.toUpperCase();
  return new TextEncoder().encode(reply);
}

/**
 * {@linkcode expectedReply} for a sentence given as text: the reply a client
 * prints. The tests derive every expected reply from these two functions, so
 * a change of service is made here.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { expectedText } from "./compare.ts";
 *
 * assert.equal(expectedText("straße"), "STRASSE");
 * assert.equal(expectedText("straße", "count-s"), "1");
 * ```
 */
export function expectedText(sentence: string, service: Service = "upper"): string {
  return new TextDecoder().decode(expectedReply(new TextEncoder().encode(sentence), service));
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
 * import assert from "node:assert/strict";
 *
 * assert.equal(escapeBytes(utf8("ä\n")), "\\xc3\\xa4\\n");
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
 * import assert from "node:assert/strict";
 *
 * assertBytes(utf8("HI"), expectedReply(utf8("hi")));
 * assert.throws(() => assertBytes(utf8("H"), utf8("HI")), /reply/);
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
 * import assert from "node:assert/strict";
 *
 * const failure = new CheckFailure("the reply differs at byte 0 (got 0 bytes, want 11)");
 * assert.ok(failure instanceof Error);
 * assert.equal(failure.name, "CheckFailure");
 * ```
 */
export class CheckFailure extends Error {
  /** `message`: what went wrong, with the diff. */
  constructor(message: string) {
    super(message);
    this.name = "CheckFailure";
  }
}

/** How a reply compares with the expected one so far. */
export type ReplyState = "prefix" | "match" | "wrong";

/**
 * Compares a reply with the expected bytes as it arrives, looking at each
 * byte once: "prefix" while it could still become the expected reply,
 * "match" once it is the expected reply (see {@linkcode replyMatches}),
 * "wrong" once it cannot be any more. A request's checks stop waiting soon
 * after the state leaves "prefix", so that a server that never closes its
 * connection costs one check, not the deadline of every check.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const watcher = new ReplyWatcher(utf8("HI"));
 * watcher.push(utf8("H"));
 * assert.equal(watcher.state, "prefix");
 * watcher.push(utf8("I\n"));
 * assert.equal(watcher.state, "match");
 * ```
 */
export class ReplyWatcher {
  /** The whole expected reply. */
  readonly expected: Uint8Array;
  #length = 0;
  #wrong = false;
  /** The bytes after the expected reply (at most 3 are kept). */
  #tail: number[] = [];

  /** Watches for `expected`. */
  constructor(expected: Uint8Array) {
    this.expected = expected;
  }

  /** Takes the next piece of the reply. */
  push(chunk: Uint8Array) {
    const expected = this.expected;
    for (const byte of chunk) {
      if (this.#wrong) break;
      if (this.#length < expected.length) {
        if (byte !== expected[this.#length]) this.#wrong = true;
      } else if (this.#tail.length < 3) {
        this.#tail.push(byte);
      }
      this.#length++;
    }
    if (!this.#wrong && this.#tail.length > 0) {
      const tail = String.fromCharCode(...this.#tail);
      this.#wrong = !(tail === "\n" || tail === "\r" || tail === "\r\n");
    }
  }

  /** See {@linkcode ReplyState}. */
  get state(): ReplyState {
    if (this.#wrong) return "wrong";
    if (this.#length < this.expected.length) return "prefix";
    return this.#tail.length === 1 && this.#tail[0] === 0x0d ? "prefix" : "match";
  }
}

/**
 * Whether a server's reply is the expected one. One line end more at the
 * end ("\n" or "\r\n": Java's readLine() and println servers add one) or,
 * when the request ended with a newline, one "\n" less is tolerated.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(replyMatches(utf8("HI\n"), utf8("HI")), true);
 * assert.equal(replyMatches(utf8("A\nB"), utf8("A\nB\n")), true);
 * assert.equal(replyMatches(utf8("HE"), utf8("HI")), false);
 * ```
 */
export function replyMatches(actual: Uint8Array, expected: Uint8Array): boolean {
  const watcher = new ReplyWatcher(expected);
  watcher.push(actual);
  if (watcher.state === "match") return true;
  const last = expected.length - 1;
  return last >= 0 && expected[last] === 0x0a && actual.length === last &&
    expected.subarray(0, last).every((byte, i) => actual[i] === byte);
}

/**
 * The escaped diff between a reply and the expected bytes, or undefined if
 * they match (see {@linkcode replyMatches}). A reply padded with NUL bytes
 * gets its own diagnosis: the text is right, the length is not.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.match(
 *   replyDiff(utf8("HELLO"), utf8("HELLO WORLD")) ?? "",
 *   /^the reply differs at byte 5 \(got 5 bytes, want 11\)/,
 * );
 * assert.equal(replyDiff(utf8("HI"), utf8("HI")), undefined);
 * ```
 */
export function replyDiff(actual: Uint8Array, expected: Uint8Array): string | undefined {
  if (replyMatches(actual, expected)) return undefined;
  const padding = nulPadding(actual, expected);
  if (padding !== undefined) return padding;
  try {
    assertBytes(actual, expected, "the reply");
  } catch (error) {
    return (error as Error).message;
  }
  return undefined;
}

/**
 * The diagnosis of a reply that is the expected one followed by NUL bytes
 * (and perhaps a line end among them), or undefined if it is not one.
 */
function nulPadding(actual: Uint8Array, expected: Uint8Array): string | undefined {
  let end = actual.length;
  while (end > 0 && actual[end - 1] === 0) end--;
  const nuls = actual.length - end;
  if (nuls === 0 || !replyMatches(actual.subarray(0, end), expected)) return undefined;
  return `the reply has the right text, then ${nuls} NUL byte(s) (\\x00) after it ` +
    `(got ${actual.length} bytes, want ${expected.length}): the program sends its whole ` +
    "buffer instead of the reply's length. In C: send strlen(reply) bytes, not " +
    "sizeof(buffer) (or strlen + 1); in Java: build the text from the bytes received, " +
    "new String(packet.getData(), 0, packet.getLength()), not from the whole 1024-byte " +
    "array; in Python: send only the reply, not a fixed-size bytearray";
}

/**
 * Where `needle` first occurs in `haystack`, or -1.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(indexOfBytes(utf8("From Server: HI\n"), utf8("HI")), 13);
 * assert.equal(indexOfBytes(utf8("HE"), utf8("HI")), -1);
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
 * Whether a client's output holds the reply `expected`. For `count-s` the
 * count must stand as a number of its own, not as part of a longer one:
 * "From Server: 12" holds the reply 12, not the reply 2 or 1.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(outputHasReply(utf8("From Server: HI\n"), utf8("HI")), true);
 * assert.equal(outputHasReply(utf8("From Server: 12\n"), utf8("12"), "count-s"), true);
 * assert.equal(outputHasReply(utf8("From Server: 12\n"), utf8("2"), "count-s"), false);
 * ```
 */
export function outputHasReply(
  output: Uint8Array,
  expected: Uint8Array,
  service: Service = "upper",
): boolean {
  if (service === "upper" || expected.length === 0) return indexOfBytes(output, expected) >= 0;
  const isDigit = (byte: number | undefined) => byte !== undefined && byte >= 0x30 && byte <= 0x39;
  for (let from = 0;;) {
    const at = indexOfBytes(output.subarray(from), expected);
    if (at < 0) return false;
    const start = from + at;
    const end = start + expected.length;
    if (!isDigit(output[start - 1]) && !isDigit(output[end])) return true;
    from = start + 1;
  }
}

/**
 * Explains why `expected` is not in a client's output: finds the place in
 * the output that agrees with the longest start of the expected reply and
 * shows, escaped, where the two part.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.match(
 *   outputDiff(utf8("From Server: HELL\n"), utf8("HELLO")),
 *   /^the closest match in the output agrees with the first 4 of 5 bytes of the reply, then differs/,
 * );
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
