/**
 * The grading checks. A server under test is checked with this project's
 * client logic (connect, send, half-close, read to the end); a client under
 * test is checked against the kit's reference server, run in-process.
 *
 * Each check resolves to a short note when it passes and throws a
 * {@linkcode CheckFailure} (with an escaped byte-level diff) when it fails.
 *
 * @module
 */
import type { Assignment, Role } from "./config.ts";
import {
  CheckFailure,
  escapeBytes,
  expectedReply,
  outputDiff,
  replyDiff,
  replyMatches,
  type Service,
  utf8,
} from "./compare.ts";
import {
  type Address,
  portBecomesFree,
  ResettingConn,
  sleep,
  type TcpEnd,
  tcpRequest,
  udpRequest,
  withDeadline,
} from "./net.ts";
import type { ProgramProcess } from "./process.ts";
import { startReferenceServer } from "./reference.ts";
import { sessionChecksFor } from "./session.ts";
import {
  type Middleman,
  startLossyUdpProxy,
  startSilentTcpServer,
  startSilentUdpServer,
  startSplitProxy,
} from "./proxies.ts";

/** The checks, by id. Which apply depends on the role and the assignment. */
export type CheckId = UppercaseCheckId | SessionCheckId;

/** The checks of the uppercase app, the textbook's assignment (the default). */
export type UppercaseCheckId =
  | "basic"
  | "mixed"
  | "utf8"
  | "long1k"
  | "long2k"
  | "split"
  | "concurrent"
  | "invalid"
  | "lossy"
  | "no_reply"
  | "multiline"
  | "closes"
  | "serves_many";

/** The checks of the session assignment (`GRADE_ASSIGNMENT=session`, see session.ts). */
export type SessionCheckId =
  | "session_many"
  | "session_bytes"
  | "session_two_in_one"
  | "session_split"
  | "session_exit"
  | "session_next_client";

/** Deadline for a server's reply, in ms. */
const REPLY_MS = 3000;
/** How long the second client waits while the first stays silent, in ms. */
const CONCURRENT_MS = 2000;
/** How long a server gets to close the connection once its reply is complete, in ms. */
const CLOSE_MS = 1000;
/** Clients in a row in the serves_many check. */
const MANY = 5;

/**
 * An ASCII line of exactly `bytes` bytes, all lowercase letters, digits and
 * spaces, so that the reply differs from the request.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(longLine(1500).length, 1500);
 * assert.ok(longLine(1500).endsWith("end"));
 * ```
 */
export function longLine(bytes: number): string {
  const words = "the quick brown fox jumps over the lazy dog 0123456789 ";
  return words.repeat(Math.ceil(bytes / words.length)).slice(0, bytes - 3) + "end";
}

/** The sentence each check sends. */
export const SENTENCES: Readonly<Record<UppercaseCheckId, string>> = {
  basic: "hello world",
  mixed: "Hello, World! It's 3 o'clock; ready? (yes/no) #42 [ok] {done} ~fin",
  // Characters whose uppercase Python 3.11 and JavaScript agree on; ß, ΐ and
  // ﬁ grow when uppercased.
  utf8: "grüße, ça va? ß ΐ ﬁ é ǆ 😀 €",
  long1k: longLine(1500),
  long2k: longLine(3000),
  // Multibyte characters that have no uppercase: a server that uppercases
  // only ASCII passes, one that breaks split characters does not.
  split: "split me: € 😀 中 ✓ ok",
  concurrent: "second client",
  invalid: "still serving?",
  lossy: "lost and found",
  no_reply: "anyone there?",
  // As `nc` sends a file: several lines in one stream, each ending in "\n".
  multiline: "first line\nsecond line\nthird line\n",
  closes: "close when done",
  serves_many: "client 1 of 5",
};

/**
 * The sentences that differ for `count-s`: each count is 10 or more, so a
 * client's output cannot hold it by chance (a "1" in "attempt 1"), and
 * each tells a common mistake by its count: only the lowercase s counted
 * (mixed: 7, not 11), the text uppercased first so that ß and ſ count
 * (utf8: 19, not 12), one recv() of a split delivery (split: the first
 * byte, "m"), a count per recv() (split: digits run together).
 */
const COUNT_S_SENTENCES: Readonly<Partial<Record<CheckId, string>>> = {
  basic: "she sells sea shells by the seashore, says sam",
  mixed: "Sam's 3 Sisters say: Yes! (SOS) sells? #42 [ok] ~fin",
  utf8: "süße Grüße, ça va? ß ſ 😀 € sí, s'il vous plaît, sans soucis, ses sœurs",
  // Short: a client sees no reply until the proxy has delivered all of it, byte by byte.
  split: "mississippi, sassy sss",
  lossy: "lost and found: sss sss sss",
};

/**
 * The sentence a check sends for `service`: {@linkcode SENTENCES}, but for
 * `count-s` some are chosen for their count of s.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(sentenceOf("basic"), "hello world");
 * assert.equal(sentenceOf("closes", "count-s"), "close when done");
 * ```
 */
export function sentenceOf(id: UppercaseCheckId, service: Service = "upper"): string {
  return (service === "count-s" ? COUNT_S_SENTENCES[id] : undefined) ?? SENTENCES[id];
}

/** Invalid UTF-8: 0xff and 0xfe never occur, 0xc3 needs a continuation byte. */
const INVALID = new Uint8Array([0x68, 0x69, 0x20, 0xff, 0xfe, 0x20, 0xc3, 0x28, 0x21, 0x20, 0xc3]);

/** What a server check is given. */
export interface ServerContext {
  /** The server's transport. */
  transport: "tcp" | "udp";
  /** Where the server under test answers. */
  address: Address;
  /** The server under test, for its output. */
  server: ProgramProcess;
  /** Aborted when the server under test exits. */
  serverExited: AbortSignal;
  /** For TCP: wait this long before half-closing (see {@linkcode tcpRequest}). */
  halfCloseDelayMs: number;
  /** The assignment's service: it chooses the expected replies. */
  service: Service;
}

/** One run of the client under test. */
export interface ClientRun {
  /** Whether the expected reply appeared in its stdout. */
  found: boolean;
  /** Whether it exited by itself before the deadline. */
  exitedOnItsOwn: boolean;
  /** Milliseconds from start to exit (or to the reply, or the deadline). */
  ms: number;
  /** Milliseconds from start to its first contact with the kit; undefined if it made none. */
  contactMs?: number;
  /** The port the client was given. */
  port: number;
  /** The (stopped) program, for its output and exit status. */
  program: ProgramProcess;
}

/** What a client check is given. */
export interface ClientContext {
  /** The client's transport. */
  transport: "tcp" | "udp";
  /** Port for whatever the client talks to: 0, or the fixed port its template needs. */
  listenPort: number;
  /** How long the client gets, from its first contact, to print the reply or give up. */
  deadlineMs: number;
  /** The assignment's service: it chooses the expected replies. */
  service: Service;
  /**
   * Runs the client under test against `port`, writes `input` to its stdin
   * and waits until `expect` appears in its stdout, it exits, or the deadline.
   */
  runClient(options: ClientRunOptions): Promise<ClientRun>;
}

/** What {@linkcode ClientContext.runClient} runs a client with. */
export interface ClientRunOptions {
  /** The port of the kit's server (or proxy, or stub) that the client is told to use. */
  port: number;
  /** The client's stdin. */
  input: string;
  /** The reply to look for in its stdout; without it the client runs until it exits. */
  expect?: Uint8Array;
  /**
   * How many times the client has reached that server (connections or
   * datagrams). Its deadline counts from the first: its start-up is not
   * held against it.
   */
  contacts: () => number;
}

/** A check of a server under test. */
export interface ServerCheck {
  /** Checks a server. */
  side: "server";
  /** Its id, as in the results. */
  id: CheckId;
  /** What it checks, in a few words. */
  title: string;
  /** Advice shown when it fails. */
  hint: string;
  /** Resolves to a note when it passes; throws a CheckFailure when it fails. */
  run(context: ServerContext): Promise<string>;
}

/** A check of a client under test. */
export interface ClientCheck {
  /** Checks a client. */
  side: "client";
  /** Its id, as in the results. */
  id: CheckId;
  /** What it checks, in a few words. */
  title: string;
  /** Advice shown when it fails. */
  hint: string;
  /** Resolves to a note when it passes; throws a CheckFailure when it fails. */
  run(context: ClientContext): Promise<string>;
}

/** Any check. */
export type Check = ServerCheck | ClientCheck;

const TITLES: Readonly<Record<UppercaseCheckId, string>> = {
  basic: "basic ASCII sentence",
  mixed: "mixed case and punctuation",
  utf8: "multibyte UTF-8 (ü ß ΐ ﬁ 😀 €)",
  long1k: "a 1500-byte line (longer than a 1024-byte recv)",
  long2k: "a 3000-byte line (longer than a 2048-byte recv)",
  split: "delivery split into single bytes by a proxy (one recv is not one message)",
  concurrent: "concurrency: a silent first client must not block a second (iterative server)",
  invalid: "invalid UTF-8: the server survives and keeps serving",
  lossy: "lossy UDP path (seeded): the client retries or times out, never hangs",
  no_reply: "a server that never replies: the client gives up on its own, never hangs",
  multiline: "several lines in one stream (as nc sends a file): all of them come back",
  closes: "the server closes the connection after its reply (a client reading to the end " +
    "must not hang)",
  serves_many: "five clients in a row are all served by the same server process",
};

// ---------------------------------------------------------------------------
// Server checks
// ---------------------------------------------------------------------------

/** A reply from the server under test, TCP or UDP alike. */
interface Reply {
  data: Uint8Array;
  /** Why the reply may be incomplete, if anything went wrong. */
  problem?: string;
  /** How a TCP reply ended ("eof", "settled", ...); "reply" or "none" for UDP. */
  end: TcpEnd | "reply" | "none";
}

/** Options for {@linkcode request}. */
interface RequestOptions {
  /** Deadline for the reply; default {@linkcode REPLY_MS}. */
  ms?: number;
  /** Where to send it; default the server under test. */
  address?: Address;
  /** For TCP: how long to wait once the reply is complete (or wrong); default 150. */
  settleMs?: number;
}

/**
 * Sends `data` to the server under test (or to `address`) and waits for the
 * reply. Over TCP it stops waiting shortly after the reply is complete, or
 * already wrong, whether or not the server closes the connection: closing
 * is the `closes` check's business.
 */
async function request(
  context: ServerContext,
  data: Uint8Array,
  options: RequestOptions = {},
): Promise<Reply> {
  const { ms = REPLY_MS, address = context.address, settleMs } = options;
  const signal = context.serverExited;
  if (context.transport === "tcp") {
    const outcome = await tcpRequest({
      address,
      chunks: [data],
      ms,
      signal,
      halfCloseDelayMs: context.halfCloseDelayMs,
      expect: expectedReply(data, context.service),
      settleMs,
    });
    const problem = outcome.end === "eof" && outcome.data.length === 0
      ? "the server closed the connection without replying"
      : outcome.problem;
    return { data: outcome.data, problem, end: outcome.end };
  }
  const outcome = await udpRequest({ address, data, ms, signal });
  if (outcome.reply) return { data: outcome.reply, end: "reply" };
  const problem = outcome.end === "aborted"
    ? "the server exited instead of replying"
    : `no reply datagram within ${ms} ms`;
  return { data: new Uint8Array(0), problem, end: "none" };
}

/** Throws unless `reply` is the service's reply to `request`; else returns a pass note. */
function expectReply(
  reply: Reply,
  request: Uint8Array,
  { service, note = "" }: { service: Service; note?: string },
): string {
  const expected = expectedReply(request, service);
  const diff = replyDiff(reply.data, expected);
  if (diff === undefined) {
    return `the reply matched (${reply.data.length} bytes)${note ? `; ${note}` : ""}`;
  }
  const lines = [diff];
  if (reply.problem) lines.push(reply.problem);
  if (note) lines.push(note);
  throw new CheckFailure(lines.join("\n"));
}

/** A server check that sends the check's sentence and expects the service's reply. */
function sentenceCheck(id: UppercaseCheckId, hint: string, service: Service): ServerCheck {
  return {
    side: "server",
    id,
    title: titleOf(id, service),
    hint,
    run: async (context) => {
      const data = utf8(sentenceOf(id, context.service));
      return expectReply(await request(context, data), data, { service: context.service });
    },
  };
}

/** The titles that differ for `count-s`. */
const COUNT_S_TITLES: Readonly<Partial<Record<CheckId, string>>> = {
  utf8: "multibyte UTF-8 (ü ß ſ 😀 €; ß and ſ are not the letter s)",
  multiline: "several lines in one stream (as nc sends a file): all of them are counted",
};

/** A check's title for `service`. */
function titleOf(id: UppercaseCheckId, service: Service): string {
  return (service === "count-s" ? COUNT_S_TITLES[id] : undefined) ?? TITLES[id];
}

const LONG_HINTS = {
  tcp: "TCP is a byte stream: one recv(1024) returns at most 1024 bytes, and often less. " +
    "Keep reading until recv() returns b'' (the client half-closed), then reply.",
  udp: "recvfrom(2048) cuts a longer datagram at 2048 bytes, silently. " +
    "Receive into a buffer of 65535 bytes.",
};

/** The hints of the sentence checks that only make sense for uppercasing, for `count-s`. */
const COUNT_S_HINTS = {
  basic: "Decode the bytes as UTF-8, count the letter s, and send the number back as " +
    "decimal digits (str(count).encode()), once the whole request is in.",
  mixed: "Count the letter s in either case, s and S: sentence.lower().count('s'), " +
    "or count('s') + count('S'); nothing else counts.",
  utf8: "Decode the bytes as UTF-8 (not ASCII) and count s and S only: ß and ſ are other " +
    "letters, so do not uppercase before counting (ß.upper() is SS).",
};

/** The sentence checks of a server, from basic ASCII to long lines. */
function serverBasics(transport: "tcp" | "udp", service: Service): ServerCheck[] {
  const counts = service === "count-s";
  return [
    sentenceCheck(
      "basic",
      counts ? COUNT_S_HINTS.basic : "Decode the bytes as UTF-8, uppercase, encode, send back.",
      service,
    ),
    sentenceCheck(
      "mixed",
      counts
        ? COUNT_S_HINTS.mixed
        : "Only letters change; digits, spaces and punctuation stay as they are.",
      service,
    ),
    sentenceCheck(
      "utf8",
      counts ? COUNT_S_HINTS.utf8 : "Decode the bytes as UTF-8 before uppercasing " +
        "(bytes.upper() changes ASCII only), and encode the reply as UTF-8.",
      service,
    ),
    sentenceCheck("long1k", LONG_HINTS[transport], service),
    sentenceCheck("long2k", LONG_HINTS[transport], service),
  ];
}

/** The split check of a TCP server. */
const splitServerCheck = (service: Service): ServerCheck => ({
  side: "server",
  id: "split",
  title: TITLES.split,
  hint: service === "count-s"
    ? "One recv() is not one message: read until the client half-closes (recv returns " +
      "b''), then count: the count of the first piece is not the count of the sentence."
    : "One recv() is not one message: read until the client half-closes (recv returns b''). " +
      "Decode with an incremental decoder (codecs.getincrementaldecoder, TextDecoder " +
      "{ stream: true }) or decode once at the end: a character can be split across reads.",
  run: async (context) => {
    const data = utf8(sentenceOf("split", context.service));
    const expected = expectedReply(data, context.service);
    const proxy = await startSplitProxy({ port: 0, target: context.address });
    let reply: Reply;
    try {
      reply = await request(context, data, {
        address: { hostname: "127.0.0.1", port: proxy.port },
      });
    } finally {
      await proxy.close();
    }
    if (replyMatches(reply.data, expected)) {
      return `the reply matched (${reply.data.length} bytes); ${proxy.stats()}`;
    }
    // Is it the splitting? The same request, sent whole, tells: a server
    // that cannot send non-ASCII text at all fails utf8, not this check.
    const whole = await request(context, data);
    if (reply.data.length > 0 && sameBytes(whole.data, reply.data)) {
      return "splitting changed nothing: the reply is the same as to the whole request " +
        `(${reply.data.length} bytes, not the expected ones: see the utf8 check); ${proxy.stats()}`;
    }
    const wholeNote = replyMatches(whole.data, expected)
      ? "sent whole, the same request gets the right reply"
      : `sent whole, the same request gets another reply: ${escapeBytes(whole.data, 60)}`;
    const diff = replyDiff(reply.data, expected);
    throw new CheckFailure(
      [diff, reply.problem, proxy.stats(), wholeNote].filter(Boolean).join("\n"),
    );
  },
});

/** Whether two byte arrays hold the same bytes. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

const concurrentCheck: ServerCheck = {
  side: "server",
  id: "concurrent",
  title: TITLES.concurrent,
  hint: "The textbook's TCPServer.py is iterative: while it waits in recv() for one client, " +
    "nobody else is served. Serve each connection in its own thread (threading, " +
    "socketserver.ThreadingTCPServer), process, or async task.",
  run: async (context) => {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REPLY_MS);
    let silent: ResettingConn;
    try {
      silent = await ResettingConn.connect(context.address, controller.signal);
    } catch (error) {
      throw new CheckFailure(`the first client could not connect: ${(error as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
    try {
      const data = utf8(SENTENCES.concurrent);
      const reply = await request(context, data, { ms: CONCURRENT_MS });
      // Served is what counts here: whether the reply is right is the
      // sentence checks' business.
      if (reply.data.length > 0) {
        return `the second client got a reply (${reply.data.length} bytes) while the first ` +
          "stayed connected and silent";
      }
      if (reply.end === "timeout") {
        throw new CheckFailure(
          `the second client got no reply within ${CONCURRENT_MS / 1000} s while the first ` +
            "client stayed connected and silent: the server serves one client at a time " +
            "(an iterative server)",
        );
      }
      throw new CheckFailure(
        `the second client got no reply (${reply.problem ?? "the connection closed"}) while ` +
          "the first client stayed connected and silent",
      );
    } finally {
      await finishFirstClient(silent, context.halfCloseDelayMs);
    }
  },
};

/**
 * Ends the concurrency check's first client as a client would: it sends its
 * own sentence, half-closes and reads until the server closes (within 1 s;
 * the reply is not judged). Closing it without a byte would crash a server
 * that fails on an empty connection (C servers that index buffer[n - 1]
 * after a read of 0 bytes), and the next check, not this one, would be
 * blamed, or not, as the timing went. As in every request, the half-close
 * waits `halfCloseDelayMs`, is left out if the server closed first, and a
 * server that closed first is reset: no TIME_WAIT is left on a fixed port.
 */
async function finishFirstClient(conn: ResettingConn, halfCloseDelayMs: number): Promise<void> {
  const timer = setTimeout(() => conn.close({ reset: true }), 1000);
  try {
    await conn.write(utf8("first client"));
    await conn.closeWriteAfter(halfCloseDelayMs);
    while (await conn.read() !== null) {
      // Its reply is not judged.
    }
  } catch {
    // Closed by the timer, or by the server.
  } finally {
    clearTimeout(timer);
    await conn.close();
  }
}

/** The invalid UTF-8 check of a server: survival is judged, not the bytes of the replies. */
function invalidCheck(transport: "tcp" | "udp"): ServerCheck {
  return {
    side: "server",
    id: "invalid",
    title: TITLES.invalid,
    hint: "bytes.decode() raises UnicodeDecodeError on invalid UTF-8, and an uncaught exception " +
      "ends the server. Decode with errors='replace' (invalid bytes become U+FFFD), " +
      "or catch the error and keep serving.",
    run: async (context) => {
      const first = await request(context, INVALID, { ms: transport === "tcp" ? 2000 : 1000 });
      const answer = first.data.length > 0
        ? `it answered the invalid bytes with ${escapeBytes(first.data, 60)}`
        : `it did not answer the invalid bytes (${first.problem ?? "it closed the connection"})`;
      const next = await request(context, utf8(SENTENCES.invalid), {
        ms: transport === "tcp" ? REPLY_MS : 1000,
      });
      // Survival: the next request got an answer. Whether that answer is
      // right is the sentence checks' business (a NUL-padded one counts).
      if (next.data.length > 0) {
        return `the server kept serving: the next request got a reply ` +
          `(${next.data.length} bytes); ${answer}`;
      }
      const server = context.server;
      await server.waitUntil(() => !server.running, 300);
      if (first.data.length > 0 && server.exitedCleanly) {
        // It answered, then ended normally: not this check's bug.
        return `${answer}, then exited with code 0 without a crash (a server that stops ` +
          "after one client fails serves_many, not this check)";
      }
      const noReply = `the next request got no reply (${
        next.problem ?? "the connection closed without a reply"
      })`;
      throw new CheckFailure(
        server.running
          ? `after invalid UTF-8 (${escapeBytes(INVALID)}) ${noReply}\n${answer}`
          : `the server ${server.describeExit()} after receiving invalid UTF-8 ` +
            `(${escapeBytes(INVALID)}): ${noReply}\n${answer}`,
      );
    },
  };
}

/** The multi-line check of a TCP server: newlines are bytes like any other. */
const multilineCheck = (service: Service): ServerCheck => ({
  side: "server",
  id: "multiline",
  title: titleOf("multiline", service),
  hint: service === "count-s"
    ? "Count the letter s in the whole request, every line of it, and reply once: `nc` " +
      "sends a file's lines in one stream. Reading one line (readLine()) per connection " +
      "counts only the first."
    : "Uppercase the whole request, newlines included, and send all of it back: `nc` sends " +
      "a file's lines in one stream. Reading one line (readLine()) per connection answers " +
      "only the first; strip() or split() loses the newlines.",
  run: async (context) => {
    const data = utf8(SENTENCES.multiline);
    const reply = await request(context, data);
    const expected = expectedReply(data, context.service);
    if (replyMatches(reply.data, expected)) {
      return `the reply matched (${reply.data.length} bytes, 3 lines)`;
    }
    const lines = SENTENCES.multiline.split("\n").filter(Boolean);
    const replyTo = (text: string) => expectedReply(utf8(text), context.service);
    const why = replyMatches(reply.data, replyTo(`${lines[0]}\n`))
      ? context.service === "count-s"
        ? "only the first line was counted: the server reads one line per connection"
        : "only the first line came back: the server reads one line per connection"
      : context.service === "upper" &&
          [lines.join(""), lines.join(" ")].some((joined) =>
            replyMatches(reply.data, replyTo(joined))
          )
      ? "the lines came back without their newlines"
      : undefined;
    const diff = replyDiff(reply.data, expected);
    throw new CheckFailure([why, diff, reply.problem].filter(Boolean).join("\n"));
  },
});

/** How the `closes` check describes a reply that ended without the server's close. */
function neverClosed(reply: Reply, expected: Uint8Array): string {
  if (reply.end !== "settled") {
    return `the server neither finished its reply nor closed the connection within ` +
      `${REPLY_MS / 1000} s (${reply.problem})`;
  }
  const waited = `(waited ${CLOSE_MS / 1000} s after the last byte of the reply)`;
  return replyMatches(reply.data, expected)
    ? `the reply was right, but the server never closed the connection ${waited}: a client ` +
      "that reads to the end of the stream, like `nc -N` or this project's client, hangs"
    : `the server never closed the connection ${waited}; the reply was not the expected one ` +
      "either (see the sentence checks)";
}

/** The `closes` check: after its reply, a TCP server closes the connection. */
const closesCheck: ServerCheck = {
  side: "server",
  id: "closes",
  title: TITLES.closes,
  hint: "Close the connection socket once the reply is sent (connectionSocket.close()), also " +
    "when the client has closed its side; in Java, close it (or use try-with-resources). " +
    "On end of stream (recv() returns b'', read() returns -1, readLine() null) stop reading.",
  run: async (context) => {
    const data = utf8(SENTENCES.closes);
    const reply = await request(context, data, { settleMs: CLOSE_MS });
    if (reply.end === "eof") {
      if (reply.data.length > 0) return `the server closed the connection after its reply`;
      throw new CheckFailure("the server closed the connection without replying");
    }
    throw new CheckFailure(neverClosed(reply, expectedReply(data, context.service)));
  },
};

/** The `serves_many` check: one process serves client after client. */
const servesManyCheck: ServerCheck = {
  side: "server",
  id: "serves_many",
  title: TITLES.serves_many,
  hint: "A server serves clients forever: keep accept() (or recvfrom()) and the reply in a " +
    "`while True:` loop, and do not exit or close the welcoming socket after one client.",
  run: async (context) => {
    for (let i = 1; i <= MANY; i++) {
      const reply = await request(context, utf8(`client ${i} of ${MANY}`), {
        ms: context.transport === "udp" ? 1000 : REPLY_MS,
      });
      if (reply.data.length > 0) continue;
      const served = i === 1 ? "" : `; the ${i - 1} before it were answered`;
      const server = context.server;
      await server.waitUntil(() => !server.running, 300);
      const exit = server.running ? "" : `, and the server ${server.describeExit()}`;
      throw new CheckFailure(
        `client ${i} of ${MANY} got no reply (${
          reply.problem ?? "the connection closed without a reply"
        })${served}${exit}`,
      );
    }
    return `${MANY} clients in a row were answered by the same process`;
  },
};

// ---------------------------------------------------------------------------
// Client checks
// ---------------------------------------------------------------------------

/**
 * Runs the kit's reference server ({@linkcode startReferenceServer}) on
 * `port` (both loopback addresses) for the duration of `body`, which gets
 * the port and a count of what reached the server: none means no client
 * ever did.
 */
async function withOurServer<T>(
  { transport, port, service }: { transport: "tcp" | "udp"; port: number; service: Service },
  body: (port: number, traffic: () => number) => Promise<T>,
): Promise<T> {
  // A fixed port that a proxy of the same check just closed can stay taken
  // for a moment.
  await portBecomesFree(transport, port);
  const server = startReferenceServer(transport, port, service);
  try {
    return await body(server.port, server.traffic);
  } finally {
    await withDeadline(server.close(), 5000, "the reference server to shut down");
  }
}

/**
 * "exited with code 0 after 120 ms", "was still running 5 s after its first
 * request (killed)" or "sent nothing in 10 s (killed)".
 */
function howItEnded(run: ClientRun, deadlineMs: number): string {
  if (run.exitedOnItsOwn) return `the client ${run.program.describeExit()} after ${run.ms} ms`;
  if (run.contactMs === undefined) {
    return `the client reached no server in ${Math.round(run.ms / 100) / 10} s and was killed`;
  }
  return `the client was still running ${deadlineMs / 1000} s after it first reached the ` +
    `server (${run.contactMs} ms after it started) and was killed`;
}

/** "the client never reached the server: ..." for a client that sent nothing. */
function neverReached(run: ClientRun, transport: "tcp" | "udp"): string {
  const what = transport === "tcp" ? "no connection with a request" : "no datagram";
  return `the client never reached the server: ${what} arrived on port ${run.port} of ` +
    "127.0.0.1 or ::1, where it was told to send (is its server name or port hard-coded?)";
}

/**
 * Runs the client with `sentence` and throws unless its stdout has the
 * reply; `describe` adds a note about what happened (read after the run).
 */
async function expectClientPrints(
  context: ClientContext,
  { port, sentence, describe = () => "", traffic }: {
    port: number;
    sentence: string;
    describe?: () => string;
    /** How much reached the server; checked when the reply is missing. */
    traffic: () => number;
  },
): Promise<string> {
  const expect = expectedReply(utf8(sentence), context.service);
  const run = await context.runClient({ port, input: `${sentence}\n`, expect, contacts: traffic });
  const note = describe();
  if (run.found) {
    return `the reply appeared in the client's output (${expect.length} bytes)` +
      (note ? `; ${note}` : "");
  }
  // A connection or datagram can still wait in the server's queue: give it a moment.
  for (let i = 0; i < 10 && traffic() === 0; i++) await sleep(20);
  const lines = [
    "the client's output does not contain the expected reply",
    outputDiff(run.program.stdoutBytes(), expect),
    howItEnded(run, context.deadlineMs),
  ];
  if (traffic() === 0) lines.push(neverReached(run, context.transport));
  if (note) lines.push(note);
  throw new CheckFailure(lines.join("\n"));
}

/** A client check: the client must print the service's reply to the check's sentence. */
function clientSentenceCheck(id: UppercaseCheckId, hint: string, service: Service): ClientCheck {
  return {
    side: "client",
    id,
    title: titleOf(id, service),
    hint,
    run: (context) =>
      withOurServer(
        { transport: context.transport, port: context.listenPort, service: context.service },
        (port, traffic) =>
          expectClientPrints(context, {
            port,
            sentence: sentenceOf(id, context.service),
            traffic,
          }),
      ),
  };
}

const CLIENT_LONG_HINTS = {
  tcp: "One recv(1024) returns at most 1024 bytes of the reply, and often less. " +
    "Half-close after sending (clientSocket.shutdown(SHUT_WR)) and read until recv " +
    "returns b''.",
  udp: "recvfrom(2048) cuts a longer reply at 2048 bytes, silently. Use recvfrom(65535).",
};

/** For `count-s` the reply is short: a long line tests that the whole line is sent. */
const COUNT_S_CLIENT_LONG_HINT = "Send the whole line: read it whole from stdin (not into a " +
  "1024-byte buffer) and send all of it (sendall(), or loop on send()); the server counts " +
  "what arrives.";

/** The sentence checks of a client, from basic ASCII to long lines. */
function clientBasics(transport: "tcp" | "udp", service: Service): ClientCheck[] {
  const longHint = service === "count-s" ? COUNT_S_CLIENT_LONG_HINT : CLIENT_LONG_HINTS[transport];
  return [
    clientSentenceCheck(
      "basic",
      "Read a line from stdin, send it, print the reply (a prompt and a prefix are fine).",
      service,
    ),
    clientSentenceCheck(
      "mixed",
      "Send the line exactly as typed; print the reply as received.",
      service,
    ),
    clientSentenceCheck(
      "utf8",
      "Encode the line as UTF-8 and decode the reply as UTF-8 (not ASCII).",
      service,
    ),
    clientSentenceCheck("long1k", longHint, service),
    clientSentenceCheck("long2k", longHint, service),
  ];
}

const splitClientCheck: ClientCheck = {
  side: "client",
  id: "split",
  title: TITLES.split,
  hint: "The reply can arrive in many pieces: read until recv() returns b'' and decode " +
    "the whole reply once (or with an incremental decoder), not each piece on its own.",
  run: async (context) => {
    const sentence = sentenceOf("split", context.service);
    const input = `${sentence}\n`;
    const expect = expectedReply(utf8(sentence), context.service);
    const { split, stats, requests } = await withOurServer(
      { transport: "tcp", port: 0, service: context.service },
      async (serverPort) => {
        const proxy = await startSplitProxy({
          port: context.listenPort,
          target: { hostname: "127.0.0.1", port: serverPort },
          splitRequests: false, // the replies are what a client reads
        });
        try {
          const split = await context.runClient({
            port: proxy.port,
            input,
            expect,
            contacts: proxy.requests,
          });
          return { split, stats: proxy.stats(), requests: proxy.requests() };
        } finally {
          await proxy.close();
        }
      },
    );
    if (split.found) return `the reply appeared in the client's output; ${stats}`;
    const lines = [
      "the client's output does not contain the expected reply",
      outputDiff(split.program.stdoutBytes(), expect),
      howItEnded(split, context.deadlineMs),
      stats,
    ];
    if (requests === 0) {
      lines.push(neverReached(split, context.transport));
      throw new CheckFailure(lines.join("\n"));
    }
    // Is it the splitting? The same reply sent whole tells: a client that
    // cannot print non-ASCII text at all fails utf8, not this check.
    const whole = await withOurServer(
      { transport: "tcp", port: context.listenPort, service: context.service },
      (port, traffic) => context.runClient({ port, input, expect, contacts: traffic }),
    );
    if (!whole.found && sameBytes(whole.program.stdoutBytes(), split.program.stdoutBytes())) {
      return "splitting changed nothing: the client prints the same for the whole reply " +
        `(not the expected text: see the utf8 check); ${stats}`;
    }
    lines.push(
      whole.found
        ? "sent whole, the same reply is printed right: the client breaks when the reply " +
          "arrives in pieces"
        : "sent whole, the same reply makes it print something else",
    );
    throw new CheckFailure(lines.join("\n"));
  },
};

/**
 * A robustness check of a client counts only if the client sent its request:
 * a client that crashed first (a compile error, Python 2 code run by
 * python3, an unknown host name) has shown nothing about timeouts.
 */
function requireRequest(run: ClientRun, middleman: Middleman, context: ClientContext) {
  if (middleman.requests() > 0) return;
  throw new CheckFailure(
    `${neverReached(run, context.transport)}, so this check shows nothing about how it ` +
      `handles a missing reply; ${howItEnded(run, context.deadlineMs)}\n${middleman.stats()}`,
  );
}

const lossyCheck: ClientCheck = {
  side: "client",
  id: "lossy",
  title: TITLES.lossy,
  hint: "UDP loses datagrams and never says so: recvfrom() then waits forever. Set a " +
    "timeout (clientSocket.settimeout(1)), catch socket.timeout, send again a few " +
    "times, then give up with a message.",
  run: (context) =>
    withOurServer({ transport: "udp", port: 0, service: context.service }, async (serverPort) => {
      const proxy = await startLossyUdpProxy({
        port: context.listenPort,
        target: { hostname: "127.0.0.1", port: serverPort },
        seed: 2024,
        lossRate: 0.3,
      });
      try {
        const sentence = sentenceOf("lossy", context.service);
        const expect = expectedReply(utf8(sentence), context.service);
        const run = await context.runClient({
          port: proxy.port,
          input: `${sentence}\n`,
          expect,
          contacts: proxy.requests,
        });
        if (run.found) return `the reply got through after retries; ${proxy.stats()}`;
        requireRequest(run, proxy, context);
        if (run.exitedOnItsOwn) {
          return `no reply got through, and ${howItEnded(run, context.deadlineMs)}, ` +
            `which is a clean timeout; ${proxy.stats()}`;
        }
        throw new CheckFailure(
          "the first request datagram was lost, and " + howItEnded(run, context.deadlineMs) +
            `: it neither retried successfully nor gave up\n${proxy.stats()}`,
        );
      } finally {
        await proxy.close();
      }
    }),
};

/** The "never replies" check of a client. */
function noReplyCheck(transport: "tcp" | "udp"): ClientCheck {
  return {
    side: "client",
    id: "no_reply",
    title: TITLES.no_reply,
    hint: transport === "tcp"
      ? "recv() waits forever for a server that never answers. Set a timeout " +
        "(clientSocket.settimeout(2)), catch socket.timeout, say so and exit."
      : "recvfrom() waits forever when no reply comes. Set a timeout " +
        "(clientSocket.settimeout(1)), catch socket.timeout, say so and exit.",
    run: async (context) => {
      const stub = transport === "tcp"
        ? await startSilentTcpServer(context.listenPort)
        : await startSilentUdpServer(context.listenPort);
      try {
        const run = await context.runClient({
          port: stub.port,
          input: `${SENTENCES.no_reply}\n`,
          contacts: stub.requests,
        });
        requireRequest(run, stub, context);
        if (run.exitedOnItsOwn) return `${howItEnded(run, context.deadlineMs)}; ${stub.stats()}`;
        throw new CheckFailure(`${howItEnded(run, context.deadlineMs)}\n${stub.stats()}`);
      } finally {
        await stub.close();
      }
    },
  };
}

/** Which assignment's checks {@linkcode checksFor} gives. */
export interface ChecksForOptions {
  /** "uppercase" (the default) or "session" (seed 001's TCP task). */
  assignment?: Assignment;
  /** The uppercase app's service: "upper" (the default) or "count-s". */
  service?: Service;
}

/**
 * The checks for `role` in `assignment` (default the uppercase app; for
 * "session" see {@linkcode sessionChecksFor}), in the order they run. For a server the checks
 * most likely to crash it run last: the concurrency check (closing its
 * silent client ends a readLine() with null) and invalid UTF-8.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(
 *   checksFor("udp_server").map((check) => check.id),
 *   ["basic", "mixed", "utf8", "long1k", "long2k", "serves_many", "invalid"],
 * );
 * // The modified assignment has the same checks, with other sentences and hints.
 * assert.match(checksFor("tcp_server", { service: "count-s" })[1].hint, /s and S/);
 * ```
 */
export function checksFor(role: Role, options: ChecksForOptions = {}): Check[] {
  const { assignment = "uppercase", service = "upper" } = options;
  if (assignment === "session") return sessionChecksFor(role); // seed 001's TCP task
  switch (role) {
    case "tcp_server":
      return [
        ...serverBasics("tcp", service),
        splitServerCheck(service),
        multilineCheck(service),
        closesCheck,
        servesManyCheck,
        concurrentCheck,
        invalidCheck("tcp"),
      ];
    case "udp_server":
      return [...serverBasics("udp", service), servesManyCheck, invalidCheck("udp")];
    case "tcp_client":
      return [...clientBasics("tcp", service), splitClientCheck, noReplyCheck("tcp")];
    case "udp_client":
      return [...clientBasics("udp", service), lossyCheck, noReplyCheck("udp")];
  }
}
