/**
 * Loopback middlemen for the grading checks: a TCP proxy that delivers the
 * stream one byte at a time, a seeded lossy UDP proxy, and stub servers that
 * never reply. Each is bounded in connections, datagrams and bytes, and
 * `close()` ends everything it started.
 *
 * @module
 */
import {
  type Address,
  bindUdpLoopback,
  listenTcpLoopback,
  ResettingConn,
  sleep,
  writeAll,
} from "./net.ts";
import { waitUntilRead } from "./sockets.ts";

/** A running middleman; `close()` stops it and waits for every task to end. */
export interface Middleman {
  /** The port it listens on (on 127.0.0.1 and ::1). */
  port: number;
  /** What happened, for the check's output. */
  stats(): string;
  /**
   * How many requests a client under test made: connections (split proxy),
   * connections that sent bytes (silent TCP server), or datagrams received.
   */
  requests(): number;
  /** Stops it and closes every socket it opened. */
  close(): Promise<void>;
}

/** Options for {@linkcode startSplitProxy}. */
export interface SplitProxyOptions {
  /** Port to listen on; 0 for any free port. */
  port: number;
  /** Where to forward each connection. */
  target: Address;
  /** Milliseconds between single bytes; default 5. */
  gapMs?: number;
  /** Bytes per direction delivered one at a time; the rest is forwarded as it comes. Default 4096. */
  splitBytes?: number;
  /**
   * Whether the client's bytes are split too (default true). A check of a
   * client splits only the replies: what it judges is how the client reads
   * them, and a request split on its way to the kit's own server only makes
   * the client wait longer for the first byte of its reply.
   */
  splitRequests?: boolean;
}

/** Connections a proxy or stub serves before it refuses more. */
const MAX_CONNECTIONS = 16;

/** Closes anything closable, ignoring "already closed". */
function closeQuietly(resource: { close(): void }) {
  try {
    resource.close();
  } catch {
    // Already closed.
  }
}

/**
 * Starts a TCP proxy that forwards both directions (or only the replies,
 * with `splitRequests: false`) one byte per write, with a small gap, so
 * that every `recv()` on the other side returns a single byte: a program
 * that treats one `recv()` as the whole message, or decodes each read on its
 * own (breaking multibyte characters), fails. End of stream (a half-close)
 * is passed on.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * import { tcpRequest } from "./net.ts";
 * import { startReferenceServer } from "./reference.ts";
 *
 * await using server = startReferenceServer("tcp", 0);
 * const proxy = await startSplitProxy({ port: 0, target: { hostname: "127.0.0.1", port: server.port } });
 * const outcome = await tcpRequest({
 *   address: { hostname: "127.0.0.1", port: proxy.port },
 *   chunks: [new TextEncoder().encode("abc")],
 *   ms: 3000,
 * });
 * assert.equal(new TextDecoder().decode(outcome.data), "ABC"); // delivered one byte at a time
 * await proxy.close();
 * ```
 */
export function startSplitProxy(options: SplitProxyOptions): Promise<Middleman> {
  const { port, target, gapMs = 5, splitBytes = 4096, splitRequests = true } = options;
  const listeners = listenTcpLoopback(port);
  const stopping = new AbortController();
  const shutdowns = new Set<() => Promise<void>>();
  const tasks: Promise<void>[] = [];
  let connections = 0;
  let forwarded = 0;

  /**
   * Copies one direction, the first `limit` bytes one byte per write; then
   * passes the end on. Before the second byte it awaits `firstRead`, if
   * given; `onData` hears of every chunk read.
   */
  const pipe = async (
    from: StreamEnd,
    to: StreamEnd,
    { limit, firstRead, onData }: {
      limit: number;
      firstRead?: () => Promise<void>;
      onData?: () => void;
    },
  ) => {
    let split = 0;
    for (let chunk = await from.read(); chunk !== null; chunk = await from.read()) {
      onData?.();
      for (let i = 0; i < chunk.length;) {
        if (split >= limit) {
          await to.write(chunk.subarray(i));
          forwarded += chunk.length - i;
          break;
        }
        if (split === 1) await firstRead?.();
        if (split > 0) await sleep(gapMs, stopping.signal);
        if (stopping.signal.aborted) throw new Error("the proxy is closing");
        await to.write(chunk.subarray(i, i + 1));
        split++;
        forwarded++;
        i++;
      }
    }
    await to.closeWrite();
  };

  const serve = async (client: Deno.TcpConn) => {
    client.setNoDelay(true);
    const looks: Promise<void>[] = [];
    let server: ResettingConn | undefined;
    let closed: Promise<void> | undefined;
    const shutdown = () => {
      closed ??= (async () => {
        closeQuietly(client);
        // Like a direct request that settled: a reset, so that a server that
        // never closes its side does not spin on end of stream.
        await server?.close({ reset: true });
      })();
      return closed;
    };
    shutdowns.add(shutdown);
    try {
      // The server side resets once the server has closed: no TIME_WAIT on its port.
      server = await ResettingConn.connect(target, stopping.signal);
      const clientEnd = denoEnd(client);
      // When one direction fails (a side went away), end the other one too.
      // The server's first read gets the first byte alone, however late it
      // is scheduled: the second waits until the server has read the first
      // (the kernel's tables say so), or has answered, which shows it too. A
      // look at the tables costs a process, up to seconds on a loaded
      // machine; a server that answers at once is not kept waiting for it.
      const answered = Promise.withResolvers<void>();
      const firstRead = () => {
        const look = waitUntilRead({ readerPort: target.port, writerPort: server!.localPort });
        looks.push(look);
        return Promise.race([look, answered.promise]);
      };
      await Promise.all([
        pipe(clientEnd, server, { limit: splitRequests ? splitBytes : 0, firstRead })
          .catch(shutdown),
        pipe(server, clientEnd, { limit: splitBytes, onData: () => answered.resolve() })
          .catch(shutdown),
      ]);
    } catch {
      // The target refused: the client sees its connection closed.
    } finally {
      await shutdown();
      await Promise.all(looks);
      shutdowns.delete(shutdown);
    }
  };

  const acceptLoop = async (listener: Deno.TcpListener) => {
    try {
      for (;;) {
        const client = await listener.accept();
        if (++connections > MAX_CONNECTIONS) {
          closeQuietly(client);
          continue;
        }
        tasks.push(serve(client));
      }
    } catch {
      // The listener was closed.
    }
  };

  const loops = listeners.map(acceptLoop);
  return Promise.resolve({
    port: (listeners[0].addr as Deno.NetAddr).port,
    stats: () =>
      `the proxy delivered ${forwarded} bytes one at a time over ${connections} connection(s)`,
    requests: () => connections,
    close: async () => {
      stopping.abort();
      for (const listener of listeners) closeQuietly(listener);
      await Promise.all(loops);
      await Promise.all([...shutdowns].map((shutdown) => shutdown()));
      await Promise.all(tasks);
    },
  });
}

/** One side of a proxied connection. */
interface StreamEnd {
  /** The next chunk, or null at end of stream. */
  read(): Promise<Uint8Array | null>;
  write(data: Uint8Array): Promise<void>;
  closeWrite(): Promise<void>;
}

/** A Deno connection as a {@linkcode StreamEnd}. */
function denoEnd(conn: Deno.TcpConn): StreamEnd {
  const buffer = new Uint8Array(16 * 1024);
  return {
    read: async () => {
      const n = await conn.read(buffer);
      return n === null ? null : buffer.slice(0, n);
    },
    write: (data) => writeAll(conn, data),
    closeWrite: () => conn.closeWrite(),
  };
}

/**
 * A small seeded pseudo-random generator (mulberry32): the same seed gives
 * the same losses on every run.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const random = seededRandom(42);
 * const first = random();
 * assert.ok(first >= 0 && first < 1);
 * assert.equal(seededRandom(42)(), first); // the same on every run
 * ```
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Options for {@linkcode startLossyUdpProxy}. */
export interface LossyUdpProxyOptions {
  /** Port to listen on; 0 for any free port. */
  port: number;
  /** The real server. */
  target: Address;
  /** Seed of the loss pattern. */
  seed: number;
  /** Probability that a datagram is dropped, after the first. */
  lossRate: number;
}

/** Datagrams a lossy proxy handles before it drops everything. */
const MAX_DATAGRAMS = 200;

/**
 * Starts a UDP proxy that loses datagrams: always the client's first one
 * (so a client without a timeout waits forever), then each datagram in
 * either direction with probability `lossRate`, from a seeded generator.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * import { udpRequest } from "./net.ts";
 * import { startReferenceServer } from "./reference.ts";
 *
 * await using server = startReferenceServer("udp", 0);
 * const proxy = await startLossyUdpProxy({
 *   port: 0,
 *   target: { hostname: "127.0.0.1", port: server.port },
 *   seed: 7,
 *   lossRate: 0,
 * });
 * const address = { hostname: "127.0.0.1", port: proxy.port };
 * const data = new TextEncoder().encode("hi");
 * // The first datagram is always lost: a client must send again.
 * assert.equal((await udpRequest({ address, data, ms: 100 })).end, "timeout");
 * const retry = await udpRequest({ address, data, ms: 2000 });
 * assert.equal(new TextDecoder().decode(retry.reply), "HI");
 * assert.equal(proxy.requests(), 2);
 * await proxy.close();
 * ```
 */
export function startLossyUdpProxy(options: LossyUdpProxyOptions): Promise<Middleman> {
  const { port, target, seed, lossRate } = options;
  const front = bindUdpLoopback(port);
  const back = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const random = seededRandom(seed);
  let client: { socket: Deno.DatagramConn; addr: Deno.Addr } | undefined;
  const count = { fromClient: 0, toServer: 0, fromServer: 0, toClient: 0 };
  const budget = () => count.fromClient + count.fromServer < MAX_DATAGRAMS;

  const fromClients = front.map(async (socket) => {
    try {
      while (budget()) {
        const [data, addr] = await socket.receive(new Uint8Array(65536));
        count.fromClient++;
        client = { socket, addr };
        if (count.fromClient === 1 || random() < lossRate) continue; // lost
        await back.send(data, { transport: "udp", ...target });
        count.toServer++;
      }
    } catch {
      // Closed.
    }
  });
  const fromServer = (async () => {
    try {
      while (budget()) {
        const [data] = await back.receive(new Uint8Array(65536));
        count.fromServer++;
        if (client === undefined || random() < lossRate) continue; // lost
        await client.socket.send(data, client.addr);
        count.toClient++;
      }
    } catch {
      // Closed.
    }
  })();

  return Promise.resolve({
    port: (front[0].addr as Deno.NetAddr).port,
    stats: () =>
      `the lossy proxy (seed ${seed}) passed ${count.toServer} of ${count.fromClient} ` +
      `request datagram(s) and ${count.toClient} of ${count.fromServer} reply datagram(s)`,
    requests: () => count.fromClient,
    close: async () => {
      for (const socket of [...front, back]) closeQuietly(socket);
      await Promise.all([...fromClients, fromServer]);
    },
  });
}

/**
 * Starts a TCP server that accepts connections and reads everything, but
 * never replies and never closes (until `close()`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * import { tcpRequest } from "./net.ts";
 *
 * const stub = await startSilentTcpServer(0);
 * const outcome = await tcpRequest({
 *   address: { hostname: "127.0.0.1", port: stub.port },
 *   chunks: [new TextEncoder().encode("anyone?")],
 *   ms: 300,
 * });
 * assert.equal(outcome.end, "timeout");
 * assert.equal(outcome.data.length, 0);
 * await stub.close();
 * ```
 */
export function startSilentTcpServer(port: number): Promise<Middleman> {
  const listeners = listenTcpLoopback(port);
  const conns = new Set<Deno.Conn>();
  const tasks: Promise<void>[] = [];
  let received = 0;
  let connections = 0;
  let requests = 0;
  const drain = async (conn: Deno.Conn) => {
    const buffer = new Uint8Array(16 * 1024);
    let first = true;
    try {
      for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
        received += n;
        if (first) requests++;
        first = false;
      }
    } catch {
      // Closed.
    }
  };
  const loops = listeners.map(async (listener) => {
    try {
      for (;;) {
        const conn = await listener.accept();
        if (++connections > MAX_CONNECTIONS) {
          closeQuietly(conn);
          continue;
        }
        conns.add(conn);
        tasks.push(drain(conn));
      }
    } catch {
      // The listener was closed.
    }
  });
  return Promise.resolve({
    port: (listeners[0].addr as Deno.NetAddr).port,
    stats: () =>
      `the silent server took ${connections} connection(s) and ${received} bytes, ` +
      "and replied nothing",
    requests: () => requests,
    close: async () => {
      for (const listener of listeners) closeQuietly(listener);
      await Promise.all(loops);
      for (const conn of conns) closeQuietly(conn);
      await Promise.all(tasks);
    },
  });
}

/**
 * Starts a UDP server that receives datagrams and never replies.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * import { udpRequest } from "./net.ts";
 *
 * const stub = await startSilentUdpServer(0);
 * const address = { hostname: "127.0.0.1", port: stub.port };
 * const outcome = await udpRequest({ address, data: new TextEncoder().encode("hi"), ms: 200 });
 * assert.equal(outcome.end, "timeout");
 * assert.equal(stub.requests(), 1);
 * await stub.close();
 * ```
 */
export function startSilentUdpServer(port: number): Promise<Middleman> {
  const sockets = bindUdpLoopback(port);
  let received = 0;
  const loops = sockets.map(async (socket) => {
    try {
      while (received < MAX_DATAGRAMS) {
        await socket.receive(new Uint8Array(65536));
        received++;
      }
    } catch {
      // Closed.
    }
  });
  return Promise.resolve({
    port: (sockets[0].addr as Deno.NetAddr).port,
    stats: () => `the silent server received ${received} datagram(s) and replied to none`,
    requests: () => received,
    close: async () => {
      for (const socket of sockets) closeQuietly(socket);
      await Promise.all(loops);
    },
  });
}
