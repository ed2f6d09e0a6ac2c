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

import { bindUdpLoopback, listenTcpLoopback, writeAll } from "./net.ts";
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

function startTcp(port: number, service: Service): ReferenceServer {
  const listeners = listenTcpLoopback(port);
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  let accepted = 0;
  let closing = false;

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
    } finally {
      conns.delete(conn);
      closeQuietly(conn);
    }
  }

  async function acceptLoop(listener: Deno.Listener) {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        if (closing) return;
        continue; // a client that reset before accept(): its own failure only
      }
      accepted++;
      conns.add(conn);
      const task = serve(conn);
      tasks.add(task);
      task.finally(() => tasks.delete(task));
    }
  }

  const loops = listeners.map(acceptLoop);
  const close = async () => {
    closing = true;
    for (const listener of listeners) closeQuietly(listener);
    for (const conn of conns) closeQuietly(conn);
    await Promise.all(loops);
    await Promise.all(tasks);
  };
  return {
    port: (listeners[0].addr as Deno.NetAddr).port,
    traffic: () => accepted,
    close,
    [Symbol.asyncDispose]: close,
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
