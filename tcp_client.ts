#!/usr/bin/env -S deno run --allow-net
/**
 * TCPClient: the textbook's uppercase client over TCP, in Deno.
 *
 * Sends a sentence to the server and prints the UPPERCASE reply.
 *
 * ```sh
 * deno run --allow-net tcp_client.ts hello world      # one sentence
 * deno run --allow-net tcp_client.ts                  # asks, until Ctrl-D
 * printf 'one\ntwo\n' | deno run --allow-net tcp_client.ts --port 12000
 * ```
 *
 * Part 1 of this file is the textbook's TCPClient.py as code, step for step:
 * the Python line of each step is the comment above it. Part 2 is what good
 * code adds: a half-close and a read to the end of the stream (so a long
 * reply is whole), printed as it arrives (so an endless reply cannot fill the
 * memory), timeouts, both loopback addresses for `localhost`, and one clear
 * line for every error.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createInterface } from "node:readline";
import process from "node:process";

// ===========================================================================
// Part 1: the textbook's TCPClient.py, step for step
// ===========================================================================

const DEFAULT_PORT = 12000; // serverPort = 12000 (--port changes it)

/** The textbook's prompt, and the one for its suggested modification (--service count-s). */
const PROMPT = { upper: "Input lowercase sentence:", "count-s": "Input sentence:" };

/** Runs the client from the command line and resolves to the exit code. */
async function main(args: string[]): Promise<number> {
  const options = parseCommandLine(args); // serverName (--host), --port; --help; mistakes
  if (typeof options === "number") return options; // exit 0 after --help, 2 after a mistake
  if (options.session) return await sessionMain(options); // Part 3: seed 001's task
  // sentence = input('Input lowercase sentence:'): each line until Ctrl-D, or the arguments
  for await (const sentence of sentences(options.sentence, PROMPT[options.service])) {
    // print('From Server:', modifiedSentence.decode()): each piece as it arrives
    const out = new ReplyPrinter("From Server: ");
    try {
      await exchangeTcp({ ...options, sentence, onReply: (text) => out.print(text) });
      await out.end();
    } catch (error) {
      await out.end().catch(() => {}); // end a reply cut short; stdout may be gone
      return failed(error, options); // one line on stderr; exit 2 if not allowed, else 1
    }
  }
  return 0;
}

/**
 * Sends one sentence over a new TCP connection and resolves to the reply
 * (or hands it to `onReply` piece by piece).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { startTcpServer } from "./tcp_server.ts";
 * const stop = new AbortController();
 * const server = await startTcpServer({ port: 0, signal: stop.signal, log: null });
 * const port = server.addrs[0].port;
 * assert.equal(await exchangeTcp({ hostname: "localhost", port, sentence: "hi" }), "HI");
 * stop.abort();
 * await server.finished;
 * ```
 */
export async function exchangeTcp(options: TcpExchangeOptions): Promise<string> {
  const { hostname: serverName, port: serverPort, sentence, timeout = 10 } = options;
  let clientSocket: Deno.TcpConn | undefined;
  // One deadline for the whole exchange; when it passes, the socket is closed,
  // and whatever we are waiting for (connect or read) fails at once.
  const deadline = new Deadline(timeout, () => clientSocket?.close());
  try {
    // clientSocket = socket(AF_INET, SOCK_STREAM)
    // clientSocket.connect((serverName, serverPort))
    clientSocket = await connect(serverName, serverPort, deadline.signal); // Deno.connect: both
    // modifiedSentence = clientSocket.recv(1024): to the end, started before we send,
    // or a long sentence would fill both sides' buffers, each waiting for the other
    const modifiedSentence = readAll(clientSocket, options, deadline.signal);
    modifiedSentence.catch(() => {}); // a failed send below reports the error instead
    // clientSocket.send(sentence.encode())
    await writeAll(clientSocket, new TextEncoder().encode(sentence));
    await clientSocket.closeWrite(); // half-close: "that is all", the server need not guess
    return await modifiedSentence;
  } catch (error) {
    throw deadline.expired ? new TimeoutError(serverName, serverPort, timeout) : error;
  } finally {
    deadline.clear();
    if (!deadline.expired) clientSocket?.close(); // clientSocket.close()
  }
}

// ===========================================================================
// Part 2: what good code adds
//
// Everything above calls into here: each helper is one step, and says why.
// ===========================================================================

// ---------------------------------------------------------------------------
// The exchange: connecting, deadlines, whole writes, reading to the end
// ---------------------------------------------------------------------------

/** Options for {@linkcode exchangeTcp}. */
export interface TcpExchangeOptions {
  /** Server name or address; `localhost` tries 127.0.0.1, then ::1. */
  hostname: string;
  /** Server port. */
  port: number;
  /** The sentence to send. */
  sentence: string;
  /** Seconds allowed for the whole exchange: connecting, sending, the whole reply. Default 10. */
  timeout?: number;
  /**
   * Called with each piece of the reply as it arrives, decoded; the next
   * read waits for it. With it, nothing is kept and the promise resolves
   * to "": the reply can be endless and memory stays bounded.
   */
  onReply?: (text: string) => void | Promise<void>;
  /**
   * Without onReply: the longest reply kept, in bytes, before giving up
   * with a {@linkcode ReplyTooLongError}. Default 64 MiB.
   */
  maxReplyBytes?: number;
}

/**
 * A time limit: when it passes, `signal` aborts and `onExpire` runs (the
 * exchange closes its socket, so a pending connect or read fails at once).
 */
class Deadline {
  readonly signal: AbortSignal;
  #controller = new AbortController();
  #timer: ReturnType<typeof setTimeout>;
  #onExpire: () => void;

  constructor(seconds: number, onExpire: () => void) {
    this.signal = this.#controller.signal;
    this.#onExpire = onExpire;
    this.#timer = setTimeout(() => this.#controller.abort(), seconds * 1000);
    this.signal.addEventListener("abort", onExpire);
  }

  /** Whether the time ran out. */
  get expired(): boolean {
    return this.signal.aborted;
  }

  /** Stops the clock: the exchange is over. */
  clear() {
    clearTimeout(this.#timer);
    this.signal.removeEventListener("abort", this.#onExpire);
  }
}

/**
 * Connects to the server: Deno.connect is socket() and connect() in one.
 * `localhost` can mean 127.0.0.1, ::1 or both, depending on /etc/hosts;
 * try both loopback addresses so it always works.
 */
async function connect(hostname: string, port: number, signal: AbortSignal) {
  const candidates = hostname === "localhost" ? ["127.0.0.1", "::1"] : [hostname];
  for (const [i, candidate] of candidates.entries()) {
    try {
      return await Deno.connect({ hostname: candidate, port, signal });
    } catch (error) {
      const last = i === candidates.length - 1;
      if (last || !(error instanceof Deno.errors.ConnectionRefused)) throw error;
    }
  }
  throw new Error("unreachable");
}

/**
 * Reads until the server closes its side. The textbook's single recv(1024)
 * gets only what has arrived so far: a long reply comes in many pieces.
 * Each piece goes to `onReply` if given (and is not kept), or is added to the
 * reply, up to `maxReplyBytes`: a server can send without end.
 */
async function readAll(
  conn: Deno.Conn,
  { onReply, maxReplyBytes = 64 * 1024 * 1024 }: TcpExchangeOptions,
  deadline: AbortSignal,
): Promise<string> {
  // stream: true keeps a UTF-8 character split across two reads intact.
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  const buffer = new Uint8Array(16 * 1024);
  const pieces: string[] = [];
  let received = 0;
  for (;;) {
    const n = await conn.read(buffer);
    const text = n === null ? decoder.decode() : decoder.decode(buffer.subarray(0, n), {
      stream: true,
    });
    if (onReply) {
      // Wait for the output (a full pipe, a slow terminal) before reading on,
      // but never past the deadline.
      await untilDeadline(onReply(text), deadline);
    } else {
      received += n ?? 0;
      if (received > maxReplyBytes) throw new ReplyTooLongError(maxReplyBytes);
      pieces.push(text);
    }
    if (n === null) return pieces.join("");
  }
}

/** Resolves with `work`, or rejects as soon as the deadline passes. */
async function untilDeadline(work: void | Promise<void>, deadline: AbortSignal) {
  if (!(work instanceof Promise)) return;
  let onAbort = () => {};
  const expired = new Promise<never>((_, reject) => {
    onAbort = () => reject(deadline.reason);
    deadline.addEventListener("abort", onAbort, { once: true });
  });
  try {
    await Promise.race([work, expired]);
  } finally {
    deadline.removeEventListener("abort", onAbort);
  }
}

/** Sends every byte: write() may send only part of a buffer, like send(). */
async function writeAll(conn: { write(p: Uint8Array): Promise<number> }, data: Uint8Array) {
  let written = 0;
  while (written < data.length) {
    written += await conn.write(data.subarray(written));
  }
}

// ---------------------------------------------------------------------------
// Errors, the command line, input and output
// ---------------------------------------------------------------------------

/** The server did not answer in time. */
export class TimeoutError extends Error {
  /** The message names the server and the limit, and points to --timeout. */
  constructor(hostname: string, port: number, seconds: number) {
    super(`Timed out after ${seconds} s waiting for ${hostname}:${port} (see --timeout)`);
    this.name = "TimeoutError";
  }
}

/** A reply longer than `maxReplyBytes`, in exchangeTcp's string mode. */
export class ReplyTooLongError extends Error {
  /** The message names the limit and the way around it. */
  constructor(maxBytes: number) {
    super(
      `The reply is longer than ${maxBytes} bytes (maxReplyBytes): ` +
        "use onReply to take it piece by piece",
    );
    this.name = "ReplyTooLongError";
  }
}

/** A mistake on the command line: exit code 2. */
export class UsageError extends Error {}

/** Parsed command-line options of the client. */
export interface ClientArgs {
  /** --help: print the usage and exit. */
  help: boolean;
  /** --host: the server's name or address, the textbook's serverName. */
  hostname: string;
  /** --port: the server's port, the textbook's serverPort. */
  port: number;
  /** --timeout: seconds for each whole exchange. */
  timeout: number;
  /** --service: the server's service, "upper" or "count-s"; it changes only the prompt. */
  service: "upper" | "count-s";
  /** The sentence from the positional arguments, or undefined to read input. */
  sentence: string | undefined;
  /** --session: seed 001's task, many messages on one connection (Part 3). */
  session: boolean;
}

const USAGE = `Usage: deno run --allow-net tcp_client.ts [options] [sentence...]

The textbook's TCP client: sends a sentence, prints "From Server: SENTENCE".
With no sentence it reads lines: it asks "Input lowercase sentence:" on a
terminal, and sends every line of piped input, one connection per line.

Options:
  --host HOST          server name or address (default: localhost)
  --port PORT          server port (default: ${DEFAULT_PORT})
  --timeout SECONDS    limit for each whole exchange: connecting, sending and
                       the whole reply (default: 10)
  --session            seed 001's task: one connection, many messages (one per
                       line), each answered "Your data was N bytes"; Exit (sent
                       at the end of the input too) disconnects
  --service NAME       upper (the default) or count-s, as the server was started:
                       only the prompt changes ("Input sentence:" for count-s)
  --help               show this help

Exit codes: 0 success, 1 network failure, 2 usage error.

Examples:
  deno run --allow-net tcp_client.ts hello world
  deno run --allow-net tcp_client.ts --host 192.168.1.20 --port 12000 hi
  printf 'one\\ntwo\\n' | deno run --allow-net tcp_client.ts`;

/**
 * Parses the command line and returns the options, or the exit code once
 * it has printed the usage (--help, 0) or the mistake (2).
 */
function parseCommandLine(args: string[]): ClientArgs | number {
  let options: ClientArgs;
  try {
    options = parseClientArgs(args);
  } catch (error) {
    printError(`${(error as Error).message} (see --help)`);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  return options;
}

/**
 * Parses the command line; throws a {@linkcode UsageError} on bad input.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(parseClientArgs(["--port", "5000", "hi", "there"]).sentence, "hi there");
 * assert.throws(() => parseClientArgs(["--port", "0"]), UsageError);
 * ```
 */
export function parseClientArgs(args: string[]): ClientArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        host: { type: "string", default: "localhost" },
        port: { type: "string", default: String(DEFAULT_PORT) },
        timeout: { type: "string", default: "10" },
        session: { type: "boolean", default: false },
        service: { type: "string", default: "upper" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (error) {
    throw new UsageError(shortParseError(error));
  }
  const { values, positionals } = parsed;
  if (values.host === "") throw new UsageError("--host must not be empty");
  if (!/^\d+$/.test(values.port) || Number(values.port) < 1 || Number(values.port) > 65535) {
    throw new UsageError(`--port must be a whole number from 1 to 65535, not "${values.port}"`);
  }
  const timeout = Number(values.timeout);
  if (!/^\d+(\.\d+)?$/.test(values.timeout) || timeout <= 0 || timeout > 86400) {
    throw new UsageError(`--timeout must be a number of seconds above 0, not "${values.timeout}"`);
  }
  if (values.service !== "upper" && values.service !== "count-s") {
    throw new UsageError(`--service must be upper or count-s, not "${values.service}"`);
  }
  return {
    help: values.help,
    hostname: values.host,
    port: Number(values.port),
    timeout,
    service: values.service,
    sentence: positionals.length > 0 ? positionals.join(" ") : undefined,
    session: values.session,
  };
}

/** parseArgs' messages, shortened to one plain sentence. */
function shortParseError(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const option = /'(-[^']*)'/.exec(message)?.[1];
  const code = (error as { code?: string }).code;
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") return `Unknown option "${option}"`;
  if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    return `Option "${option?.split(" ")[0]}" needs a value`;
  }
  return message;
}

/** Says what went wrong in one line on stderr; returns the exit code. */
function failed(error: unknown, options: { hostname: string; port: number }): number {
  printError(describe(error, options));
  return error instanceof Deno.errors.NotCapable ? 2 : 1;
}

/** One line that says what went wrong and what to do about it. */
function describe(error: unknown, { hostname, port }: { hostname: string; port: number }) {
  const where = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
  if (error instanceof Deno.errors.NotCapable) return notAllowed(error, { hostname, port });
  if (error instanceof Deno.errors.ConnectionRefused) {
    return `Connection refused by ${where}: is the server running on ${where}?`;
  }
  if (error instanceof Deno.errors.ConnectionReset) {
    return `Connection reset by ${where}: the server closed the connection abruptly`;
  }
  if (error instanceof TimeoutError || error instanceof OutputError) return error.message;
  const message = error instanceof Error ? error.message : String(error);
  if (/failed to lookup address|Name or service not known/i.test(message)) {
    return `Unknown host "${hostname}": check the name, or use an IP address`;
  }
  return `Cannot talk to ${where}: ${message.split("\n")[0]}`;
}

/**
 * The error for a missing network permission. Deno's own message says "run
 * again with the --allow-net flag" even when the flag was given with a list
 * that lacks one address (127.0.0.1:12000 but not [::1]:12000). If any
 * loopback address or the server is granted, a list was given: name the
 * address it lacks and the grant that covers this server.
 */
function notAllowed(error: Error, { hostname, port }: { hostname: string; port: number }) {
  const denied = /Requires net access to "([^"]+)"/.exec(error.message)?.[1];
  const host = (name: string) => name.includes(":") ? `[${name}]` : name;
  const names = hostname === "localhost" ? ["127.0.0.1", "::1"] : [hostname];
  const needed = names.map((name) => `${host(name)}:${port}`);
  const grant = `--allow-net='${needed.join(",")}'`; // quoted: zsh expands [::1]
  const probes = [...needed, "127.0.0.1", "[::1]", "localhost"].flatMap((h) => [h, `${h}:${port}`]);
  const listGiven = probes.some((probe) => {
    try {
      return Deno.permissions.querySync({ name: "net", host: probe }).state === "granted";
    } catch {
      return false;
    }
  });
  if (denied && listGiven) {
    return `Network access to ${denied} was not granted: add it to --allow-net (${grant})`;
  }
  return "Network access is not allowed: run again with the --allow-net flag " +
    `(deno run --allow-net tcp_client.ts, or ${grant} for this server only)`;
}

/**
 * Yields the sentences to send: the command-line sentence, or lines from a
 * terminal (asking with `question`) or from piped input.
 */
async function* sentences(
  fromArgs: string | undefined,
  question: string,
): AsyncGenerator<string> {
  if (fromArgs !== undefined) {
    yield fromArgs;
  } else if (Deno.stdin.isTerminal()) {
    // The textbook's input(); keep asking until end of input (Ctrl-D).
    for (;;) {
      const sentence = prompt(question);
      if (sentence === null) return;
      yield sentence;
    }
  } else {
    // prompt() returns null at once on piped input: read the lines instead.
    const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
    try {
      for await (const line of lines) yield line;
    } finally {
      lines.close();
    }
  }
}

/**
 * Prints one reply to stdout as it arrives: the prefix ("From Server: "),
 * the pieces, a newline. The prefix waits for the first piece, so an error
 * before any reply leaves stdout empty.
 */
class ReplyPrinter {
  #prefix: string;
  #started = false;
  #encoder = new TextEncoder();

  constructor(prefix: string) {
    this.#prefix = prefix;
  }

  /** Prints one piece; resolves once stdout has taken it all. */
  async print(text: string) {
    if (!this.#started) {
      this.#started = true;
      text = this.#prefix + text;
    }
    if (text !== "") await this.#write(text);
  }

  /** Ends the line, if a reply was started (an empty reply still prints the prefix). */
  async end() {
    if (this.#started) await this.#write("\n");
  }

  async #write(text: string) {
    try {
      await writeAll(Deno.stdout, this.#encoder.encode(text));
    } catch (error) {
      // Not the server's fault: say so (`... | head -c 10` closes the pipe early).
      throw new OutputError(`Cannot print the reply: ${(error as Error).message}`);
    }
  }
}

/** Stdout failed while printing a reply. */
class OutputError extends Error {}

function printError(message: string) {
  // %c styles the word in a terminal; Deno drops the style when piped.
  console.error(`%cerror%c: ${message}`, "color: red; font-weight: bold", "");
}

// ===========================================================================
// Part 3: the session mode (seed 001's task)
//
// The Fall 2021 slides' TCPClientTask.py, with `--session`: one connection
// for many messages. It asks "Enter message to send or type Exit to
// disconnect:", sends the line, prints "Received Message from Server: "
// and the reply, and asks again; "Exit" is answered "Disconnect" and ends
// the session. Piped input works too: each line is a message, and at the
// end of the input the client sends Exit itself, so the server sees a
// proper goodbye (and says "Reply sent, Server socket closed").
//
// TCP carries bytes, not messages: what one send() wrote can arrive in
// several recv()s, and two sends in one. So every message ends in "\n", and
// so does every reply: the client reads until the "\n", however many reads
// that takes, and keeps what came after it for the next reply.
// ===========================================================================

/** What the client asks before each message (prompt() adds a space). */
const SESSION_QUESTION = "Enter message to send or type Exit to disconnect:";
/** The message that ends a session. */
const EXIT = "Exit";
/** The longest reply line, in bytes, before the client gives up. */
const MAX_REPLY_LINE_BYTES = 64 * 1024;

/** Options for {@linkcode openSession}. */
export interface SessionOptions {
  /** Server name or address; `localhost` tries 127.0.0.1, then ::1. */
  hostname: string;
  /** Server port. */
  port: number;
  /** Seconds allowed for connecting, and for each reply. Default 10. */
  timeout?: number;
}

/** An open session, as returned by {@linkcode openSession}. */
export interface TcpSession {
  /** Sends one message (a line: it must not contain "\n") and resolves to the reply line. */
  send(message: string): Promise<string>;
  /** Waits (up to the timeout) for the server to close, as it does after Exit; then closes. */
  finish(): Promise<void>;
  /** Closes the connection at once. */
  close(): void;
}

/** main() for `--session`: one connection, a reply printed for each message. */
async function sessionMain(options: ClientArgs): Promise<number> {
  let session: TcpSession;
  try {
    // clientSocket.connect((serverName, serverPort)): once, for the whole session
    session = await openSession(options);
  } catch (error) {
    return failed(error, options);
  }
  try {
    let said = "";
    // message = input('Enter message to send or type Exit to disconnect: ')
    for await (const message of sessionMessages(options.sentence)) {
      said = message;
      // print('Received Message from Server:', clientSocket.recv(1024).decode())
      await printLine(`Received Message from Server: ${await session.send(message)}`);
      if (message === EXIT) break;
    }
    // The end of the input (Ctrl-D, or the last piped line): say goodbye as the slides do.
    if (said !== EXIT) await printLine(`Received Message from Server: ${await session.send(EXIT)}`);
    await session.finish(); // the server closes after "Disconnect"
    return 0;
  } catch (error) {
    return failed(error, options);
  } finally {
    session.close(); // clientSocket.close()
  }
}

/**
 * Connects once and returns the session: each message is sent as a line and
 * answered by a line.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { startSessionServer } from "./tcp_server.ts";
 * const stop = new AbortController();
 * const server = await startSessionServer({ port: 0, signal: stop.signal, log: null });
 * const session = await openSession({ hostname: "localhost", port: server.addrs[0].port });
 * assert.equal(await session.send("Hi"), "Your data was 2 bytes");
 * assert.equal(await session.send("né😀"), "Your data was 7 bytes"); // UTF-8 bytes
 * assert.equal(await session.send("Exit"), "Disconnect");
 * await session.finish();
 * stop.abort();
 * await server.finished;
 * ```
 */
export async function openSession(options: SessionOptions): Promise<TcpSession> {
  const { hostname, port, timeout = 10 } = options;
  const socket: { conn?: Deno.TcpConn } = {}; // set once connected; the deadline closes it
  const closeQuietly = () => {
    try {
      socket.conn?.close();
    } catch {
      // Already closed.
    }
  };
  /** Runs `work` within the timeout; when it passes, the socket is closed and work fails. */
  const timed = async <T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> => {
    const deadline = new Deadline(timeout, closeQuietly);
    try {
      return await work(deadline.signal);
    } catch (error) {
      throw deadline.expired ? new TimeoutError(hostname, port, timeout) : error;
    } finally {
      deadline.clear();
    }
  };
  const conn = socket.conn = await timed((signal) => connect(hostname, port, signal));
  const replies = new ReplyLines(conn);
  return {
    send: (message) =>
      timed(async () => {
        // clientSocket.send(message.encode()), with the "\n" that ends it
        await writeAll(conn, new TextEncoder().encode(`${message}\n`));
        return await replies.next();
      }),
    finish: async () => {
      try {
        await timed(() => replies.end());
      } catch {
        // The server did not close in time, or reset: we close our side anyway.
      }
      closeQuietly();
    },
    close: closeQuietly,
  };
}

/**
 * The messages: the command-line words as one message, or each line typed
 * (asking the slides' question) or piped.
 */
async function* sessionMessages(fromArgs: string | undefined): AsyncGenerator<string> {
  for await (const text of sentences(fromArgs, SESSION_QUESTION)) {
    // A "\n" ends a message: words given with one in them are several messages.
    yield* text.split(/\r?\n/);
  }
}

/** Prints one line to stdout, waiting for it to be taken (a full pipe, a slow terminal). */
async function printLine(text: string) {
  const printer = new ReplyPrinter("");
  await printer.print(text);
  await printer.end();
}

/**
 * Reads a TCP stream as lines: the session's replies. A read returns what
 * has arrived, part of a line or more than one; what follows a "\n" is kept
 * for the next line. The text is decoded a whole line at a time, so a
 * UTF-8 character split across reads stays whole.
 */
class ReplyLines {
  #conn: Deno.Conn;
  #pending = new Uint8Array(0);
  #decoder = new TextDecoder();

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** The next reply line, without its "\n" (or "\r\n"). */
  async next(): Promise<string> {
    for (;;) {
      const newline = this.#pending.indexOf(10);
      if (newline >= 0) {
        const line = this.#pending.subarray(0, newline);
        this.#pending = this.#pending.slice(newline + 1);
        return this.#decoder.decode(line.at(-1) === 13 ? line.subarray(0, -1) : line);
      }
      if (this.#pending.length > MAX_REPLY_LINE_BYTES) {
        throw new Error(`The server's reply is longer than ${MAX_REPLY_LINE_BYTES} bytes`);
      }
      const chunk = new Uint8Array(16 * 1024);
      const n = await this.#conn.read(chunk);
      if (n === null) {
        throw new Error("The server closed the connection without a reply");
      }
      const joined = new Uint8Array(this.#pending.length + n);
      joined.set(this.#pending);
      joined.set(chunk.subarray(0, n), this.#pending.length);
      this.#pending = joined;
    }
  }

  /** Reads (and drops) what is left until the server closes its side. */
  async end() {
    const chunk = new Uint8Array(1024);
    while (await this.#conn.read(chunk) !== null) {
      // Nothing is expected after "Disconnect": drop it.
    }
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
