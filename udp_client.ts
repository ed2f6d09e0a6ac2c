#!/usr/bin/env -S deno run --allow-net --unstable-net
/**
 * UDPClient: the textbook's uppercase client over UDP, in Deno.
 *
 * Sends a sentence in one datagram and prints the UPPERCASE reply.
 *
 * ```sh
 * deno run --allow-net udp_client.ts hello world                 # in this folder
 * deno run --allow-net --unstable-net udp_client.ts hello world  # a copy on its own
 * printf 'one\ntwo\n' | deno run --allow-net udp_client.ts
 * ```
 *
 * Part 1 of this file is the textbook's UDPClient.py in code, step by step.
 * Part 2 is what "good code" adds: UDP loses datagrams and never says so, so
 * the client waits with a timeout, tries again, and gives up with a clear
 * message. It only accepts replies from the server's address.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createInterface } from "node:readline";
import { lookup } from "node:dns/promises";
import process from "node:process";

// ===========================================================================
// Part 1: the textbook's UDPClient.py, in Deno. Read it top to bottom; each
// step quotes the Python line it stands for. What it calls from Part 2 is the
// "good code" the textbook leaves out: skip that on a first reading.
// ===========================================================================

/** The textbook's port: `serverPort = 12000`. */
export const DEFAULT_PORT = 12000;

/** The textbook's prompt, and the one for its suggested modification (--service count-s). */
const PROMPT = { upper: "Input lowercase sentence:", "count-s": "Input sentence:" };

/**
 * Sends one sentence in a datagram and resolves to the reply; tries again
 * after `timeout` seconds of silence, and throws a {@linkcode NoReplyError}
 * after the last try (example: {@linkcode UdpExchangeOptions}).
 */
export async function exchangeUdp(options: UdpExchangeOptions): Promise<string> {
  // serverName = 'hostname'; serverPort = 12000
  const { hostname: serverName, port: serverPort, message, timeout = 1, tries = 3 } = options;
  requireUnstableNet();
  const serverAddresses = await lookUp(serverName, serverPort); // localhost: 127.0.0.1, ::1
  // clientSocket = socket(AF_INET, SOCK_DGRAM): a new one, so a new port, for
  // each sentence; a late reply to an earlier sentence cannot pass for this one's.
  const clientSocket = Deno.listenDatagram({
    transport: "udp",
    hostname: anyAddressFor(serverAddresses), // "0.0.0.0", or "::" for IPv6 too
    port: 0, // any free port
  });
  const replies = new ReplyWaiter(clientSocket, serverAddresses); // the server's only
  const data = new TextEncoder().encode(message); // message.encode()
  try {
    for (let attempt = 0; attempt < tries; attempt++) {
      // localhost: alternate between 127.0.0.1 and ::1 from one try to the next.
      const serverAddress = serverAddresses[attempt % serverAddresses.length];
      // clientSocket.sendto(message.encode(), (serverName, serverPort))
      checkSize(data, serverAddress);
      await clientSocket.send(data, serverAddress);
      // modifiedMessage, serverAddress = clientSocket.recvfrom(2048)
      const modifiedMessage = await replies.next(timeout * 1000); // undefined: silence
      if (modifiedMessage !== undefined) return decode(modifiedMessage); // .decode()
    }
    throw new NoReplyError(serverName, serverPort, tries);
  } finally {
    // clientSocket.close()
    clientSocket.close(); // ends the receive() still waiting, if any
    await replies.done();
  }
}

/** Runs the client from the command line and resolves to the exit code. */
async function main(args: string[]): Promise<number> {
  const options = readCommandLine(args); // --help and mistakes end here, with an exit code
  if (typeof options === "number") return options;
  // message = input('Input lowercase sentence:'), or the command line's, or piped lines
  for await (const message of sentences(options.message, PROMPT[options.service])) {
    try {
      const modifiedMessage = await exchangeUdp({ ...options, message });
      // print(modifiedMessage.decode()): the reply alone, as the textbook prints it
      console.log(modifiedMessage);
    } catch (error) {
      return exchangeFailed(error, options); // one line on stderr; exit code 2 or 1
    }
  }
  return 0;
}

// ===========================================================================
// Part 2: what good code adds
//
// Each function below is one step the textbook leaves out, and says why.
// ===========================================================================

// --- Replies, addresses and sizes -------------------------------------------

/**
 * Waits for replies from the server with a deadline. Deno cannot cancel a
 * receive(), so one receive() stays pending across tries: a reply to the
 * first try that arrives during the second still counts.
 */
class ReplyWaiter {
  #socket: Deno.DatagramConn;
  #servers: Deno.NetAddr[];
  #pending: Promise<[Uint8Array, Deno.Addr]> | undefined;
  // A 64 KiB buffer: recvfrom(2048) would silently cut a long reply.
  #buffer = new Uint8Array(65536);

  constructor(socket: Deno.DatagramConn, servers: Deno.NetAddr[]) {
    this.#socket = socket;
    this.#servers = servers;
  }

  /** The next reply from the server, or undefined after `ms` of silence. */
  async next(ms: number): Promise<Uint8Array | undefined> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), ms);
    });
    try {
      for (;;) {
        this.#pending ??= this.#socket.receive(this.#buffer);
        const result = await Promise.race([this.#pending, timeout]);
        if (result === undefined) return undefined; // silence: try again
        this.#pending = undefined;
        const [data, from] = result;
        // Anyone can send us a datagram. Only the server's address counts.
        if (this.#isServer(from as Deno.NetAddr)) return data;
      }
    } finally {
      clearTimeout(timer);
    }
  }

  #isServer(from: Deno.NetAddr): boolean {
    // On a dual-stack socket, IPv4 senders show up as ::ffff:127.0.0.1.
    const host = from.hostname.replace(/^::ffff:(?=\d+\.)/i, "");
    return this.#servers.some((s) => s.hostname === host && s.port === from.port);
  }

  /** Waits for the receive() ended by close(), so nothing is left running. */
  async done() {
    await this.#pending?.catch(() => {});
  }
}

/** The server's addresses (see {@linkcode resolve}), with its port. */
async function lookUp(serverName: string, serverPort: number): Promise<Deno.NetAddr[]> {
  const addresses = await resolve(serverName);
  return addresses.map((hostname) => ({ transport: "udp", hostname, port: serverPort }));
}

/**
 * The addresses to send to. `localhost` means 127.0.0.1 or ::1 depending on
 * /etc/hosts, so try both; a name is looked up like Python's sendto() does.
 */
async function resolve(hostname: string): Promise<string[]> {
  if (hostname === "localhost") return ["127.0.0.1", "::1"];
  const literal = hostname.replace(/^\[(.*)\]$/, "$1");
  if (/^[\d.]+$/.test(literal) || literal.includes(":")) return [literal];
  try {
    const found = await lookup(hostname, { all: true });
    return [...new Set(found.map((entry) => entry.address))];
  } catch (error) {
    if ((error as { code?: string }).code === "ENOTFOUND") throw new UnknownHostError(hostname);
    if ((error as { code?: string }).code === "EPERM") {
      // Looking a name up needs the name itself in --allow-net (no port).
      throw new Deno.errors.NotCapable(`Requires net access to "${hostname}"`);
    }
    throw error;
  }
}

/**
 * The address the client's socket binds: any of this machine's. "::" takes
 * IPv4 and IPv6 alike (dual-stack); "0.0.0.0" is IPv4 only, and is all an
 * IPv4 server needs.
 */
function anyAddressFor(serverAddresses: Deno.NetAddr[]): string {
  return serverAddresses.some((s) => s.hostname.includes(":")) ? "::" : "0.0.0.0";
}

/**
 * Bytes to text, as Python's `decode()`: invalid bytes become U+FFFD, and a
 * leading byte order mark is kept (ignoreBOM), not dropped.
 */
function decode(modifiedMessage: Uint8Array): string {
  return new TextDecoder("utf-8", { ignoreBOM: true }).decode(modifiedMessage);
}

/** A datagram holds at most 65507 bytes over IPv4, 65527 over IPv6. */
function checkSize(data: Uint8Array, server: Deno.NetAddr) {
  const limit = server.hostname.includes(":") ? 65527 : 65507;
  if (data.length > limit) throw new MessageTooLongError(data.length, limit);
}

// --- Errors --------------------------------------------------------------------

/** The sentence does not fit in one datagram. */
export class MessageTooLongError extends Error {
  /** `size`: the sentence's bytes; `limit`: the most one datagram holds. */
  constructor(size: number, limit: number) {
    super(`The sentence is ${size} bytes: one UDP datagram holds at most ${limit}`);
    this.name = "MessageTooLongError";
  }
}

/** No reply came after every try. */
export class NoReplyError extends Error {
  /** The server tried, and how many times. */
  constructor(hostname: string, port: number, tries: number) {
    const where = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
    super(
      `No reply from ${where} after ${tries} ${tries === 1 ? "try" : "tries"} ` +
        "(UDP does not retransmit: a datagram may be lost, or no server is running there)",
    );
    this.name = "NoReplyError";
  }
}

/** The server's name could not be looked up. */
export class UnknownHostError extends Error {
  /** `hostname`: the name that could not be looked up. */
  constructor(hostname: string) {
    super(`Unknown host "${hostname}": check the name, or use an IP address`);
    this.name = "UnknownHostError";
  }
}

/** Thrown when Deno runs without the flag that enables UDP. */
export class UnstableNetError extends Error {
  /** The message says which flag to add, or where to run from. */
  constructor() {
    super(
      "UDP needs the --unstable-net flag: run deno run --allow-net --unstable-net " +
        "udp_client.ts, or run it from the project folder, whose deno.json enables it",
    );
    this.name = "UnstableNetError";
  }
}

/** Throws an {@linkcode UnstableNetError} if UDP is not enabled. */
function requireUnstableNet() {
  // Without the flag, Deno.listenDatagram is simply not there.
  if (typeof Deno.listenDatagram !== "function") throw new UnstableNetError();
}

/**
 * Options for {@linkcode exchangeUdp}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * // A stand-in server on a free port: it answers one datagram in uppercase.
 * const server = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
 * const serving = server.receive().then(([data, from]) => {
 *   const modified = new TextDecoder().decode(data).toUpperCase();
 *   return server.send(new TextEncoder().encode(modified), from);
 * });
 * const port = (server.addr as Deno.NetAddr).port;
 * assert.equal(await exchangeUdp({ hostname: "127.0.0.1", port, message: "hi" }), "HI");
 * await serving;
 * server.close();
 * ```
 */
export interface UdpExchangeOptions {
  /** Server name or address; `localhost` tries 127.0.0.1, then ::1. */
  hostname: string;
  /** Server port. */
  port: number;
  /** The sentence to send. */
  message: string;
  /** Seconds to wait for a reply before trying again. Default 1. */
  timeout?: number;
  /** How many times to send before giving up. Default 3. */
  tries?: number;
}

// ===========================================================================
// Command line
// ===========================================================================

/** A mistake on the command line: exit code 2. */
export class UsageError extends Error {}

/** Parsed command-line options of the client. */
export interface ClientArgs {
  /** --help: show the usage and exit. */
  help: boolean;
  /** --host: the server's name or address. */
  hostname: string;
  /** --port: the server's port. */
  port: number;
  /** --timeout: seconds to wait for each reply. */
  timeout: number;
  /** --tries: how many times to send before giving up. */
  tries: number;
  /** --service: the server's service, "upper" or "count-s"; it changes only the prompt. */
  service: "upper" | "count-s";
  /** The sentence from the positional arguments, or undefined to read input. */
  message: string | undefined;
}

const USAGE = `Usage: deno run --allow-net --unstable-net udp_client.ts [options] [sentence...]

The textbook's UDP client: sends a sentence in one datagram, prints the reply.
With no sentence it reads lines: it asks "Input lowercase sentence:" on a
terminal, and sends every line of piped input.
(In this folder deno.json enables --unstable-net for you.)

Options:
  --host HOST          server name or address (default: localhost)
  --port PORT          server port (default: ${DEFAULT_PORT})
  --timeout SECONDS    wait this long for each reply (default: 1)
  --tries N            send this many times before giving up (default: 3)
  --service NAME       upper (the default) or count-s, as the server was started:
                       only the prompt changes ("Input sentence:" for count-s)
  --help               show this help

Exit codes: 0 success, 1 network failure or no reply, 2 usage error.

Examples:
  deno run --allow-net udp_client.ts hello world
  deno run --allow-net udp_client.ts --host 192.168.1.20 --timeout 2 --tries 5 hi
  printf 'one\\ntwo\\n' | deno run --allow-net udp_client.ts`;

/**
 * Parses the command line; throws a {@linkcode UsageError} on bad input.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const options = parseClientArgs(["--tries", "5", "hello", "world"]);
 * assert.equal(options.tries, 5);
 * assert.equal(options.message, "hello world");
 * assert.throws(() => parseClientArgs(["--tries", "0"]), UsageError);
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
        timeout: { type: "string", default: "1" },
        tries: { type: "string", default: "3" },
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
  if (!/^\d+(\.\d+)?$/.test(values.timeout) || timeout <= 0 || timeout > 3600) {
    throw new UsageError(`--timeout must be a number of seconds above 0, not "${values.timeout}"`);
  }
  if (!/^\d+$/.test(values.tries) || Number(values.tries) < 1 || Number(values.tries) > 100) {
    throw new UsageError(`--tries must be a whole number from 1 to 100, not "${values.tries}"`);
  }
  if (values.service !== "upper" && values.service !== "count-s") {
    throw new UsageError(`--service must be upper or count-s, not "${values.service}"`);
  }
  return {
    help: values.help,
    hostname: values.host,
    port: Number(values.port),
    timeout,
    tries: Number(values.tries),
    service: values.service,
    message: positionals.length > 0 ? positionals.join(" ") : undefined,
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

/**
 * The options to run with, or the exit code when there is nothing to run:
 * 0 after --help, 2 after a mistake on the command line (said on stderr).
 */
function readCommandLine(args: string[]): ClientArgs | number {
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
 * Says why a sentence got no reply, in one line on stderr, and returns the
 * exit code: 2 when the command itself must change (a permission, a flag, a
 * sentence too long for a datagram), 1 otherwise (no reply, unknown host).
 */
function exchangeFailed(error: unknown, options: ClientArgs): number {
  printError(describe(error, options));
  const invocation = error instanceof Deno.errors.NotCapable ||
    error instanceof UnstableNetError || error instanceof MessageTooLongError;
  return invocation ? 2 : 1;
}

/** Writes "error: MESSAGE" on stderr. */
function printError(message: string) {
  // %c styles the word in a terminal; Deno drops the style when piped.
  console.error(`%cerror%c: ${message}`, "color: red; font-weight: bold", "");
}

/** One line that says what went wrong and what to do about it. */
function describe(error: unknown, { hostname, port }: { hostname: string; port: number }) {
  const where = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
  if (error instanceof Deno.errors.NotCapable) return permissionMessage(error, { hostname, port });
  if (
    error instanceof NoReplyError || error instanceof UnknownHostError ||
    error instanceof UnstableNetError || error instanceof MessageTooLongError
  ) return error.message;
  const message = error instanceof Error ? error.message : String(error);
  return `Cannot talk to ${where}: ${message.split("\n")[0]}`;
}

/**
 * Says which network permission is missing. Without any --allow-net, the
 * fix is the flag; with a grant that is too narrow (the server's port but not
 * the client's own socket, say), it names the address that was refused and
 * the grant that works.
 */
function permissionMessage(
  error: Deno.errors.NotCapable,
  { hostname, port }: { hostname: string; port: number },
): string {
  // Deno's message: Requires net access to "[::]:0", run again with ...
  const denied = /Requires net access to "([^"]+)"/.exec(error.message)?.[1];
  const grant = minimalGrant(hostname, port);
  // Was any grant given? Deno cannot say; ask about the likely addresses.
  const likely = [...grant ?? [], `${bracketed(hostname)}:${port}`, "0.0.0.0:0", "[::]:0"];
  if (denied === undefined || !likely.some(isGranted)) {
    return "Network access is not allowed: run again with the --allow-net flag " +
      "(deno run --allow-net --unstable-net udp_client.ts)";
  }
  const what = denied.endsWith(":0") ? " (the client's own socket)" : "";
  const example = grant
    ? `, as in --allow-net='${grant.join(",")}'`
    : ` (a name needs the addresses it resolves to as well, with port ${port})`;
  return `Network access to ${denied}${what} was not granted: add it to --allow-net${example}`;
}

/**
 * The narrowest --allow-net list that works for a server address: the
 * server's addresses with its port, and the client's own socket (port 0, any
 * address). Undefined for a name: its addresses are known only once looked up.
 */
function minimalGrant(hostname: string, port: number): string[] | undefined {
  if (hostname === "localhost") return [`127.0.0.1:${port}`, `[::1]:${port}`, "[::]:0"];
  const literal = hostname.replace(/^\[(.*)\]$/, "$1");
  if (literal.includes(":")) return [`[${literal}]:${port}`, "[::]:0"];
  if (/^[\d.]+$/.test(literal)) return [`${literal}:${port}`, "0.0.0.0:0"];
  return undefined;
}

/** Whether this process may use the network at `host` ("127.0.0.1:12000"). */
function isGranted(host: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "net", host }).state === "granted";
  } catch {
    return false; // a host Deno cannot parse
  }
}

/** An IPv6 address in brackets, as --allow-net writes it: [::1]. */
function bracketed(hostname: string): string {
  return hostname.includes(":") && !hostname.startsWith("[") ? `[${hostname}]` : hostname;
}

/**
 * Yields the sentences to send: the command-line sentence, or lines from a
 * terminal (with the textbook prompt) or from piped input.
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
      const message = prompt(question);
      if (message === null) return;
      yield message;
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

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
