/**
 * Loopback networking for the grading checks: requests that report what
 * happened instead of throwing, readiness probes, and listeners on both
 * loopback addresses. Every wait has a deadline and every socket is closed
 * before a function returns.
 *
 * @module
 */

import net from "node:net";
import { ReplyWatcher } from "./compare.ts";

/** Where a server listens. */
export interface Address {
  /** A loopback address: "127.0.0.1" or "::1". */
  hostname: string;
  /** The port. */
  port: number;
}

/** The two loopback addresses, tried in this order. */
export const LOOPBACK_HOSTS = ["127.0.0.1", "::1"] as const;

/**
 * More loopback addresses that real clients hard-code along with a fixed
 * port: 127.0.1.1 is what Debian and Ubuntu map the machine's own name to
 * (gethostname()), and a real submission connected to 127.0.0.2. A textbook
 * server bound to '' answers on all of them; so do the kit's servers for a
 * client on a fixed port, where the system has them.
 */
export const MORE_LOOPBACK_HOSTS = ["127.0.1.1", "127.0.0.2"] as const;

/**
 * Binds `bind(hostname, port)` on 127.0.0.1 and on ::1 with the same port
 * (with port 0, the one the system picked for 127.0.0.1). ::1 is skipped on
 * a machine without IPv6. A fixed port is also bound, where possible, on
 * {@linkcode MORE_LOOPBACK_HOSTS}.
 */
function bindBoth<T extends { close(): void; addr: Deno.Addr }>(
  bind: (hostname: string, port: number) => T,
  port: number,
): T[] {
  const bound = bindPair(bind, port);
  if (port === 0) return bound;
  for (const hostname of MORE_LOOPBACK_HOSTS) {
    try {
      bound.push(bind(hostname, port));
    } catch {
      // Not an address of this machine (macOS has 127.0.0.1 only), or taken.
    }
  }
  return bound;
}

function bindPair<T extends { close(): void; addr: Deno.Addr }>(
  bind: (hostname: string, port: number) => T,
  port: number,
): T[] {
  for (let attempt = 1;; attempt++) {
    const v4 = bind("127.0.0.1", port);
    const chosen = (v4.addr as Deno.NetAddr).port;
    try {
      return [v4, bind("::1", chosen)];
    } catch (error) {
      if (error instanceof Deno.errors.AddrNotAvailable) return [v4];
      v4.close();
      const retry = port === 0 && error instanceof Deno.errors.AddrInUse && attempt < 10;
      if (!retry) throw error;
    }
  }
}

/**
 * TCP listeners on 127.0.0.1 and ::1, on `port` (0: any free port).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listeners = listenTcpLoopback(0);
 * const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
 * assert.ok(ports.every((port) => port === ports[0])); // one port on both addresses
 * for (const l of listeners) l.close();
 * ```
 */
export function listenTcpLoopback(port: number): Deno.TcpListener[] {
  return bindBoth((hostname, p) => Deno.listen({ hostname, port: p }), port);
}

/**
 * UDP sockets on 127.0.0.1 and ::1, on `port` (0: any free port).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const sockets = bindUdpLoopback(0);
 * assert.equal((sockets[0].addr as Deno.NetAddr).hostname, "127.0.0.1");
 * for (const s of sockets) s.close();
 * ```
 */
export function bindUdpLoopback(port: number): Deno.DatagramConn[] {
  return bindBoth(
    (hostname, p) => Deno.listenDatagram({ transport: "udp", hostname, port: p }),
    port,
  );
}

/**
 * Whether `port` can be bound on `hostnames` (default 127.0.0.1 and ::1, both
 * of which the kit binds) within `ms` (port 0: at once). Right after the previous check's listener closed, its port can
 * stay taken for a moment (measured under gVisor with the whole suite
 * running: free again about a millisecond later), and a grade must not fail
 * for that.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const port = listener.addr.port;
 * assert.equal(await portBecomesFree("tcp", port, { ms: 50 }), false);
 * listener.close();
 * assert.equal(await portBecomesFree("tcp", port), true);
 * ```
 */
export async function portBecomesFree(
  transport: "tcp" | "udp",
  port: number,
  { ms = 1000, hostnames = LOOPBACK_HOSTS }: { ms?: number; hostnames?: readonly string[] } = {},
): Promise<boolean> {
  if (port === 0) return true; // any free port: nothing to wait for
  const stopAt = performance.now() + ms;
  while (!portIsFree(transport, port, hostnames)) {
    if (performance.now() >= stopAt) return false;
    await sleep(10);
  }
  return true;
}

/**
 * Whether `port` can be bound on each of `hostnames` right now (default
 * 127.0.0.1 and ::1; an address this machine lacks, ::1 without IPv6, is skipped).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * assert.equal(portIsFree("tcp", listener.addr.port), false);
 * listener.close();
 * ```
 */
export function portIsFree(
  transport: "tcp" | "udp",
  port: number,
  hostnames: readonly string[] = LOOPBACK_HOSTS,
): boolean {
  for (const hostname of hostnames) {
    try {
      const socket = transport === "tcp"
        ? Deno.listen({ hostname, port })
        : Deno.listenDatagram({ transport: "udp", hostname, port });
      socket.close();
    } catch (error) {
      if (error instanceof Deno.errors.AddrInUse) return false;
      if (error instanceof Deno.errors.AddrNotAvailable) continue; // no IPv6 here
      throw error;
    }
  }
  return true;
}

/**
 * Resolves after `ms`, or at once when `signal` aborts.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const controller = new AbortController();
 * const started = performance.now();
 * setTimeout(() => controller.abort(), 10);
 * await sleep(60_000, controller.signal); // ends at the abort, not after a minute
 * assert.ok(performance.now() - started < 5000);
 * ```
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Rejects with a clear message if `promise` has not settled within `ms`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(await withDeadline(Promise.resolve(42), 2000, "the answer"), 42);
 * await assert.rejects(
 *   withDeadline(new Promise(() => {}), 10, "the reply"),
 *   /^Error: Deadline: the reply took over 10 ms$/,
 * );
 * ```
 */
export async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Deadline: ${what} took over ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A TCP connection to a program under test, with one difference from
 * `Deno.connect`: once the program has closed its side, `close()` resets
 * the connection (RST) instead of closing it (FIN). A server that closes
 * first would otherwise keep its port in TIME_WAIT for up to a minute, and
 * a server without SO_REUSEADDR (the textbook's) could not bind it again:
 * with a template without {port}, every later program on the fixed port
 * would fail to start. (`node:net`'s `resetAndDestroy()` sets SO_LINGER 0.)
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * // An echo server: reads to the end, sends it all back, closes.
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const echo = (async () => {
 *   using conn = await listener.accept();
 *   await writeAll(conn, await readToEnd(conn));
 * })();
 *
 * const conn = await ResettingConn.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * await conn.write(new TextEncoder().encode("hi"));
 * await conn.closeWrite();
 * const chunks: Uint8Array[] = [];
 * for (let chunk = await conn.read(); chunk; chunk = await conn.read()) chunks.push(chunk);
 * await conn.close(); // a reset: the echo server closed first
 * assert.equal(new TextDecoder().decode(concat(chunks)), "hi");
 * await echo;
 * listener.close();
 * ```
 */
export class ResettingConn {
  #socket: net.Socket;
  #chunks: Uint8Array[] = [];
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  #closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    this.#closed = new Promise((resolve) => socket.once("close", () => resolve()));
    socket.on("data", (data: Uint8Array) => {
      this.#chunks.push(new Uint8Array(data));
      this.#wakeReader();
    });
    socket.once("end", () => {
      this.#ended = true;
      this.#wakeReader();
    });
    socket.on("error", (error: Error) => {
      this.#error ??= error;
      this.#wakeReader();
    });
    socket.once("close", () => {
      this.#error ??= new Deno.errors.BadResource("the connection is closed");
      this.#wakeReader();
    });
  }

  /** Connects to `address`; aborting `signal` gives up. */
  static connect(address: Address, signal?: AbortSignal): Promise<ResettingConn> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({
        host: address.hostname,
        port: address.port,
        allowHalfOpen: true, // end() is a half-close
        noDelay: true,
      });
      const fail = (error: Error) => {
        signal?.removeEventListener("abort", onAbort);
        socket.destroy();
        reject(error);
      };
      const onAbort = () => fail(new Error("aborted while connecting"));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      socket.once("error", fail);
      socket.once("connect", () => {
        signal?.removeEventListener("abort", onAbort);
        socket.off("error", fail);
        resolve(new ResettingConn(socket));
      });
    });
  }

  #wakeReader() {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** The local port of this connection. */
  get localPort(): number {
    return this.#socket.localPort ?? 0;
  }

  /** The next chunk the peer sent, or null at its end of stream. */
  async read(): Promise<Uint8Array | null> {
    for (;;) {
      const chunk = this.#chunks.shift();
      if (chunk) return chunk;
      if (this.#ended) return null;
      if (this.#error) throw this.#error;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
  }

  /** Writes all of `data`; rejects if the connection closes first. */
  write(data: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      const closed = () => reject(new Deno.errors.BadResource("the connection is closed"));
      if (this.#socket.destroyed) return closed();
      this.#closed.then(closed);
      this.#socket.write(data, (error?: Error | null) => error ? reject(error) : resolve());
    });
  }

  /** Half-closes: the peer reads end of stream, and can still reply. */
  closeWrite(): Promise<void> {
    return new Promise((resolve) => {
      if (this.#socket.destroyed) return resolve();
      this.#closed.then(() => resolve());
      this.#socket.end(() => resolve());
    });
  }

  /**
   * Half-closes after `delayMs` (or once `signal` aborts the wait), unless
   * the peer has closed its side by then: a close of ours after the peer's
   * would leave the peer's port in TIME_WAIT. Before deciding, one more turn
   * of the event loop lets in what arrived during the wait: a process stalled
   * past the delay (a loaded machine) runs its due timers before its pending
   * I/O, and would otherwise miss a close that has already arrived.
   */
  async closeWriteAfter(delayMs: number, signal?: AbortSignal): Promise<void> {
    if (delayMs > 0) await sleep(delayMs, signal);
    await sleep(0);
    if (!this.#ended) await this.closeWrite();
  }

  /**
   * Closes: with a reset if the peer has closed its side (or `reset` is
   * set), else normally. Waits for the close.
   */
  async close({ reset = false } = {}): Promise<void> {
    if (this.#ended || reset) this.#socket.resetAndDestroy();
    else this.#socket.destroy();
    await this.#closed;
  }
}

/** Whether a node:net error has one of these codes (ECONNRESET, ...). */
function isCode(error: unknown, ...codes: string[]): boolean {
  return codes.includes((error as { code?: string })?.code ?? "");
}

/** How a TCP request ended. */
export type TcpEnd =
  | "eof"
  | "settled"
  | "timeout"
  | "aborted"
  | "reset"
  | "refused"
  | "error";

/** What a TCP request got back. */
export interface TcpOutcome {
  /** Every byte of the reply that arrived. */
  data: Uint8Array;
  /**
   * How the reply ended: "eof" is the normal end (the server closed its
   * side); "settled" means the reply was complete (or already wrong) and the
   * server had not closed the connection `settleMs` later (or the reply
   * stopped halfway, and nothing came for a second).
   */
  end: TcpEnd;
  /** A sentence about anything that went wrong, reading or writing; none for "settled". */
  problem?: string;
  /** Milliseconds from connect to the end. */
  ms: number;
}

/** Options for {@linkcode tcpRequest}. */
export interface TcpRequestOptions {
  /** The server. */
  address: Address;
  /** The request; each chunk is one write. */
  chunks: Uint8Array[];
  /** Deadline for the whole exchange. */
  ms: number;
  /** Milliseconds between two chunks, so that they arrive in separate reads; default 0. */
  gapMs?: number;
  /** Aborting ends the request at once (end "aborted"), e.g. when the server exits. */
  signal?: AbortSignal;
  /**
   * Milliseconds to wait after the request before half-closing, unless the
   * server closes first; default 0. With a fixed port this keeps TIME_WAIT
   * off the server's port: a server that replies without waiting for end of
   * stream (the textbook's) closes first and is reset; one that waits gets
   * our end of stream first, and closes second.
   */
  halfCloseDelayMs?: number;
  /**
   * The expected reply. Once the reply is complete, or already wrong, the
   * request waits only `settleMs` more for the rest (extra bytes, the
   * server's close), then ends as "settled" and resets the connection, which
   * also ends a server thread that would spin on it. A reply that stops
   * halfway settles after a second of silence.
   */
  expect?: Uint8Array;
  /** See `expect`; default 150. */
  settleMs?: number;
}

/**
 * Connects, writes the request, half-closes, and reads the reply until the
 * server closes its side, the reply has settled (see `expect`), the deadline
 * passes or `signal` aborts. Never throws for network errors: the outcome
 * says what happened.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * import { startReferenceServer } from "./reference.ts";
 *
 * await using server = startReferenceServer("tcp", 0);
 * const outcome = await tcpRequest({
 *   address: { hostname: "127.0.0.1", port: server.port },
 *   chunks: [new TextEncoder().encode("hel"), new TextEncoder().encode("lo")],
 *   ms: 2000,
 * });
 * assert.equal(outcome.end, "eof");
 * assert.equal(new TextDecoder().decode(outcome.data), "HELLO");
 * ```
 */
export async function tcpRequest(options: TcpRequestOptions): Promise<TcpOutcome> {
  const { address, chunks, ms, gapMs = 0, signal, halfCloseDelayMs = 0 } = options;
  const { expect, settleMs = 150 } = options;
  const started = performance.now();
  const stop = new AbortController();
  let why: TcpEnd | undefined;
  const abortAs = (end: TcpEnd) => () => {
    why ??= end;
    stop.abort();
  };
  const timer = setTimeout(abortAs("timeout"), ms);
  let settleTimer: ReturnType<typeof setTimeout> | undefined;
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  let settling = false;
  const watcher = expect ? new ReplyWatcher(expect) : undefined;
  // A server that exits right after replying has its reply on the way (through
  // a proxy that can take a while): the kernel delivers it, then the end of
  // stream. The signal only ends a request that a leftover process keeps open.
  let exitTimer: ReturnType<typeof setTimeout> | undefined;
  const onSignal = () => exitTimer ??= setTimeout(abortAs("aborted"), EXIT_GRACE_MS.tcp);
  if (signal?.aborted) onSignal();
  signal?.addEventListener("abort", onSignal, { once: true });
  const parts: Uint8Array[] = [];
  let received = 0;
  let end: TcpEnd = "eof";
  let problem: string | undefined;
  let conn: ResettingConn | undefined;
  const closing: Promise<void>[] = [];
  const close = () => {
    if (conn) closing.push(conn.close({ reset: why === "settled" }));
    conn = undefined;
  };
  stop.signal.addEventListener("abort", close, { once: true });
  try {
    conn = await ResettingConn.connect(address, stop.signal);
    const c = conn;
    const serverClosed = new AbortController();
    const reading = (async () => {
      try {
        for (let chunk = await c.read(); chunk !== null; chunk = await c.read()) {
          parts.push(chunk);
          received += chunk.length;
          if (received > MAX_REPLY) throw new Error(`the reply is over ${MAX_REPLY} bytes`);
          watcher?.push(chunk);
          if (watcher === undefined || settling) continue;
          clearTimeout(idleTimer);
          if (watcher.state !== "prefix") {
            settling = true;
            settleTimer = setTimeout(abortAs("settled"), settleMs);
          } else {
            // Part of the reply, then silence: a server that answered only
            // the first line, say, and keeps the connection open.
            idleTimer = setTimeout(abortAs("settled"), Math.max(settleMs, IDLE_SETTLE_MS));
          }
        }
      } finally {
        serverClosed.abort();
      }
    })();
    const writing = (async () => {
      for (const [i, chunk] of chunks.entries()) {
        if (i > 0 && gapMs > 0) await sleep(gapMs, serverClosed.signal);
        await c.write(chunk);
      }
      if (!serverClosed.signal.aborted) {
        await c.closeWriteAfter(halfCloseDelayMs, serverClosed.signal);
      }
    })();
    const [read, write] = await Promise.allSettled([reading, writing]);
    if (read.status === "rejected") {
      end = why ?? (isCode(read.reason, "ECONNRESET") ? "reset" : "error");
      problem = end === "settled" ? undefined : describeTcpEnd(end, read.reason, ms);
    } else if (write.status === "rejected" && !why) {
      problem = `writing the request failed (${errorText(write.reason)}): ` +
        "the server closed the connection before reading all of it";
    }
  } catch (error) {
    end = why ?? (isCode(error, "ECONNREFUSED") ? "refused" : "error");
    problem = describeTcpEnd(end, error, ms);
  } finally {
    clearTimeout(timer);
    clearTimeout(settleTimer);
    clearTimeout(idleTimer);
    clearTimeout(exitTimer);
    signal?.removeEventListener("abort", onSignal);
    close();
    await Promise.all(closing);
  }
  return { data: concat(parts), end, problem, ms: Math.round(performance.now() - started) };
}

/** With `expect`: silence after part of the reply that ends the wait for the rest. */
const IDLE_SETTLE_MS = 1000;

/** How long a request goes on after the server exited, for a reply already sent. */
const EXIT_GRACE_MS = { tcp: 2000, udp: 300 };

/** More reply than any check needs: stop reading. */
const MAX_REPLY = 16 * 1024 * 1024;

function describeTcpEnd(end: TcpEnd, error: unknown, ms: number): string {
  switch (end) {
    case "timeout":
      return `no end of reply within ${ms} ms (the server did not close the connection)`;
    case "aborted":
      return "the server exited during the exchange";
    case "reset":
      return "the server reset the connection (it closed it with unread data, or crashed)";
    case "refused":
      return "connection refused: nothing listens on that port (any more)";
    default:
      return errorText(error);
  }
}

/** What a UDP request got back. */
export interface UdpOutcome {
  /** The reply, or undefined if none came. */
  reply?: Uint8Array;
  /** Where the reply came from. */
  from?: Deno.NetAddr;
  /** "reply", or why none came. */
  end: "reply" | "timeout" | "aborted";
  /** Milliseconds from sending to the end. */
  ms: number;
}

/** Options for {@linkcode udpRequest}. */
export interface UdpRequestOptions {
  /** The server; only its replies count. */
  address: Address;
  /** The request: one datagram. */
  data: Uint8Array;
  /** How long to wait for the reply. */
  ms: number;
  /** Aborting ends the wait at once, e.g. when the server exits. */
  signal?: AbortSignal;
}

/**
 * Sends one datagram from a fresh socket and waits for the reply from the
 * server's address (other senders are ignored).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * import { startReferenceServer } from "./reference.ts";
 *
 * await using server = startReferenceServer("udp", 0);
 * const outcome = await udpRequest({
 *   address: { hostname: "127.0.0.1", port: server.port },
 *   data: new TextEncoder().encode("hello"),
 *   ms: 2000,
 * });
 * assert.equal(outcome.end, "reply");
 * assert.equal(new TextDecoder().decode(outcome.reply), "HELLO");
 * assert.equal(outcome.from?.port, server.port);
 * ```
 */
export async function udpRequest(options: UdpRequestOptions): Promise<UdpOutcome> {
  const { address, data, ms, signal } = options;
  const started = performance.now();
  const v6 = address.hostname.includes(":");
  const socket = Deno.listenDatagram({
    transport: "udp",
    hostname: v6 ? "::1" : "127.0.0.1",
    port: 0,
  });
  let end: UdpOutcome["end"] = "timeout";
  const closeSocket = (why: UdpOutcome["end"]) => () => {
    end = why;
    try {
      socket.close();
    } catch {
      // Already closed.
    }
  };
  const timer = setTimeout(closeSocket("timeout"), ms);
  // A reply sent just before the server exited may still be on its way.
  let exitTimer: ReturnType<typeof setTimeout> | undefined;
  const onSignal = () => exitTimer ??= setTimeout(closeSocket("aborted"), EXIT_GRACE_MS.udp);
  signal?.addEventListener("abort", onSignal, { once: true });
  let reply: Uint8Array | undefined;
  let replyFrom: Deno.NetAddr | undefined;
  try {
    if (signal?.aborted) {
      end = "aborted";
      throw new Error("the server has exited");
    }
    await socket.send(data, { transport: "udp", ...address });
    // A bounded loop: at most 100 stray datagrams are skipped.
    for (let i = 0; i < 100 && reply === undefined; i++) {
      const [received, from] = await socket.receive(new Uint8Array(65536));
      if ((from as Deno.NetAddr).port !== address.port) continue;
      reply = received;
      replyFrom = from as Deno.NetAddr;
    }
  } catch {
    // Closed by the deadline or the signal.
  } finally {
    clearTimeout(timer);
    clearTimeout(exitTimer);
    signal?.removeEventListener("abort", onSignal);
    closeSocket(reply ? "reply" : end)();
  }
  const took = Math.round(performance.now() - started);
  return { reply, from: replyFrom, end: reply ? "reply" : end, ms: took };
}

/**
 * Resolves to the loopback address where a TCP server accepts connections
 * (127.0.0.1 first, then ::1), or undefined if neither does.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * assert.equal(await probeTcp(listener.addr.port), "127.0.0.1");
 * listener.close();
 * ```
 */
export async function probeTcp(port: number, ms = 1000): Promise<string | undefined> {
  for (const hostname of LOOPBACK_HOSTS) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), ms);
    try {
      const conn = await Deno.connect({ hostname, port, signal: controller.signal });
      conn.close();
      return hostname;
    } catch {
      // Refused, no IPv6, or too slow: try the next address.
    } finally {
      clearTimeout(timer);
    }
  }
  return undefined;
}

/**
 * Sends a small datagram to `port` on both loopback addresses and resolves
 * to the address that answered first within `ms`, or undefined.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * import { startReferenceServer } from "./reference.ts";
 *
 * await using server = startReferenceServer("udp", 0);
 * assert.equal(await probeUdp(server.port, 1000), "127.0.0.1");
 * ```
 */
export async function probeUdp(port: number, ms: number): Promise<string | undefined> {
  const probe = new TextEncoder().encode("probe");
  const answered = new AbortController();
  let winner: string | undefined;
  // Both addresses at once; the first to answer wins and ends the other wait.
  await Promise.all(LOOPBACK_HOSTS.map(async (hostname) => {
    try {
      const address = { hostname, port };
      const outcome = await udpRequest({ address, data: probe, ms, signal: answered.signal });
      if (outcome.reply !== undefined && winner === undefined) {
        winner = hostname;
        answered.abort();
      }
    } catch {
      // No IPv6 on this machine.
    }
  }));
  return winner;
}

/**
 * Writes every byte of `data`: one `write()` may take only part of a buffer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const received = (async () => {
 *   using conn = await listener.accept();
 *   return await readToEnd(conn);
 * })();
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * await writeAll(conn, new Uint8Array(1024 * 1024)); // more than one write() may take
 * conn.close();
 * assert.equal((await received).length, 1024 * 1024);
 * listener.close();
 * ```
 */
export async function writeAll(
  conn: { write(data: Uint8Array): Promise<number> },
  data: Uint8Array,
): Promise<void> {
  let written = 0;
  while (written < data.length) written += await conn.write(data.subarray(written));
}

/**
 * Reads until end of stream and joins what came. A `read()` loop, not
 * `conn.readable`: consuming the readable to its end would close the whole
 * connection, and the caller may still write after the peer's end of stream.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const served = (async () => {
 *   using conn = await listener.accept();
 *   await writeAll(conn, new TextEncoder().encode("one, "));
 *   await writeAll(conn, new TextEncoder().encode("two"));
 * })();
 * using conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * assert.equal(new TextDecoder().decode(await readToEnd(conn)), "one, two");
 * await served;
 * listener.close();
 * ```
 */
export async function readToEnd(
  conn: { read(buffer: Uint8Array): Promise<number | null> },
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
    parts.push(buffer.slice(0, n));
  }
  return concat(parts);
}

/**
 * Joins byte arrays.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(concat([new Uint8Array([1]), new Uint8Array([2, 3])]), new Uint8Array([1, 2, 3]));
 * ```
 */
export function concat(parts: Uint8Array[]): Uint8Array {
  const all = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    all.set(part, offset);
    offset += part.length;
  }
  return all;
}

/**
 * An error's message (its first line), or the value as text.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(errorText(new Error("Connection refused (os error 111)\nmore")), "Connection refused (os error 111)");
 * assert.equal(errorText("plain"), "plain");
 * ```
 */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message.split("\n")[0] : String(error);
}
