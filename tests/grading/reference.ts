/**
 * The kit's own reference servers, which the client checks run a student's
 * client against: the textbook's uppercase server over TCP and over UDP,
 * done right (every byte read, UTF-8 decoded across reads, every byte
 * written) and nothing more. The kit carries its own, so that it stands on
 * its own: it does not depend on this project's programs, which may change
 * for reasons of their own (logging, limits, signals).
 *
 * Both listen on 127.0.0.1 and ::1 (and, on a fixed port, on the other
 * loopback addresses that clients hard-code), count what reached them, and
 * close every socket when closed.
 *
 * @module
 */

import { bindUdpLoopback, listenTcpLoopback, sleep, writeAll } from "./net.ts";
import type { Service } from "./compare.ts";

/** A reference server, running until closed. */
export interface ReferenceServer extends AsyncDisposable {
  /** The port it listens on (the one asked for, or the one the system picked for 0). */
  port: number;
  /** How many connections (TCP) or datagrams (UDP) reached it: 0 means no client did. */
  traffic(): number;
  /** Closes the listeners and every connection, and waits until all is closed. */
  close(): Promise<void>;
}

/**
 * Starts the reference uppercase server for `transport` on `port` (0: any
 * free port) on the loopback addresses.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { tcpRequest } from "./net.ts";
 *
 * await using server = startReferenceServer("tcp", 0);
 * const outcome = await tcpRequest({
 *   address: { hostname: "127.0.0.1", port: server.port },
 *   chunks: [new TextEncoder().encode("straße")],
 *   ms: 2000,
 * });
 * assert.equal(new TextDecoder().decode(outcome.data), "STRASSE");
 * assert.equal(server.traffic(), 1);
 * ```
 */
export function startReferenceServer(
  transport: "tcp" | "udp",
  port: number,
  service: Service = "upper",
): ReferenceServer {
  return transport === "tcp" ? startTcp(port, service) : startUdp(port, service);
}

/** The letter s, in either case: `count-s` counts these. */
function countS(text: string): number {
  return text.match(/[sS]/g)?.length ?? 0;
}

/** Decodes UTF-8 as Python's decode() does: keeps a leading BOM, invalid bytes become U+FFFD. */
function utf8Decoder(): TextDecoder {
  return new TextDecoder("utf-8", { ignoreBOM: true });
}

const encoder = new TextEncoder();

/**
 * Accepts clients on every listener and runs `serve` for each, concurrently,
 * closing each connection when `serve` is done; `close` stops accepting,
 * closes every connection and waits for everything to end.
 */
function serveEach(
  listeners: Deno.TcpListener[],
  serve: (conn: Deno.TcpConn) => Promise<void>,
): { port: number; accepted: () => number; close: () => Promise<void> } {
  const conns = new Set<Deno.TcpConn>();
  const tasks = new Set<Promise<void>>();
  let accepted = 0;
  let closing = false;

  async function acceptLoop(listener: Deno.TcpListener) {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch {
        if (closing) return;
        continue; // a client that reset before accept(): its own failure only
      }
      accepted++;
      conns.add(conn);
      const task = serve(conn).finally(() => {
        conns.delete(conn);
        closeQuietly(conn);
        tasks.delete(task);
      });
      tasks.add(task);
    }
  }

  const loops = listeners.map(acceptLoop);
  return {
    port: (listeners[0].addr as Deno.NetAddr).port,
    accepted: () => accepted,
    close: async () => {
      closing = true;
      for (const listener of listeners) closeQuietly(listener);
      for (const conn of conns) closeQuietly(conn);
      await Promise.all(loops);
      await Promise.all(tasks);
    },
  };
}

function startTcp(port: number, service: Service): ReferenceServer {
  /**
   * sentence = recv(); send(sentence.upper()); until the client half-closes;
   * close(). For count-s: count as the pieces arrive, send the count at the end.
   */
  async function serve(conn: Deno.Conn) {
    const decoder = utf8Decoder();
    const buffer = new Uint8Array(64 * 1024);
    let count = 0;
    try {
      for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
        const text = decoder.decode(buffer.subarray(0, n), { stream: true });
        if (service === "count-s") count += countS(text);
        else await writeAll(conn, encoder.encode(text.toUpperCase()));
      }
      const rest = decoder.decode();
      const last = service === "count-s" ? String(count + countS(rest)) : rest.toUpperCase();
      await writeAll(conn, encoder.encode(last));
    } catch {
      // A reset, a client gone, or our own close: this connection only.
    }
  }

  const server = serveEach(listenTcpLoopback(port), serve);
  return {
    port: server.port,
    traffic: server.accepted,
    close: server.close,
    [Symbol.asyncDispose]: server.close,
  };
}

function startUdp(port: number, service: Service): ReferenceServer {
  const sockets = bindUdpLoopback(port);
  let received = 0;

  /** message, clientAddress = recvfrom(); sendto(message.upper(), clientAddress). */
  async function serve(socket: Deno.DatagramConn) {
    for (;;) {
      let message: Uint8Array;
      let clientAddress: Deno.Addr;
      try {
        [message, clientAddress] = await socket.receive(new Uint8Array(65536));
      } catch {
        return; // closed
      }
      received++;
      const text = utf8Decoder().decode(message);
      const reply = encoder.encode(
        service === "count-s" ? String(countS(text)) : text.toUpperCase(),
      );
      try {
        await socket.send(reply, clientAddress);
      } catch {
        // Too long for one datagram, or the client is gone: its own failure.
      }
    }
  }

  const loops = sockets.map(serve);
  const close = async () => {
    for (const socket of sockets) closeQuietly(socket);
    await Promise.all(loops);
  };
  return {
    port: (sockets[0].addr as Deno.NetAddr).port,
    traffic: () => received,
    close,
    [Symbol.asyncDispose]: close,
  };
}

function closeQuietly(resource: { close(): void }) {
  try {
    resource.close();
  } catch {
    // Already closed.
  }
}

/** A reference session server, as returned by {@linkcode startReferenceSessionServer}. */
export interface ReferenceSessionServer extends AsyncDisposable {
  /** The port it listens on. */
  port: number;
  /** How many connections reached it. */
  connections(): number;
  /** Every message it received, over all connections, in order. */
  messages(): string[];
  /** Closes the listeners and every connection, and waits until all is closed. */
  close(): Promise<void>;
}

/** Options for {@linkcode startReferenceSessionServer}. */
export interface ReferenceSessionOptions {
  /** Write each reply in pieces of 8 bytes, 5 ms apart (a client must read until the newline). Default false. */
  splitReplies?: boolean;
}

/** The size of a reply's pieces with `splitReplies`. */
const SPLIT_PIECE = 8;

/** The longest message line the reference session server keeps. */
const MAX_SESSION_LINE = 64 * 1024;

/**
 * Starts the reference session server (seed 001's TCP task) on `port` (0:
 * any free port) on the loopback addresses: each line is a message,
 * answered "Your data was N bytes" (UTF-8 bytes, without the newline);
 * "Exit" is answered "Disconnect" and the connection is closed.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readToEnd } from "./net.ts";
 *
 * await using server = startReferenceSessionServer(0);
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
 * await conn.write(new TextEncoder().encode("né\nExit\n"));
 * const replies = new TextDecoder().decode(await readToEnd(conn));
 * conn.close();
 * assert.equal(replies, "Your data was 3 bytes\nDisconnect\n");
 * assert.deepEqual(server.messages(), ["né", "Exit"]);
 * ```
 */
export function startReferenceSessionServer(
  port: number,
  options: ReferenceSessionOptions = {},
): ReferenceSessionServer {
  const received: string[] = [];

  async function reply(conn: Deno.TcpConn, text: string) {
    const bytes = encoder.encode(`${text}\n`);
    if (!options.splitReplies) return await writeAll(conn, bytes);
    conn.setNoDelay(true); // each piece its own segment
    for (let at = 0; at < bytes.length; at += SPLIT_PIECE) {
      if (at > 0) await sleep(5); // so that the client's reads see the pieces
      await writeAll(conn, bytes.subarray(at, at + SPLIT_PIECE));
    }
  }

  /** Lines in, a reply line out, until Exit or the end of the stream. */
  async function serve(conn: Deno.TcpConn) {
    let pending = new Uint8Array(0);
    const buffer = new Uint8Array(16 * 1024);
    try {
      for (;;) {
        const newline = pending.indexOf(10);
        if (newline < 0) {
          if (pending.length > MAX_SESSION_LINE) return;
          const n = await conn.read(buffer);
          if (n === null) return;
          const joined = new Uint8Array(pending.length + n);
          joined.set(pending);
          joined.set(buffer.subarray(0, n), pending.length);
          pending = joined;
          continue;
        }
        let line = pending.subarray(0, newline);
        pending = pending.slice(newline + 1);
        if (line.at(-1) === 13) line = line.subarray(0, -1);
        const message = utf8Decoder().decode(line);
        received.push(message);
        if (message === "Exit") return await reply(conn, "Disconnect");
        await reply(conn, `Your data was ${line.length} bytes`);
      }
    } catch {
      // A reset, a client gone, or our own close: this connection only.
    }
  }

  const server = serveEach(listenTcpLoopback(port), serve);
  return {
    port: server.port,
    connections: server.accepted,
    messages: () => [...received],
    close: server.close,
    [Symbol.asyncDispose]: server.close,
  };
}
