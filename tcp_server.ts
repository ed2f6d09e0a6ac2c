#!/usr/bin/env -S deno run --allow-net
/**
 * TCPServer: the textbook's uppercase server over TCP, in Deno.
 *
 * A client connects, sends a sentence, and the server sends the same
 * sentence back in UPPERCASE. Run it, then talk to it from another terminal
 * with `deno run --allow-net tcp_client.ts hello` or `nc localhost 12000`.
 *
 * ```sh
 * deno run --allow-net tcp_server.ts              # 127.0.0.1 and ::1, port 12000
 * deno run --allow-net tcp_server.ts --port 0     # any free port
 * deno run --allow-net tcp_server.ts --host ::    # serve other hosts too
 * ```
 *
 * The first part of this file is the textbook's TCPServer.py, line for line.
 * The second part is what "good code" adds: concurrency, streaming with
 * correct UTF-8, flow control, idle timeouts, a connection cap, clear errors
 * and a graceful shutdown.
 *
 * @module
 */
import { parseArgs } from "node:util";

/** The textbook's port. */
export const DEFAULT_PORT = 12000;

const encoder = new TextEncoder();

// ===========================================================================
// Part 1: the textbook flow
//
//   TCPServer.py                                 this file
//   serverSocket = socket(AF_INET, SOCK_STREAM)  Deno.listen({ hostname, port })
//   serverSocket.bind(('', serverPort))            (socket, bind and listen
//   serverSocket.listen(1)                          in one call)
//   print('The server is ready to receive')      console.log(...) in main()
//   while True:                                  for (;;) in acceptLoop()
//     connectionSocket, addr = accept()          await serverSocket.accept()
//     sentence = recv(1024).decode()             serveClient(): read + decode
//     capitalizedSentence = sentence.upper()     sentence.toUpperCase()
//     connectionSocket.send(...encode())         client.write(...encode())
//     connectionSocket.close()                   connectionSocket.close()
// ===========================================================================

/** The welcoming loop: wait for a client to knock, give it its own socket. */
async function acceptLoop(serverSocket: Deno.Listener, server: ServerState) {
  for (;;) {
    let connectionSocket: Deno.Conn;
    try {
      connectionSocket = await serverSocket.accept();
    } catch (error) {
      if (server.stopping) return; // we closed the welcoming socket ourselves
      // Running out of file descriptors (EMFILE) must not kill the server:
      // say so, let some connections finish, and keep accepting.
      server.log?.(`Could not accept a connection: ${describe(error)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      continue;
    }
    // The textbook serves one client at a time, so a client that connects and
    // says nothing blocks everyone else. We start serving this client and go
    // straight back to accept(): every client is served concurrently.
    serveClient(connectionSocket, server);
  }
}

/** Talk to one client: uppercase whatever it sends until it half-closes. */
async function serveClient(connectionSocket: Deno.Conn, server: ServerState) {
  const client = server.track(connectionSocket);
  if (client === undefined) return; // over --max-connections: already closed
  // Start small, like the textbook's recv(1024): an idle connection then
  // costs little (10,000 idle clients with 16 KiB each would hold 160 MB).
  // A read that fills the buffer means the client is sending a lot: grow it,
  // up to 64 KiB, so a big transfer takes fewer, larger reads.
  let buffer = new Uint8Array(1024);
  // A UTF-8 character can be split across two reads; a streaming decoder
  // keeps the first half until the rest arrives. Invalid bytes become U+FFFD;
  // ignoreBOM keeps a leading byte order mark, as Python's decode() does.
  // Plain ASCII, what most clients send, needs no decoder: it is made at the
  // first byte above 0x7f, and from then on every read goes through it.
  let decoder: TextDecoder | undefined;
  try {
    client.touch(); // start the idle clock
    for (;;) {
      const n = await connectionSocket.read(buffer); // sentence = recv(...)
      if (n === null) break; // the client half-closed: it has sent everything
      client.touch(); // progress: restart the idle clock (every write does too)
      client.bytesIn += n;
      if (decoder === undefined && upperAsciiInPlace(buffer, n)) {
        // Plain ASCII, what most clients send: no decoding, no encoding.
        await client.write(buffer.subarray(0, n));
      } else {
        decoder ??= new TextDecoder("utf-8", { ignoreBOM: true });
        const sentence = decoder.decode(buffer.subarray(0, n), { stream: true });
        const capitalizedSentence = sentence.toUpperCase();
        await client.write(encoder.encode(capitalizedSentence));
      }
      if (n === buffer.length && n < 64 * 1024) buffer = new Uint8Array(n * 4);
    }
    // Flush the decoder: a character cut off at the very end becomes U+FFFD.
    if (decoder) await client.write(encoder.encode(decoder.decode().toUpperCase()));
  } catch (error) {
    client.fail(error);
  } finally {
    client.close(); // connectionSocket.close()
  }
}

// ===========================================================================
// Part 2: what good code adds
// ===========================================================================

/**
 * Uppercases ASCII letters where they are and returns true if every byte was
 * ASCII. At the first byte that is not, returns false: the caller decodes the
 * bytes instead (uppercasing the letters already done again changes nothing).
 */
function upperAsciiInPlace(bytes: Uint8Array, length: number): boolean {
  for (let i = 0; i < length; i++) {
    const byte = bytes[i];
    if (byte >= 0x80) return false;
    if (byte >= 0x61 && byte <= 0x7a) bytes[i] = byte - 0x20; // a-z to A-Z
  }
  return true;
}

/** Options for {@linkcode startTcpServer}. */
export interface TcpServerOptions {
  /**
   * Address to bind. `localhost` (the default) binds both loopback addresses,
   * 127.0.0.1 and ::1, on one port, so a client reaches it whichever of the
   * two its `localhost` means. `0.0.0.0` or `::` serves other hosts too.
   */
  hostname?: string;
  /** Port to bind; 0 lets the system choose. Default 12000. */
  port?: number;
  /** Aborting it shuts the server down gracefully. */
  signal?: AbortSignal;
  /** Seconds without progress before a connection is closed; 0 = never. Default 300. */
  idleTimeout?: number;
  /** Connections served at once; more are accepted and closed. Default 1024. */
  maxConnections?: number;
  /** Seconds that clients mid-exchange get to finish at shutdown. Default 10. */
  shutdownGrace?: number;
  /** Where log lines go; default `console.log`; `null` for none (--quiet). */
  log?: ((line: string) => void) | null;
}

/** A running server, as returned by {@linkcode startTcpServer}. */
export interface TcpServer {
  /** The bound addresses, with the real port. */
  addrs: Deno.NetAddr[];
  /** Resolves once the server has shut down and every connection is closed. */
  finished: Promise<void>;
}

/**
 * Starts the uppercase server and resolves once it is bound.
 *
 * @example
 * ```ts
 * const controller = new AbortController();
 * const server = await startTcpServer({ port: 0, signal: controller.signal });
 * console.log(`The server is ready to receive on ${formatAddrs(server.addrs)}`);
 * controller.abort();
 * await server.finished;
 * ```
 */
export async function startTcpServer(
  options: TcpServerOptions = {},
): Promise<TcpServer> {
  const {
    hostname = "localhost",
    port = DEFAULT_PORT,
    signal,
    idleTimeout = 300,
    maxConnections = 1024,
    shutdownGrace = 10,
    log = console.log,
  } = options;
  const listeners = listenAll(hostname, port);
  const server = new ServerState({ idleTimeout, maxConnections, log });
  const loops = Promise.all(listeners.map((l) => acceptLoop(l, server)));

  let graceTimer: ReturnType<typeof setTimeout> | undefined;
  const stop = () => {
    // Stop accepting, close connections that have nothing in flight, and
    // give the others a bounded time to finish their exchange.
    server.stopping = true;
    for (const listener of listeners) listener.close();
    server.closeIdle();
    graceTimer = setTimeout(() => server.closeAll(), shutdownGrace * 1000);
  };
  if (signal?.aborted) stop();
  else signal?.addEventListener("abort", stop, { once: true });

  const finished = (async () => {
    await loops;
    await server.drained();
    server.stopSweeping();
    clearTimeout(graceTimer);
  })();
  // Binding above is synchronous; staying async means a bind error reaches
  // the caller as a rejected promise, like every other failure here.
  await Promise.resolve();
  return { addrs: listeners.map((l) => l.addr as Deno.NetAddr), finished };
}

/**
 * Binds one listener, or two for `localhost`: 127.0.0.1 and ::1 on the same
 * port (with port 0, the port the system picked for the first).
 */
function listenAll(hostname: string, port: number): Deno.Listener[] {
  if (hostname !== "localhost") return [Deno.listen({ hostname, port })];
  for (let attempt = 1;; attempt++) {
    const v4 = Deno.listen({ hostname: "127.0.0.1", port });
    const chosen = (v4.addr as Deno.NetAddr).port;
    try {
      return [v4, Deno.listen({ hostname: "::1", port: chosen })];
    } catch (error) {
      if (error instanceof Deno.errors.AddrNotAvailable) return [v4]; // no IPv6 here
      v4.close();
      // With port 0 the port can be free on 127.0.0.1 but taken on ::1: retry.
      const retry = port === 0 && error instanceof Deno.errors.AddrInUse;
      if (!retry || attempt === 10) throw error;
    }
  }
}

/** The connections in flight, their limits, and the log. */
class ServerState {
  stopping = false;
  /** null with --quiet: then not even the client's address is looked up. */
  readonly log: ((line: string) => void) | null;
  readonly idleMs: number;
  readonly maxConnections: number;
  readonly open = new Set<Client>();
  #drained = Promise.withResolvers<void>();
  #sweeper: ReturnType<typeof setInterval> | undefined;

  constructor(
    options: {
      idleTimeout: number;
      maxConnections: number;
      log: ((line: string) => void) | null;
    },
  ) {
    this.idleMs = options.idleTimeout * 1000;
    this.maxConnections = options.maxConnections;
    this.log = options.log;
    // One timer for all connections, not one per connection restarted on
    // every read: a few times per timeout, close the clients idle too long.
    if (this.idleMs > 0) {
      this.#sweeper = setInterval(() => this.closeStale(), Math.min(1000, this.idleMs / 4));
    }
  }

  /** Closes the connections that have made no progress for the idle timeout. */
  closeStale() {
    const cutoff = Date.now() - this.idleMs;
    for (const client of this.open) {
      if (client.lastProgress <= cutoff) {
        client.close(`closed after ${this.idleMs / 1000} s idle`);
      }
    }
  }

  /** Stops the idle sweep once the server has shut down. */
  stopSweeping() {
    clearInterval(this.#sweeper);
  }

  /** Registers a new connection, or refuses it politely past the cap. */
  track(conn: Deno.Conn): Client | undefined {
    if (this.open.size < this.maxConnections && !this.stopping) {
      const client = new Client(conn, this);
      this.open.add(client);
      return client;
    }
    // Accept-and-close keeps the listener accepting: the client gets a clean
    // end of stream at once instead of waiting in the kernel's queue.
    const why = this.stopping
      ? "the server is shutting down"
      : `${this.maxConnections} connections already open (--max-connections)`;
    this.log?.(`Refused ${formatAddr(conn.remoteAddr as Deno.NetAddr)}: ${why}`);
    closeQuietly(conn);
    return undefined;
  }

  /** Called by a client once it has closed. */
  forget(client: Client) {
    this.open.delete(client);
    if (this.stopping && this.open.size === 0) this.#drained.resolve();
  }

  /** At shutdown: close connections that have not sent anything yet. */
  closeIdle() {
    for (const client of [...this.open]) {
      if (client.bytesIn === 0) client.close("closed at shutdown");
    }
    if (this.open.size === 0) this.#drained.resolve();
  }

  /** At the end of the grace period: close everything. */
  closeAll() {
    for (const client of [...this.open]) client.close("closed at end of shutdown grace");
  }

  /** Resolves when, after shutdown began, the last connection has closed. */
  drained(): Promise<void> {
    return this.#drained.promise;
  }
}

/** One client's connection: byte counts, idle clock, full writes, one log line. */
class Client {
  bytesIn = 0;
  bytesOut = 0;
  /** When a read or a write last made progress (Date.now()). */
  lastProgress = Date.now();
  #conn: Deno.Conn;
  #server: ServerState;
  #outcome = "";
  #closed = false;

  constructor(conn: Deno.Conn, server: ServerState) {
    this.#conn = conn;
    this.#server = server;
  }

  /** Restarts the idle clock: called whenever a read or a write makes progress. */
  touch() {
    this.lastProgress = Date.now();
  }

  /**
   * Writes all of `data`. write() may take only part of the buffer, like
   * send() in C and Python, so loop. Awaiting every write before the next
   * read is what makes TCP flow control reach the client: a client that never
   * reads stops being read, and its bytes wait in its kernel, not our memory.
   */
  async write(data: Uint8Array) {
    let written = 0;
    while (written < data.length) {
      const n = await this.#conn.write(data.subarray(written));
      written += n;
      this.bytesOut += n;
      this.touch(); // progress, even if the client reads slowly
    }
  }

  /** Remembers why the exchange failed, for the log line. */
  fail(error: unknown) {
    if (!this.#closed) this.#outcome ||= describe(error);
  }

  /** Closes the connection once and logs one line about it. */
  close(reason = "") {
    if (this.#closed) return;
    this.#closed = true;
    this.#outcome ||= reason;
    closeQuietly(this.#conn);
    const suffix = this.#outcome ? ` (${this.#outcome})` : "";
    // An optional call evaluates its argument only when there is a log.
    this.#server.log?.(
      `Served ${formatAddr(this.#conn.remoteAddr as Deno.NetAddr)}: ` +
        `${this.bytesIn} bytes in, ${this.bytesOut} bytes out${suffix}`,
    );
    this.#server.forget(this);
  }
}

function closeQuietly(conn: Deno.Conn) {
  try {
    conn.close();
  } catch {
    // Already closed: nothing to do.
  }
}

/**
 * Formats an address as HOST:PORT, with brackets around IPv6 hosts.
 *
 * @example
 * ```ts
 * formatAddr({ transport: "tcp", hostname: "::1", port: 12000 }); // "[::1]:12000"
 * ```
 */
export function formatAddr(addr: Deno.NetAddr): string {
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  return `${host}:${addr.port}`;
}

/**
 * Formats the bound addresses for the ready line.
 *
 * @example
 * ```ts
 * formatAddrs([{ transport: "tcp", hostname: "127.0.0.1", port: 80 }]); // "127.0.0.1:80"
 * ```
 */
export function formatAddrs(addrs: Deno.NetAddr[]): string {
  return addrs.map(formatAddr).join(" and ");
}

// ===========================================================================
// Command line
// ===========================================================================

const USAGE = `Usage: deno run --allow-net tcp_server.ts [options]

The textbook's TCP uppercase server: every client's bytes come back in UPPERCASE.

Options:
  --host HOST              address to bind (default: localhost = 127.0.0.1 and ::1;
                           0.0.0.0 or :: serves other hosts)
  --port PORT              port to bind, 0 for any free port (default: ${DEFAULT_PORT})
  --idle-timeout SECONDS   close a connection idle this long, 0 = never (default: 300)
  --max-connections N      connections served at once (default: 1024)
  --quiet                  no log line per connection
  --help                   show this help

Examples:
  deno run --allow-net tcp_server.ts
  deno run --allow-net tcp_server.ts --port 0 --quiet
  deno run --allow-net tcp_server.ts --host 0.0.0.0   # the textbook's two-host exercise`;

/** Parsed command-line options of the server. */
export interface ServerArgs {
  help: boolean;
  hostname: string;
  port: number;
  idleTimeout: number;
  maxConnections: number;
  quiet: boolean;
}

/**
 * Parses the command line; throws a {@linkcode UsageError} on bad input.
 *
 * @example
 * ```ts
 * parseServerArgs(["--port", "0"]).port; // 0
 * ```
 */
export function parseServerArgs(args: string[]): ServerArgs {
  const { values, positionals } = parseUsage(() =>
    parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        host: { type: "string", default: "localhost" },
        port: { type: "string", default: String(DEFAULT_PORT) },
        "idle-timeout": { type: "string", default: "300" },
        "max-connections": { type: "string", default: "1024" },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    })
  );
  if (positionals.length > 0) {
    throw new UsageError(`Unexpected argument "${positionals[0]}"`);
  }
  if (values.host === "") throw new UsageError("--host must not be empty");
  return {
    help: values.help,
    hostname: values.host,
    port: parseNumber(values.port, "--port", { min: 0, max: 65535 }),
    idleTimeout: parseNumber(values["idle-timeout"], "--idle-timeout", {
      min: 0,
      max: 86400,
      fraction: true,
    }),
    maxConnections: parseNumber(values["max-connections"], "--max-connections", {
      min: 1,
      max: 1_000_000,
    }),
    quiet: values.quiet,
  };
}

/** A mistake on the command line: exit code 2. */
export class UsageError extends Error {}

function parseUsage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new UsageError(shortParseError(error));
  }
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

function parseNumber(
  text: string,
  flag: string,
  { min, max, fraction = false }: { min: number; max: number; fraction?: boolean },
): number {
  const pattern = fraction ? /^\d+(\.\d+)?$/ : /^\d+$/;
  const value = Number(text);
  if (!pattern.test(text) || value < min || value > max) {
    const kind = fraction ? "a number" : "a whole number";
    throw new UsageError(`${flag} must be ${kind} from ${min} to ${max}, not "${text}"`);
  }
  return value;
}

/** One line that tells the user what went wrong and what to do. */
function describe(error: unknown, context?: { hostname: string; port: number }): string {
  const where = context ? `${context.hostname}:${context.port}` : "";
  if (error instanceof Deno.errors.NotCapable) {
    return "Network access is not allowed: run again with the --allow-net flag " +
      "(deno run --allow-net tcp_server.ts)";
  }
  if (error instanceof Deno.errors.AddrInUse) {
    return `Address ${where} is already in use: stop the other server or choose another --port`;
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return `Cannot bind ${where}: ${context?.hostname} is not an address of this machine`;
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return `Permission denied binding ${where}: ports below 1024 need root; choose --port 1024 or above`;
  }
  if (error instanceof Deno.errors.ConnectionReset) return "reset by client";
  if (error instanceof Deno.errors.BrokenPipe) return "client went away";
  if (error instanceof Deno.errors.BadResource) return "connection closed";
  const message = error instanceof Error ? error.message : String(error);
  if (/failed to lookup address|Name or service not known/i.test(message)) {
    return `Unknown host "${context?.hostname}": check the --host name`;
  }
  return message.split("\n")[0];
}

/**
 * Runs the server from the command line and resolves to the exit code.
 *
 * @example
 * ```ts
 * const code = await main(["--help"]); // prints usage, returns 0
 * ```
 */
export async function main(args: string[]): Promise<number> {
  let options: ServerArgs;
  try {
    options = parseServerArgs(args);
  } catch (error) {
    printError(`${(error as Error).message} (see --help)`);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }

  const controller = new AbortController();
  let signals = 0;
  const onSignal = () => {
    // First signal: shut down gracefully. Second: quit at once.
    if (++signals > 1) Deno.exit(130);
    console.log(
      "Shutting down: finishing the exchanges in flight (press Ctrl-C again to quit now)",
    );
    controller.abort();
  };
  for (const name of ["SIGINT", "SIGTERM"] as const) {
    try {
      Deno.addSignalListener(name, onSignal);
    } catch {
      // Windows has no SIGTERM; Ctrl-C still works there.
    }
  }

  let server: TcpServer;
  try {
    server = await startTcpServer({
      hostname: options.hostname,
      port: options.port,
      idleTimeout: options.idleTimeout,
      maxConnections: options.maxConnections,
      signal: controller.signal,
      log: options.quiet ? null : console.log,
    });
  } catch (error) {
    printError(describe(error, options));
    return error instanceof Deno.errors.NotCapable ? 2 : 1;
  }
  console.log(`The server is ready to receive on ${formatAddrs(server.addrs)}`);
  console.log(
    isLoopback(options.hostname)
      ? "Only this machine can connect (loopback); use --host 0.0.0.0 or --host :: to serve other hosts."
      : `Serving other hosts too (--host ${options.hostname}): anyone who can reach this machine can connect.`,
  );
  await server.finished;
  console.log("The server has shut down.");
  return 0;
}

function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "::1" || hostname.startsWith("127.");
}

function printError(message: string) {
  // %c styles the word in a terminal; Deno drops the style when piped.
  console.error(`%cerror%c: ${message}`, "color: red; font-weight: bold", "");
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
