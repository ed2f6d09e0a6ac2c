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
 * The first part of this file is the textbook's UDPClient.py, line for line;
 * the second part is what "good code" adds: UDP loses datagrams and never
 * says so, so the client waits with a timeout, tries again, and gives up with
 * a clear message. It only accepts replies from the server's address.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createInterface } from "node:readline";
import { lookup } from "node:dns/promises";
import process from "node:process";

/** The textbook's port. */
export const DEFAULT_PORT = 12000;

// ===========================================================================
// Part 1: the textbook flow
//
//   UDPClient.py                                 this file
//   clientSocket = socket(AF_INET, SOCK_DGRAM)   Deno.listenDatagram({ port: 0 })
//   message = input('Input lowercase sentence:') prompt(...) in main()
//   clientSocket.sendto(message.encode(),        await clientSocket.send(
//                       (serverName, port))          encode(message), server)
//   modifiedMessage, serverAddress =             await receiveFrom(clientSocket,
//       clientSocket.recvfrom(2048)                  server, timeout)
//   print(modifiedMessage.decode())              console.log(decode(...))
//   clientSocket.close()                         clientSocket.close()
// ===========================================================================

/** Options for {@linkcode exchangeUdp}. */
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

/**
 * Sends one sentence in a datagram and resolves to the reply; retries on
 * silence and throws a {@linkcode NoReplyError} after the last try.
 *
 * @example
 * ```ts
 * const reply = await exchangeUdp({ hostname: "localhost", port: 12000, message: "hi" });
 * console.log(reply); // HI
 * ```
 */
export async function exchangeUdp(options: UdpExchangeOptions): Promise<string> {
  const { hostname, port, message, timeout = 1, tries = 3 } = options;
  requireUnstableNet();
  const servers = (await resolve(hostname)).map((address) => ({
    transport: "udp" as const,
    hostname: address,
    port,
  }));
  // A new socket, so a new port, for every sentence: a late reply to an
  // earlier sentence then cannot be mistaken for the reply to this one.
  const clientSocket = Deno.listenDatagram({
    transport: "udp",
    // "::" takes IPv4 and IPv6 alike (dual-stack); "0.0.0.0" is IPv4 only.
    hostname: servers.some((s) => s.hostname.includes(":")) ? "::" : "0.0.0.0",
    port: 0,
  });
  const waiter = new ReplyWaiter(clientSocket, servers);
  const data = new TextEncoder().encode(message);
  try {
    for (let attempt = 0; attempt < tries; attempt++) {
      // localhost: alternate between 127.0.0.1 and ::1 from one try to the next.
      const server = servers[attempt % servers.length];
      checkSize(data, server);
      await clientSocket.send(data, server);
      const modifiedMessage = await waiter.next(timeout * 1000);
      if (modifiedMessage !== undefined) {
        return new TextDecoder("utf-8", { ignoreBOM: true }).decode(modifiedMessage);
      }
    }
    throw new NoReplyError(hostname, port, tries);
  } finally {
    clientSocket.close(); // ends the receive() still waiting, if any
    await waiter.done();
  }
}

// ===========================================================================
// Part 2: what good code adds
// ===========================================================================

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

/** A datagram holds at most 65507 bytes over IPv4, 65527 over IPv6. */
function checkSize(data: Uint8Array, server: Deno.NetAddr) {
  const limit = server.hostname.includes(":") ? 65527 : 65507;
  if (data.length > limit) throw new MessageTooLongError(data.length, limit);
}

/** The sentence does not fit in one datagram. */
export class MessageTooLongError extends Error {
  constructor(size: number, limit: number) {
    super(`The sentence is ${size} bytes: one UDP datagram holds at most ${limit}`);
    this.name = "MessageTooLongError";
  }
}

/** No reply came after every try. */
export class NoReplyError extends Error {
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
  constructor(hostname: string) {
    super(`Unknown host "${hostname}": check the name, or use an IP address`);
    this.name = "UnknownHostError";
  }
}

/** Thrown when Deno runs without the flag that enables UDP. */
export class UnstableNetError extends Error {
  constructor() {
    super(
      "UDP needs the --unstable-net flag: run deno run --allow-net --unstable-net " +
        "udp_client.ts, or run it from the project folder, whose deno.json enables it",
    );
    this.name = "UnstableNetError";
  }
}

function requireUnstableNet() {
  // Without the flag, Deno.listenDatagram is simply not there.
  if (typeof Deno.listenDatagram !== "function") throw new UnstableNetError();
}

// ===========================================================================
// Command line
// ===========================================================================

/** A mistake on the command line: exit code 2. */
export class UsageError extends Error {}

/** Parsed command-line options of the client. */
export interface ClientArgs {
  help: boolean;
  hostname: string;
  port: number;
  timeout: number;
  tries: number;
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
 * parseClientArgs(["--tries", "5", "hi"]).tries; // 5
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
  return {
    help: values.help,
    hostname: values.host,
    port: Number(values.port),
    timeout,
    tries: Number(values.tries),
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
    ? `, as in --allow-net=${grant.join(",")}`
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
async function* sentences(fromArgs: string | undefined): AsyncGenerator<string> {
  if (fromArgs !== undefined) {
    yield fromArgs;
  } else if (Deno.stdin.isTerminal()) {
    // The textbook's input(); keep asking until end of input (Ctrl-D).
    for (;;) {
      const message = prompt("Input lowercase sentence:");
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

/**
 * Runs the client from the command line and resolves to the exit code.
 *
 * @example
 * ```ts
 * const code = await main(["--port", "12000", "hello"]); // prints HELLO
 * ```
 */
export async function main(args: string[]): Promise<number> {
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
  for await (const message of sentences(options.message)) {
    try {
      const modifiedMessage = await exchangeUdp({ ...options, message });
      console.log(modifiedMessage); // the textbook prints the reply alone
    } catch (error) {
      printError(describe(error, options));
      const invocation = error instanceof Deno.errors.NotCapable ||
        error instanceof UnstableNetError || error instanceof MessageTooLongError;
      return invocation ? 2 : 1;
    }
  }
  return 0;
}

function printError(message: string) {
  // %c styles the word in a terminal; Deno drops the style when piped.
  console.error(`%cerror%c: ${message}`, "color: red; font-weight: bold", "");
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
