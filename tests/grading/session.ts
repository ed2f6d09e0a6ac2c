/**
 * The session assignment (`GRADE_ASSIGNMENT=session`): seed 001's TCP task.
 * One connection carries many messages, each a line ending in "\n"; each is
 * answered by the line "Your data was N bytes" (N: the message's UTF-8
 * bytes, without the newline); "Exit" is answered "Disconnect", and the
 * server closes that connection and serves the next client.
 *
 * A server under test is checked by the kit acting as a client; a client
 * under test talks to the kit's reference session server
 * ({@linkcode startReferenceSessionServer}).
 *
 * @module
 */
import type { Role } from "./config.ts";
import type {
  Check,
  ClientCheck,
  ClientContext,
  ServerCheck,
  ServerContext,
  SessionCheckId,
} from "./checks.ts";
import { CheckFailure, escapeBytes, indexOfBytes, outputDiff, utf8 } from "./compare.ts";
import { sleep } from "./net.ts";
import { startReferenceSessionServer } from "./reference.ts";
import { waitUntilRead } from "./sockets.ts";

/** Deadline for one reply line, in ms. */
const LINE_MS = 3000;
/** How long the server gets to close the connection after "Disconnect", in ms. */
const CLOSE_MS = 1000;
/** How long to wait for a reply that should not come, in ms. */
const SETTLE_MS = 300;

/**
 * The reply to one message: its UTF-8 bytes counted.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(sessionReplyFor("né 😀"), "Your data was 8 bytes");
 * assert.equal(sessionReplyFor("Exit"), "Disconnect");
 * ```
 */
export function sessionReplyFor(message: string): string {
  return message === "Exit" ? "Disconnect" : `Your data was ${utf8(message).length} bytes`;
}

const TITLES: Readonly<Record<SessionCheckId, string>> = {
  session_many: "several messages on one connection, each answered in turn",
  session_bytes: "N counts UTF-8 bytes, not characters (né, grüße 😀 €, 中文)",
  session_two_in_one: "two messages in one write (one recv() can hold two messages)",
  session_split: "one message written a byte at a time (one message can take many recv()s)",
  session_exit: 'Exit is answered "Disconnect", then the connection is closed',
  session_next_client: "after a client's Exit, the next clients are served",
};

const FRAMING_HINT = "TCP is a byte stream: one recv() is not one message. Read until the " +
  "newline (conn.makefile('rb').readline() in Python, BufferedReader.readLine() in Java), " +
  "keep what follows it for the next message, and end every reply with \\n.";

// ---------------------------------------------------------------------------
// The kit as a session client
// ---------------------------------------------------------------------------

/** A reply line, or why none came. */
type LineOutcome = { line: string } | { end: "eof" | "timeout" | "error"; problem: string };

/** One connection to the server under test, read as lines. */
class SessionConn {
  #conn: Deno.TcpConn;
  #pending = new Uint8Array(0);
  #read: Promise<number | null> | undefined;
  #chunk = new Uint8Array(16 * 1024);

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    conn.setNoDelay(true); // each write its own segment: the split check relies on it
  }

  static async open(context: ServerContext): Promise<SessionConn> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), LINE_MS);
    try {
      return new SessionConn(await Deno.connect({ ...context.address, signal: controller.signal }));
    } catch (error) {
      throw new CheckFailure(`could not connect to the server: ${(error as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Waits (at most 1 s) until the server has read everything written so far. */
  serverHasRead(): Promise<void> {
    return waitUntilRead({
      readerPort: this.#conn.remoteAddr.port,
      writerPort: this.#conn.localAddr.port,
    });
  }

  /** Writes `text` (a failed write is left for the next read to report). */
  async write(text: string | Uint8Array) {
    const data = typeof text === "string" ? utf8(text) : text;
    try {
      for (let written = 0; written < data.length;) {
        written += await this.#conn.write(data.subarray(written));
      }
    } catch {
      // The server closed or reset: the reply read says so.
    }
  }

  /** The next line (without "\n" or "\r\n"), or why none came within `ms`. */
  async line(ms = LINE_MS): Promise<LineOutcome> {
    const stopAt = performance.now() + ms;
    for (;;) {
      const newline = this.#pending.indexOf(10);
      if (newline >= 0) {
        let line = this.#pending.subarray(0, newline);
        this.#pending = this.#pending.slice(newline + 1);
        if (line.at(-1) === 13) line = line.subarray(0, -1);
        return { line: new TextDecoder().decode(line) };
      }
      const left = stopAt - performance.now();
      const got = await this.#next(Math.max(0, left));
      if (got === "timeout") {
        const part = this.#pending.length > 0
          ? ` (received without a newline: ${escapeBytes(this.#pending, 80)})`
          : "";
        return { end: "timeout", problem: `no reply line within ${ms / 1000} s${part}` };
      }
      if (got === null) {
        const part = this.#pending.length > 0
          ? `, after ${escapeBytes(this.#pending, 80)} without a newline`
          : "";
        return { end: "eof", problem: `the server closed the connection${part}` };
      }
      if (got instanceof Error) {
        return { end: "error", problem: `the connection failed: ${got.message}` };
      }
    }
  }

  /** One read into #pending, or "timeout"; a read that times out stays pending for the next call. */
  async #next(ms: number): Promise<number | null | "timeout" | Error> {
    this.#read ??= this.#conn.read(this.#chunk);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => timer = setTimeout(resolve, ms, "timeout"));
    try {
      const n = await Promise.race([this.#read, timeout]);
      if (n === "timeout") return n;
      this.#read = undefined;
      if (n !== null) {
        const joined = new Uint8Array(this.#pending.length + n);
        joined.set(this.#pending);
        joined.set(this.#chunk.subarray(0, n), this.#pending.length);
        this.#pending = joined;
      }
      return n;
    } catch (error) {
      this.#read = undefined;
      return error as Error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Closes the connection; a pending read ends. */
  async close() {
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
    await this.#read?.catch(() => {});
  }
}

/** Sends each message as a line, one at a time, and expects its reply before the next. */
async function converse(conn: SessionConn, messages: string[]): Promise<string[]> {
  const got: string[] = [];
  for (const message of messages) {
    await conn.write(`${message}\n`);
    const outcome = await conn.line();
    const expected = sessionReplyFor(message);
    if ("line" in outcome && outcome.line === expected) {
      got.push(outcome.line);
      continue;
    }
    const sent = `sent ${JSON.stringify(message)} (${utf8(message).length} bytes)`;
    const before = got.length > 0 ? `; the ${got.length} message(s) before it were answered` : "";
    throw new CheckFailure(
      "line" in outcome
        ? `${sent}: expected the reply ${JSON.stringify(expected)}, got ${
          JSON.stringify(outcome.line)
        }${before}`
        : `${sent}: ${outcome.problem}${before}`,
    );
  }
  return got;
}

/** A server check with its own connection, closed (after an Exit) at the end. */
function sessionServerCheck(
  id: SessionCheckId,
  hint: string,
  body: (conn: SessionConn, context: ServerContext) => Promise<string>,
): ServerCheck {
  return {
    side: "server",
    id,
    title: TITLES[id],
    hint,
    run: async (context) => {
      const conn = await SessionConn.open(context);
      try {
        return await body(conn, context);
      } finally {
        await conn.close();
      }
    },
  };
}

const SLIDES = ["Hi", "Testing Connection", "Message1", "Message2"];

const serverChecks: ServerCheck[] = [
  sessionServerCheck(
    "session_many",
    "Keep one connection open for many messages: loop on recv() and reply to each, until " +
      "Exit or until recv() returns b'' (the client left). End every reply with \\n.",
    async (conn) => {
      await converse(conn, [...SLIDES, "Exit"]);
      return `${SLIDES.length} messages and Exit were answered on one connection`;
    },
  ),
  sessionServerCheck(
    "session_bytes",
    "Count bytes, not characters: len(data) of the bytes received (without the newline), " +
      "not len(data.decode()); 'é' is 2 bytes in UTF-8, '😀' is 4.",
    async (conn) => {
      const messages = ["né", "grüße 😀 €", "中文"];
      await converse(conn, [...messages, "Exit"]);
      return `the byte counts were right (${messages.map(sessionReplyFor).join("; ")})`;
    },
  ),
  sessionServerCheck("session_two_in_one", FRAMING_HINT, async (conn) => {
    await conn.write("Message1\nMessage two\n");
    for (const message of ["Message1", "Message two"]) {
      const outcome = await conn.line();
      const expected = sessionReplyFor(message);
      if ("line" in outcome && outcome.line === expected) continue;
      // 19 to 21 bytes: both messages, with or without their newlines.
      const why = "line" in outcome && /^Your data was (19|20|21) bytes$/.test(outcome.line)
        ? "; the server took the whole recv() as one message"
        : "";
      throw new CheckFailure(
        `sent "Message1\\nMessage two\\n" in one write: expected ${JSON.stringify(expected)}, ` +
          `${"line" in outcome ? `got ${JSON.stringify(outcome.line)}` : outcome.problem}${why}`,
      );
    }
    await converse(conn, ["Exit"]);
    return "two messages in one write got two replies, in order";
  }),
  sessionServerCheck("session_split", FRAMING_HINT, async (conn) => {
    const message = "split into pieces"; // ASCII: counting bytes is session_bytes' business
    const bytes = utf8(`${message}\n`);
    for (const [i, byte] of bytes.entries()) {
      await conn.write(new Uint8Array([byte]));
      // The first byte alone, however late the server reads; then separate segments.
      if (i === 0) await conn.serverHasRead();
      else await sleep(2);
    }
    const first = await conn.line();
    const expected = sessionReplyFor(message);
    if (!("line" in first) || first.line !== expected) {
      // Fewer bytes than the message: whatever one recv() returned (a byte,
      // or a few when the system joined the pieces) was taken as the message.
      const counted = "line" in first ? /^Your data was (\d+) bytes?$/.exec(first.line) : null;
      const part = counted !== null && Number(counted[1]) < bytes.length - 1;
      throw new CheckFailure(
        `sent ${JSON.stringify(message)} (${bytes.length - 1} bytes) a byte at a time: expected ` +
          `${JSON.stringify(expected)}, ${
            "line" in first ? `got ${JSON.stringify(first.line)}` : first.problem
          }` + (part ? "; the server took one recv() as one message" : ""),
      );
    }
    const extra = await conn.line(SETTLE_MS);
    if ("line" in extra) {
      throw new CheckFailure(
        `one message got more than one reply: then ${JSON.stringify(extra.line)}; ` +
          "the server answers each recv(), not each line",
      );
    }
    await converse(conn, ["Exit"]);
    return `one message written in ${bytes.length} pieces got one reply`;
  }),
  sessionServerCheck(
    "session_exit",
    'On the message "Exit", reply "Disconnect\\n", then close the connection socket (and go ' +
      "back to accept()).",
    async (conn) => {
      await converse(conn, ["Hi", "Exit"]);
      const after = await conn.line(CLOSE_MS);
      if ("end" in after && after.end === "eof") {
        return "Exit was answered Disconnect, and the server closed the connection";
      }
      throw new CheckFailure(
        "line" in after
          ? `after Disconnect the server sent more: ${JSON.stringify(after.line)}`
          : `after Disconnect the server did not close the connection within ${
            CLOSE_MS / 1000
          } s (${after.problem})`,
      );
    },
  ),
  {
    side: "server",
    id: "session_next_client",
    title: TITLES.session_next_client,
    hint: "After a session ends, go back to accept() for the next client: keep accept() in a " +
      "`while True:` loop, and do not close the welcoming socket.",
    run: async (context) => {
      for (let i = 1; i <= 3; i++) {
        const conn = await SessionConn.open(context).catch((error: Error) => {
          throw new CheckFailure(`client ${i} of 3: ${error.message}`);
        });
        try {
          await converse(conn, [`client ${i}`, "Exit"]).catch((error: Error) => {
            throw new CheckFailure(`client ${i} of 3: ${error.message}`);
          });
        } finally {
          await conn.close();
        }
      }
      return "three clients in a row were each served and disconnected";
    },
  },
];

// ---------------------------------------------------------------------------
// Client checks: the client under test against the reference session server
// ---------------------------------------------------------------------------

/** Runs the client with `input` against the reference server; checks what it printed. */
async function clientRun(
  context: ClientContext,
  { input, replies, splitReplies = false }: {
    input: string;
    replies: string[];
    splitReplies?: boolean;
  },
): Promise<{ connections: number; messages: string[]; exitedOnItsOwn: boolean; note: string }> {
  await using server = startReferenceSessionServer(context.listenPort, { splitReplies });
  const expect = utf8(replies.at(-1)!);
  const run = await context.runClient({
    port: server.port,
    input,
    expect,
    contacts: server.connections,
  });
  const stdout = run.program.stdoutBytes();
  // Each reply must appear, in order.
  let from = 0;
  for (const reply of replies) {
    const at = indexOfBytes(stdout.subarray(from), utf8(reply));
    if (at < 0) {
      const lines = [
        `the client's output lacks the reply ${JSON.stringify(reply)} (in order)`,
        outputDiff(stdout, utf8(replies.join("\n"))),
        `the reference server saw ${server.connections()} connection(s) and the messages ` +
        JSON.stringify(server.messages()),
      ];
      if (server.connections() === 0) {
        lines.push("the client never reached the server (is its server name or port hard-coded?)");
      }
      throw new CheckFailure(lines.join("\n"));
    }
    from += at + reply.length;
  }
  return {
    connections: server.connections(),
    messages: server.messages(),
    exitedOnItsOwn: run.exitedOnItsOwn,
    note: `the reference server saw ${server.connections()} connection(s)`,
  };
}

const clientChecks: ClientCheck[] = [
  {
    side: "client",
    id: "session_many",
    title: TITLES.session_many,
    hint: "Connect once, then loop: read a line, send it (with \\n), print the reply; stop " +
      "after Exit. Connecting again for each message is the uppercase app, not the session.",
    run: async (context) => {
      const messages = [...SLIDES, "Exit"];
      const result = await clientRun(context, {
        input: messages.map((m) => `${m}\n`).join(""),
        replies: messages.map(sessionReplyFor),
      });
      if (result.connections !== 1) {
        throw new CheckFailure(
          `the replies were printed, but over ${result.connections} connections: a session ` +
            "sends every message on one connection",
        );
      }
      return `every reply was printed; one connection carried ${result.messages.length} messages`;
    },
  },
  {
    side: "client",
    id: "session_bytes",
    title: "multibyte text is sent as UTF-8 and the replies printed",
    hint: "Encode each message as UTF-8 (message.encode()) and send it with its newline.",
    run: async (context) => {
      const messages = ["né", "grüße 😀 €", "Exit"];
      const result = await clientRun(context, {
        input: messages.map((m) => `${m}\n`).join(""),
        replies: messages.map(sessionReplyFor),
      });
      return `the byte counts came back as expected; ${result.note}`;
    },
  },
  {
    side: "client",
    id: "session_split",
    title: "replies that arrive in pieces are printed whole",
    hint: "One recv() is not one reply: read until the newline (a file from " +
      "socket.makefile() and readline()), and keep the rest for the next reply.",
    run: async (context) => {
      const messages = ["Hi", "Testing Connection", "Exit"];
      const result = await clientRun(context, {
        input: messages.map((m) => `${m}\n`).join(""),
        replies: messages.map(sessionReplyFor),
        splitReplies: true,
      });
      return `every reply was printed whole; ${result.note}`;
    },
  },
  {
    side: "client",
    id: "session_exit",
    title: 'after Exit, "Disconnect" is printed and the client exits on its own',
    hint: 'After sending Exit, print the reply ("Disconnect"), close the socket and end the ' +
      "loop; do not read another line or wait for more replies.",
    run: async (context) => {
      await using server = startReferenceSessionServer(context.listenPort);
      const run = await context.runClient({
        port: server.port,
        input: "Hi\nExit\n",
        contacts: server.connections,
      });
      const stdout = run.program.stdoutBytes();
      if (indexOfBytes(stdout, utf8("Disconnect")) < 0) {
        throw new CheckFailure(
          `the client's output lacks "Disconnect"\n${outputDiff(stdout, utf8("Disconnect"))}\n` +
            `the reference server saw the messages ${JSON.stringify(server.messages())}`,
        );
      }
      if (!run.exitedOnItsOwn) {
        throw new CheckFailure(
          `the client printed Disconnect but was still running ${
            context.deadlineMs / 1000
          } s after it connected and was killed`,
        );
      }
      return `the client printed Disconnect and ${run.program.describeExit()} after ${run.ms} ms`;
    },
  },
];

/**
 * The session assignment's checks for `role`, in the order they run (none
 * for the UDP roles: the task is TCP only).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(
 *   sessionChecksFor("tcp_client").map((check) => check.id),
 *   ["session_many", "session_bytes", "session_split", "session_exit"],
 * );
 * assert.deepEqual(sessionChecksFor("udp_server"), []);
 * ```
 */
export function sessionChecksFor(role: Role): Check[] {
  if (role === "tcp_server") return serverChecks;
  if (role === "tcp_client") return clientChecks;
  return [];
}
