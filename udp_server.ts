#!/usr/bin/env -S deno run --allow-net --unstable-net
/**
 * UDPServer: the textbook's uppercase server over UDP, in Deno.
 *
 * Every datagram that arrives is sent back to its sender in UPPERCASE.
 *
 * ```sh
 * deno run --allow-net udp_server.ts                 # in this folder (deno.json)
 * deno run --allow-net --unstable-net udp_server.ts  # a copy on its own
 * ```
 *
 * UDP in Deno is still marked unstable: `Deno.listenDatagram` exists only with
 * `--unstable-net`, or with `"unstable": ["net"]` in deno.json.
 *
 * Part 1 of this file is the textbook's UDPServer.py in code, step by step;
 * the service is one function, {@linkcode upper}, or the textbook's suggested
 * modification, {@linkcode countS} (`--service count-s`). Part 2 is what "good code"
 * adds: whole datagrams of any size, correct UTF-8, replies too big for a
 * datagram dropped with a log line, both loopback addresses, no endless loops
 * with other servers (forged senders), logs that a flood cannot fill and a
 * full stdout cannot stall, clear errors and a graceful shutdown.
 *
 * @module
 */
import { parseArgs } from "node:util";

// ===========================================================================
// Part 1: the textbook's UDPServer.py, in Deno. Read it top to bottom; each
// step quotes the Python line it stands for. What it calls from Part 2 is the
// "good code" the textbook leaves out: skip that on a first reading.
// ===========================================================================

/** The textbook's port: `serverPort = 12000`. */
export const DEFAULT_PORT = 12000;

/**
 * Starts the server: binds its socket and answers datagrams until `signal`
 * aborts. Resolves once the socket is bound (example: {@linkcode UdpServer}).
 */
export async function startUdpServer(options: UdpServerOptions = {}): Promise<UdpServer> {
  const { hostname = "localhost", port = DEFAULT_PORT, signal, log = console.log } = options;
  const service = options.service === "count-s" ? countS : upper; // --service
  requireUnstableNet();
  // serverSocket = socket(AF_INET, SOCK_DGRAM); serverSocket.bind(('', serverPort))
  const serverSocket = Deno.listenDatagram({
    transport: "udp",
    hostname: hostname === "localhost" ? "127.0.0.1" : hostname, // and ::1, just below
    port,
  });
  const serverSockets = alsoOnIpv6Loopback(serverSocket, { hostname, port });
  // while True: (serveDatagrams, below), on every socket until the signal aborts
  const finished = serveAll(serverSockets, { signal, log, service });
  await Promise.resolve(); // async: a bind error above rejects, like every other failure
  return { addrs: serverSockets.map((socket) => socket.addr as Deno.NetAddr), finished };
}

/** Runs the server from the command line and resolves to the exit code. */
async function main(args: string[]): Promise<number> {
  const options = readCommandLine(args); // --help and mistakes end here, with an exit code
  if (typeof options === "number") return options;
  const out = new LineWriter(Deno.stdout); // log lines that never make the server wait
  const shutdown = shutdownOnSignals(out); // Ctrl-C: send the reply in flight, then stop
  try {
    const { hostname, port, service } = options;
    const log = options.quiet ? null : out.line;
    const server = await startUdpServer({ hostname, port, service, signal: shutdown.signal, log });
    // print("The server is ready to receive")
    out.line(`The server is ready to receive on ${formatAddrs(server.addrs)}`);
    out.line(whoCanReach(hostname));
    await server.finished; // until Ctrl-C
    out.line("The server has shut down.");
    await out.flush(LOG_FLUSH_MS); // a stdout nobody reads must not keep the server alive
    return 0;
  } catch (error) {
    return startFailed(error, options); // one line on stderr; exit code 2 or 1
  } finally {
    shutdown.remove();
  }
}

/** The `while True:` loop: answers one socket's datagrams until the server stops. */
async function serveDatagrams(serverSocket: Deno.DatagramConn, server: ServerState) {
  // recvfrom(2048) silently cuts longer datagrams: this buffer holds the largest.
  const buffer = new Uint8Array(65536);
  while (!server.stopping) {
    let message: Uint8Array, clientAddress: Deno.NetAddr;
    try {
      // message, clientAddress = serverSocket.recvfrom(2048)
      [message, clientAddress] = await serverSocket.receive(buffer) as [Uint8Array, Deno.NetAddr];
    } catch (error) {
      await receiveFailed(error, server); // logged: the server lives on
      continue;
    }
    // modifiedMessage = message.decode().upper()
    const modifiedMessage = server.service(decode(message)); // upper(), or countS()
    // serverSocket.sendto(modifiedMessage.encode(), clientAddress)
    const reply = encode(modifiedMessage);
    if (!mayAnswer(server, { message, reply, clientAddress })) continue; // loops, size: logged
    server.busy.add(serverSocket); // a shutdown now waits for this reply
    try {
      await serverSocket.send(reply, clientAddress);
      logServed(server, { message, reply, clientAddress });
    } catch (error) {
      logSendFailed(server, { error, clientAddress }); // the server lives on
    }
    server.busy.delete(serverSocket);
  }
}

/**
 * The service: the textbook's `.upper()`. Every reply is made here, so this
 * is the one place to change what the server does.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(upper("hello, wörld"), "HELLO, WÖRLD");
 * assert.equal(upper("straße"), "STRASSE"); // a reply can be longer than its message
 * ```
 */
export function upper(message: string): string {
  return message.toUpperCase();
}

/**
 * The textbook's suggested modification (`--service count-s`): instead of
 * uppercasing, count the letter s and reply with the number, as decimal
 * digits. The letter in either case, s and S; ß and ſ are other letters.
 * One datagram in, its count out.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(countS("She sells sea shells"), "6");
 * assert.equal(countS("straße"), "1");
 * ```
 */
export function countS(message: string): string {
  return String(message.match(/[sS]/g)?.length ?? 0);
}

// ===========================================================================
// Part 2: what good code adds
//
// Each function below is one step the textbook leaves out, and says why.
// ===========================================================================

// --- Binding -------------------------------------------------------------------

/** Thrown when Deno runs without the flag that enables UDP. */
export class UnstableNetError extends Error {
  /** The message says which flag to add, or where to run from. */
  constructor() {
    super(
      "UDP needs the --unstable-net flag: run deno run --allow-net --unstable-net " +
        "udp_server.ts, or run it from the project folder, whose deno.json enables it",
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
 * Returns the sockets to serve: `serverSocket`, and for `localhost` a second
 * one on ::1. Whether a client's `localhost` means 127.0.0.1 or ::1 depends on
 * its system (/etc/hosts), so the server binds both, on the same port. With
 * port 0 the system picked a port for 127.0.0.1 that may be taken on ::1:
 * then both are bound again, on another port (10 tries in all).
 */
function alsoOnIpv6Loopback(
  serverSocket: Deno.DatagramConn,
  { hostname, port }: { hostname: string; port: number },
): Deno.DatagramConn[] {
  if (hostname !== "localhost") return [serverSocket];
  let v4 = serverSocket;
  for (let attempt = 1;; attempt++) {
    const chosen = (v4.addr as Deno.NetAddr).port;
    try {
      return [v4, Deno.listenDatagram({ transport: "udp", hostname: "::1", port: chosen })];
    } catch (error) {
      if (error instanceof Deno.errors.AddrNotAvailable) return [v4]; // no IPv6 here
      v4.close();
      // With port 0 the port can be free on 127.0.0.1 but taken on ::1: retry.
      const retry = port === 0 && error instanceof Deno.errors.AddrInUse;
      if (!retry || attempt === 10) throw error;
      v4 = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port });
    }
  }
}

/** Closes a socket that may be closed already. */
function closeQuietly(socket: Deno.DatagramConn) {
  try {
    socket.close();
  } catch {
    // Already closed: nothing to do.
  }
}

// --- Serving and shutting down -------------------------------------------------

/** What the receive loops share. */
interface ServerState {
  /** Set by the shutdown: each loop ends once its reply in flight is sent. */
  stopping: boolean;
  /** Sockets sending a reply right now. */
  busy: Set<Deno.DatagramConn>;
  /** Where log lines go, floods summed up; null for none. */
  logs: LogLimiter | null;
  /** Refuses replies that could start or feed a loop. */
  guard: LoopGuard;
  /** The service: upper() or countS(). */
  service: (message: string) => string;
}

/**
 * Runs {@linkcode serveDatagrams} on every socket, and closes each when its
 * loop ends. Resolves once all have ended (after `signal` aborts).
 */
function serveAll(
  serverSockets: Deno.DatagramConn[],
  { signal, log, service }: {
    signal?: AbortSignal;
    log: ((line: string) => void) | null;
    service: (message: string) => string;
  },
): Promise<void> {
  const logs = log ? new LogLimiter(log) : null;
  const ownPort = (serverSockets[0].addr as Deno.NetAddr).port;
  const server: ServerState = {
    stopping: false,
    busy: new Set(),
    logs,
    guard: new LoopGuard(ownPort, logs),
    service,
  };
  const loops = serverSockets.map((socket) =>
    serveDatagrams(socket, server).finally(() => closeQuietly(socket))
  );
  stopWhenAborted(signal, serverSockets, server);
  return Promise.all(loops).then(() => logs?.close());
}

/**
 * Shuts the server down when `signal` aborts. A socket waiting in receive()
 * has nothing in flight: it is closed now, which ends its receive(). A socket
 * sending a reply is closed by its loop once the reply is out.
 */
function stopWhenAborted(
  signal: AbortSignal | undefined,
  serverSockets: Deno.DatagramConn[],
  server: ServerState,
) {
  const stop = () => {
    server.stopping = true;
    for (const socket of serverSockets) if (!server.busy.has(socket)) closeQuietly(socket);
  };
  if (signal?.aborted) stop();
  else signal?.addEventListener("abort", stop, { once: true });
}

// --- Receiving -----------------------------------------------------------------

/**
 * After a failed receive: nothing when the server is stopping (it closed the
 * socket itself); otherwise a log line, and a short pause before the next.
 */
async function receiveFailed(error: unknown, server: ServerState) {
  if (server.stopping) return;
  // One bad datagram or an ICMP error report must not stop the server.
  server.logs?.line("failed", `Could not receive a datagram: ${describe(error)}`);
  await new Promise((resolve) => setTimeout(resolve, 10)); // never spin
}

/** Each datagram is a whole message, decoded on its own. */
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });

/**
 * Bytes to text, as Python's `decode()`: invalid bytes become U+FFFD, and a
 * leading byte order mark is kept (ignoreBOM), not dropped.
 */
function decode(message: Uint8Array): string {
  return decoder.decode(message);
}

// --- Replying ------------------------------------------------------------------

const encoder = new TextEncoder();

/** Text to UTF-8 bytes, as Python's `encode()`. */
function encode(modifiedMessage: string): Uint8Array {
  return encoder.encode(modifiedMessage);
}

/** The largest UDP payload: 65535 minus the IP and UDP headers. */
const MAX_PAYLOAD = { ipv4: 65507, ipv6: 65527 };

/** What a reply step is about: the request, its reply, and the client. */
interface Exchange {
  message: Uint8Array;
  reply: Uint8Array;
  clientAddress: Deno.NetAddr;
}

/**
 * Whether to send `reply` at all: not to a sender that could start or feed
 * a loop (see {@linkcode LoopGuard}), and not if it does not fit in one
 * datagram. Each refusal is logged.
 */
function mayAnswer(server: ServerState, exchange: Exchange): boolean {
  const { message, reply, clientAddress } = exchange;
  if (!server.guard.allows(clientAddress, message, reply)) return false;
  return fitsInDatagram(server, exchange);
}

/**
 * Whether a reply fits in one datagram. Uppercasing can make a message longer
 * (ß becomes SS, ΐ grows from 2 to 6 bytes), so a reply may not fit even when
 * the request did: that reply is dropped with a log line, never a crash.
 */
function fitsInDatagram(server: ServerState, { message, reply, clientAddress }: Exchange) {
  const limit = clientAddress.hostname.includes(":") ? MAX_PAYLOAD.ipv6 : MAX_PAYLOAD.ipv4;
  if (reply.length <= limit) return true;
  server.logs?.line(
    "dropped",
    `Dropped the reply to ${formatAddr(clientAddress)}: ${message.length} bytes in, ` +
      `${reply.length} bytes out do not fit in one datagram (at most ${limit})`,
  );
  return false;
}

/** Logs a reply that was sent. */
function logServed(server: ServerState, { message, reply, clientAddress }: Exchange) {
  server.logs?.line(
    "served",
    `Served ${formatAddr(clientAddress)}: ${message.length} bytes in, ${reply.length} bytes out`,
  );
}

/** Logs a reply that could not be sent, and why. */
function logSendFailed(
  server: ServerState,
  { error, clientAddress }: { error: unknown; clientAddress: Deno.NetAddr },
) {
  // A reply goes to the client's own port: a grant like
  // --allow-net=127.0.0.1:12000 lets us bind, but not answer.
  const why = error instanceof Deno.errors.NotCapable
    ? `the --allow-net grant does not include ${formatAddr(clientAddress)} (replies go to ` +
      "each client's own port: grant hosts without a port, as in --allow-net='127.0.0.1,[::1]')"
    : describe(error);
  server.logs?.line("failed", `Could not reply to ${formatAddr(clientAddress)}: ${why}`);
}

// --- Loops: "Loop DoS" (CVE-2024-2169) -------------------------------------
//
// Uppercasing uppercase text changes nothing. So if one forged datagram
// claims to come from this server itself, or from another uppercase (or echo)
// server, each reply is answered by a reply, forever: two servers bounce one
// datagram at full speed, a full core each, until someone kills them. UDP
// source addresses cannot be trusted, so the server decides from what it can
// see: the source port, and whether its reply would equal the request. The
// reply is whatever upper() made, so this holds whatever the service is.

/** Datagrams per second that uppercasing leaves unchanged, answered per sender. */
export const LOOP_BUDGET = 100;

/** Senders whose unchanged datagrams are counted at once; past it, new ones wait. */
export const LOOP_BUDGET_SENDERS = 10_000;

/**
 * Says why a datagram from `from` must get no reply at all, or undefined if it
 * may be answered.
 *
 * - From the server's own port: the datagram claims to come from this server
 *   itself, or from another server on the same port. Answering it starts a
 *   loop. Clients send from ports the system hands out (32768 and up on
 *   Linux), never from a port a server holds.
 * - From a port below 1024: those belong to services (echo 7, daytime 13,
 *   chargen 19, DNS 53, NTP 123), never to clients, and each of them answers
 *   whatever it gets: a forged datagram would start a loop with them.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const from = (port: number) => ({ transport: "udp", hostname: "127.0.0.1", port }) as const;
 * assert.match(refusalReason(from(12000), 12000)!, /this server's own port/);
 * assert.match(refusalReason(from(53), 12000)!, /belongs to a service/);
 * assert.equal(refusalReason(from(50000), 12000), undefined);
 * ```
 */
export function refusalReason(from: Deno.NetAddr, ownPort: number): string | undefined {
  if (from.port === ownPort) {
    return "it comes from this server's own port (forged, or another server on the same port)";
  }
  if (from.port < 1024) {
    return `port ${from.port} belongs to a service (echo, DNS...), not a client`;
  }
  return undefined;
}

/**
 * Decides, datagram by datagram, whether a reply could start or feed a loop.
 *
 * Besides {@linkcode refusalReason}, a loop with another uppercase or echo
 * server on any other port is caught by its content: from the second round
 * on, every datagram in it comes back unchanged. Ordinary clients send
 * lowercase text, so only datagrams whose reply equals the request are
 * counted, per sender, and past {@linkcode LOOP_BUDGET} in a second the
 * sender is not answered for the rest of that second. A loop is one datagram
 * bouncing back and forth: one reply not sent ends it.
 */
class LoopGuard {
  #ownPort: number;
  #logs: LogLimiter | null;
  /** Sender ("HOST:PORT") -> unchanged datagrams in this window. */
  #counts = new Map<string, number>();
  #windowEnd = 0;
  #fullReported = false;

  /** `ownPort`: the port the server is bound to; `logs`: where refusals go. */
  constructor(ownPort: number, logs: LogLimiter | null) {
    this.#ownPort = ownPort;
    this.#logs = logs;
  }

  /** Whether to send `reply` for `request` from `from`. */
  allows(from: Deno.NetAddr, request: Uint8Array, reply: Uint8Array): boolean {
    const refused = refusalReason(from, this.#ownPort);
    if (refused !== undefined) {
      this.#logs?.line("refused", `Did not answer ${formatAddr(from)}: ${refused}`);
      return false;
    }
    // The common case costs one comparison: the first letter differs.
    if (!sameBytes(request, reply)) return true;
    return this.#withinBudget(from);
  }

  /** Counts one unchanged datagram from `from`; false once over the budget. */
  #withinBudget(from: Deno.NetAddr): boolean {
    const now = performance.now();
    if (now >= this.#windowEnd) {
      // A new one-second window: every sender starts again from zero.
      this.#counts.clear();
      this.#windowEnd = now + 1000;
      this.#fullReported = false;
    }
    const key = formatAddr(from);
    const count = (this.#counts.get(key) ?? 0) + 1;
    if (count === 1 && this.#counts.size >= LOOP_BUDGET_SENDERS) {
      // Millions of made-up senders must not grow the table: new senders of
      // unchanged datagrams wait for the next second.
      if (!this.#fullReported) {
        this.#fullReported = true;
        this.#logs?.line(
          "loop",
          `Not answering new senders of datagrams that uppercasing does not change for the ` +
            `rest of this second: ${LOOP_BUDGET_SENDERS} senders are counted already (a flood?)`,
        );
      }
      return false;
    }
    this.#counts.set(key, count);
    if (count === LOOP_BUDGET + 1) {
      // Once per sender per second, not once per datagram.
      this.#logs?.line(
        "loop",
        `Stopped answering ${formatAddr(from)} for the rest of this second: over ${LOOP_BUDGET} ` +
          "datagrams in 1 s that uppercasing does not change (a loop with another server?)",
      );
    }
    return count <= LOOP_BUDGET;
  }
}

/** Whether two byte arrays hold the same bytes. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// --- Log floods --------------------------------------------------------------
//
// A line per datagram lets whoever sends datagrams choose how much the server
// writes: 48 bytes per datagram, megabytes per second in a flood. Each kind of
// line is written as it is only LOG_LINES_PER_SECOND times a second; the rest
// are counted and summed up once a second.

/** Lines of one kind written as they are, per second; the rest are counted. */
export const LOG_LINES_PER_SECOND = 10;

/** The kinds of log line, and how a summary line names them. */
const LOG_KINDS = {
  served: "datagrams served",
  dropped: "replies dropped (too big for one datagram)",
  refused: "datagrams not answered (from a server's port)",
  loop: "senders stopped (datagrams that uppercasing does not change)",
  failed: "failed receives or replies",
} as const;

/** A kind of log line: see LOG_KINDS. */
type LogKind = keyof typeof LOG_KINDS;

/**
 * Passes at most {@linkcode LOG_LINES_PER_SECOND} lines of each kind per
 * second to `log`, then one summary line per kind and second, as in
 * "... and 5321 more datagrams served in the last second". One timer for
 * the whole server, none per line.
 */
class LogLimiter {
  #log: (line: string) => void;
  #counts: Record<LogKind, number> = { served: 0, dropped: 0, refused: 0, loop: 0, failed: 0 };
  #timer: ReturnType<typeof setInterval>;

  /** Starts the once-a-second summary timer; `log` writes one line. */
  constructor(log: (line: string) => void) {
    this.#log = log;
    this.#timer = setInterval(() => this.flush(), 1000);
  }

  /** Logs `text`, or only counts it if this kind has had its lines this second. */
  line(kind: LogKind, text: string) {
    if (++this.#counts[kind] <= LOG_LINES_PER_SECOND) this.#log(text);
  }

  /** Writes the summary lines of the second that ends now. */
  flush() {
    for (const kind of Object.keys(this.#counts) as LogKind[]) {
      const more = this.#counts[kind] - LOG_LINES_PER_SECOND;
      if (more > 0) this.#log(`... and ${more} more ${LOG_KINDS[kind]} in the last second`);
      this.#counts[kind] = 0;
    }
  }

  /** Writes the last summary and stops the timer. */
  close() {
    clearInterval(this.#timer);
    this.flush();
  }
}

/** Options for {@linkcode startUdpServer}. */
export interface UdpServerOptions {
  /**
   * Address to bind. `localhost` (the default) binds both loopback addresses,
   * 127.0.0.1 and ::1, on one port, so a client reaches it whichever of the
   * two its `localhost` means. `0.0.0.0` or `::` serves other hosts too.
   */
  hostname?: string;
  /** Port to bind; 0 lets the system choose. Default 12000. */
  port?: number;
  /** The service: "upper" (the default) or "count-s" (see {@linkcode countS}). */
  service?: "upper" | "count-s";
  /** Aborting it shuts the server down once the reply in flight is sent. */
  signal?: AbortSignal;
  /** Where log lines go; default `console.log`; `null` for none (--quiet). */
  log?: ((line: string) => void) | null;
}

/**
 * A running server, as returned by {@linkcode startUdpServer}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const stop = new AbortController();
 * const server = await startUdpServer({ port: 0, log: null, signal: stop.signal });
 * assert.equal(server.addrs[0].hostname, "127.0.0.1"); // and ::1, on the same port
 * stop.abort();
 * await server.finished; // every socket is closed
 * ```
 */
export interface UdpServer {
  /** The bound addresses, with the real port. */
  addrs: Deno.NetAddr[];
  /** Resolves once the server has shut down and its sockets are closed. */
  finished: Promise<void>;
}

/**
 * Formats an address as HOST:PORT, with brackets around IPv6 hosts.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(formatAddr({ transport: "udp", hostname: "::1", port: 12000 }), "[::1]:12000");
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
 * import assert from "node:assert/strict";
 * const v4 = { transport: "udp", hostname: "127.0.0.1", port: 80 } as const;
 * const v6 = { transport: "udp", hostname: "::1", port: 80 } as const;
 * assert.equal(formatAddrs([v4, v6]), "127.0.0.1:80 and [::1]:80");
 * ```
 */
export function formatAddrs(addrs: Deno.NetAddr[]): string {
  return addrs.map(formatAddr).join(" and ");
}

// ===========================================================================
// Command line
// ===========================================================================

const USAGE = `Usage: deno run --allow-net --unstable-net udp_server.ts [options]

The textbook's UDP uppercase server: every datagram comes back in UPPERCASE.
(In this folder deno.json enables --unstable-net for you.)

Options:
  --host HOST    address to bind (default: localhost = 127.0.0.1 and ::1;
                 0.0.0.0 or :: serves other hosts)
  --port PORT    port to bind, 0 for any free port (default: ${DEFAULT_PORT})
  --service NAME upper (the default) or count-s: the textbook's modification,
                 the number of times the letter s (or S) appears in each datagram
  --quiet        no log lines (otherwise up to ${LOG_LINES_PER_SECOND} a second of each kind,
                 then one summary line a second)
  --help         show this help

Ctrl-C, SIGTERM and SIGHUP (the terminal closing) shut it down gracefully; a
second one more than 0.2 s later quits at once. No reply goes to the
server's own port or to ports below 1024, and a sender whose datagrams
uppercasing leaves unchanged (a loop with another server) gets at most
${LOOP_BUDGET} replies a second.

Examples:
  deno run --allow-net udp_server.ts
  deno run --allow-net udp_server.ts --port 0 --quiet
  deno run --allow-net udp_server.ts --service count-s   # the textbook's modification
  deno run --allow-net udp_server.ts --host 0.0.0.0   # the textbook's two-host exercise`;

/** Parsed command-line options of the server. */
export interface ServerArgs {
  /** --help: show the usage and exit. */
  help: boolean;
  /** --host: the address to bind. */
  hostname: string;
  /** --port: the port to bind, 0 for any free port. */
  port: number;
  /** --service: "upper" (the default) or "count-s". */
  service: "upper" | "count-s";
  /** --quiet: no log lines. */
  quiet: boolean;
}

/** A mistake on the command line: exit code 2. */
export class UsageError extends Error {}

/**
 * Parses the command line; throws a {@linkcode UsageError} on bad input.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(parseServerArgs(["--port", "0"]).port, 0);
 * assert.throws(() => parseServerArgs(["--port", "x"]), UsageError);
 * ```
 */
export function parseServerArgs(args: string[]): ServerArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        host: { type: "string", default: "localhost" },
        port: { type: "string", default: String(DEFAULT_PORT) },
        service: { type: "string", default: "upper" },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (error) {
    throw new UsageError(shortParseError(error));
  }
  const { values, positionals } = parsed;
  if (positionals.length > 0) throw new UsageError(`Unexpected argument "${positionals[0]}"`);
  if (values.host === "") throw new UsageError("--host must not be empty");
  if (!/^\d+$/.test(values.port) || Number(values.port) > 65535) {
    throw new UsageError(`--port must be a whole number from 0 to 65535, not "${values.port}"`);
  }
  if (values.service !== "upper" && values.service !== "count-s") {
    throw new UsageError(`--service must be upper or count-s, not "${values.service}"`);
  }
  return {
    help: values.help,
    hostname: values.host,
    port: Number(values.port),
    service: values.service,
    quiet: values.quiet,
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

/** One line that tells the user what went wrong and what to do. */
function describe(error: unknown, context?: { hostname: string; port: number }): string {
  const where = context ? `${context.hostname}:${context.port}` : "";
  if (error instanceof UnstableNetError) return error.message;
  if (error instanceof Deno.errors.NotCapable) return permissionMessage(error, context);
  if (error instanceof Deno.errors.AddrInUse) {
    return `Address ${where} is already in use: stop the other server or choose another --port`;
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return `Cannot bind ${where}: ${context?.hostname} is not an address of this machine`;
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return `Permission denied binding ${where}: ports below 1024 need root; choose --port 1024 or above`;
  }
  const message = error instanceof Error ? error.message : String(error);
  if (/failed to lookup address|Name or service not known/i.test(message)) {
    return `Unknown host "${context?.hostname}": check the --host name`;
  }
  return message.split("\n")[0];
}

/**
 * Says which network permission is missing. Without any --allow-net, the
 * fix is the flag; with a grant that is too narrow (a port, or 127.0.0.1
 * without ::1), it names the address that was refused and the grant to give.
 */
function permissionMessage(
  error: Deno.errors.NotCapable,
  context?: { hostname: string; port: number },
): string {
  // Deno's message: Requires net access to "[::1]:12000", run again with ...
  const denied = /Requires net access to "([^"]+)"/.exec(error.message)?.[1];
  const hosts = context?.hostname === "localhost"
    ? ["127.0.0.1", "[::1]"]
    : [bracketed(context?.hostname ?? "")];
  // Was any grant given? Deno cannot say; ask about the likely addresses.
  const likely = [...hosts, "127.0.0.1", "[::1]", "0.0.0.0", "[::]"];
  const granted = context !== undefined &&
    likely.some((host) => isGranted(`${host}:${context.port}`));
  if (denied === undefined || !granted) {
    return "Network access is not allowed: run again with the --allow-net flag " +
      "(deno run --allow-net --unstable-net udp_server.ts)";
  }
  if (!isLoopback(context!.hostname)) {
    return `Network access to ${denied} was not granted: a server for other ` +
      "hosts needs the whole --allow-net flag (it answers each client at its own address and port)";
  }
  return `Network access to ${denied} was not granted: grant the hosts without ` +
    `a port, as in --allow-net='${hosts.join(",")}' (each reply goes to the client's own port)`;
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
  return hostname.includes(":") ? `[${hostname}]` : hostname;
}

/**
 * The options to run with, or the exit code when there is nothing to run:
 * 0 after --help, 2 after a mistake on the command line (said on stderr).
 */
function readCommandLine(args: string[]): ServerArgs | number {
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
  return options;
}

/**
 * Says why the server could not start, in one line on stderr, and returns
 * the exit code: 2 when the command itself must change (a permission, a
 * flag), 1 otherwise (the port is taken, say).
 */
function startFailed(error: unknown, options: ServerArgs): number {
  printError(describe(error, options));
  const invocation = error instanceof Deno.errors.NotCapable || error instanceof UnstableNetError;
  return invocation ? 2 : 1;
}

/** The line after the ready line: who can reach the server. */
function whoCanReach(hostname: string): string {
  return isLoopback(hostname)
    ? "Only this machine can reach it (loopback); use --host 0.0.0.0 or --host :: to serve other hosts."
    : `Serving other hosts too (--host ${hostname}): anyone who can reach this machine can send to it.`;
}

/** Whether `hostname` is a loopback address, reachable from this machine only. */
function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "::1" || hostname.startsWith("127.");
}

/** Writes "error: MESSAGE" on stderr. */
function printError(message: string) {
  // %c styles the word in a terminal; Deno drops the style when piped.
  console.error(`%cerror%c: ${message}`, "color: red; font-weight: bold", "");
}

// --- Signals -------------------------------------------------------------------

/** A signal that stops the server; SIGHUP is the terminal closing. */
export type StopSignal = "SIGHUP" | "SIGINT" | "SIGTERM";

/** The stop signals and their numbers (the shell reports death by one as 128 + it). */
const STOP_SIGNALS: Record<StopSignal, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

/**
 * Signals this soon after the first are the same one: under `deno task`,
 * Ctrl-C reaches the server twice within milliseconds (from the terminal, and
 * forwarded by deno task).
 */
export const SIGNAL_REPEAT_MS = 200;

/**
 * What a stop signal means: the first starts the graceful shutdown, a repeat
 * within {@linkcode SIGNAL_REPEAT_MS} is ignored, a later one quits at once
 * with the shell's code for death by that signal, 128 + its number.
 *
 * @param msSinceFirst milliseconds since the first stop signal, or undefined
 *   if this is the first.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(signalAction("SIGINT", undefined), "shut down");
 * assert.equal(signalAction("SIGINT", 5), "ignore");
 * assert.equal(signalAction("SIGTERM", 900), 143);
 * ```
 */
export function signalAction(
  signal: StopSignal,
  msSinceFirst: number | undefined,
): "shut down" | "ignore" | number {
  if (msSinceFirst === undefined) return "shut down";
  if (msSinceFirst < SIGNAL_REPEAT_MS) return "ignore";
  return 128 + STOP_SIGNALS[signal];
}

/**
 * Calls `onFirst` on the first stop signal and quits at once on a later
 * one; returns a function that removes the listeners.
 */
function onStopSignals(onFirst: () => void): () => void {
  let firstAt: number | undefined;
  const listeners = (Object.keys(STOP_SIGNALS) as StopSignal[]).map((signal) => {
    const listener = () => {
      const action = signalAction(
        signal,
        firstAt === undefined ? undefined : performance.now() - firstAt,
      );
      if (action === "shut down") {
        firstAt = performance.now();
        onFirst();
      } else if (action !== "ignore") {
        Deno.exit(action); // a second signal: quit now
      }
    };
    try {
      Deno.addSignalListener(signal, listener);
    } catch {
      // Windows has no SIGTERM or SIGHUP; Ctrl-C still works there.
    }
    return [signal, listener] as const;
  });
  return () => {
    for (const [signal, listener] of listeners) {
      try {
        Deno.removeSignalListener(signal, listener);
      } catch {
        // Never added.
      }
    }
  };
}

/**
 * Starts the graceful shutdown on the first stop signal. Returns the signal
 * that aborts then, and a function that removes the listeners.
 */
function shutdownOnSignals(out: LineWriter): { signal: AbortSignal; remove: () => void } {
  const controller = new AbortController();
  const remove = onStopSignals(() => {
    out.line("Shutting down: sending the reply in flight (press Ctrl-C again to quit now)");
    controller.abort();
  });
  return { signal: controller.signal, remove };
}

// --- Log output that never blocks ----------------------------------------------

/** Log lines that may wait for the output; past it, lines are dropped and counted. */
export const LOG_QUEUE_LINES = 1000;

/** How long the goodbye waits for a stuck output before the server exits anyway. */
const LOG_FLUSH_MS = 2000;

/**
 * Writes log lines without ever making the server wait. console.log is a
 * synchronous write: with stdout a pipe nobody reads (full at 64 KiB), it
 * freezes the whole server. Here lines wait in a bounded queue, and one
 * asynchronous write at a time takes them out. When the queue is full, lines
 * are dropped and counted, and the count is written once the output moves.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const out = new LineWriter(Deno.stdout);
 * out.line("The server is ready to receive on 127.0.0.1:12000");
 * assert.equal(await out.flush(2000), true); // written
 * ```
 */
export class LineWriter {
  #output: { write(p: Uint8Array): Promise<number> };
  #queue: string[] = [];
  #dropped = 0;
  #writing: Promise<void> | undefined;
  #broken = false;

  /** `output`: where the lines go, such as Deno.stdout. */
  constructor(output: { write(p: Uint8Array): Promise<number> }) {
    this.#output = output;
  }

  /** Queues one line; never waits. An arrow function, so it can be passed as `log`. */
  line = (text: string) => {
    if (this.#broken) return;
    if (this.#queue.length >= LOG_QUEUE_LINES) {
      this.#dropped++;
      return;
    }
    this.#queue.push(text);
    this.#writing ??= this.#drain();
  };

  async #drain() {
    const encoder = new TextEncoder();
    try {
      while (this.#queue.length > 0) {
        let text = this.#queue.join("\n") + "\n";
        this.#queue = [];
        // Lines were dropped after the ones just taken, before any later one.
        if (this.#dropped > 0) {
          text += `(${this.#dropped} log lines dropped: the output could not keep up)\n`;
          this.#dropped = 0;
        }
        const bytes = encoder.encode(text);
        for (let written = 0; written < bytes.length;) {
          written += await this.#output.write(bytes.subarray(written));
        }
      }
    } catch {
      // The output is closed (nobody will ever read it): stop writing.
      this.#broken = true;
      this.#queue = [];
    } finally {
      this.#writing = undefined;
    }
  }

  /** Resolves to true once every queued line is written, or false after `ms`. */
  async flush(ms: number): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
    try {
      while (this.#writing) {
        if (!await Promise.race([this.#writing.then(() => true), late])) return false;
      }
      return true;
    } finally {
      clearTimeout(timer);
    }
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
