/**
 * Ports for programs that are told their port in advance: a submission's
 * `{port}`, a fixed port in a test, a narrow --allow-net grant.
 *
 * @module
 */

/** A port held for one test until disposed; see {@linkcode reserveFixedPort}. */
export interface FixedPort extends Disposable {
  /** The reserved port, free on 127.0.0.1 and ::1 for TCP and UDP when reserved. */
  readonly port: number;
}

/** The last time slot this module handed out a port in: never the same one twice. */
let lastSlot = -1;

/**
 * Reserves a port for a program that is told its port in advance (a fixed
 * port, a narrow --allow-net grant, a submission's {port} in the grading kit).
 *
 * Three rules keep two programs from ever getting in each other's way, also
 * when test files run in parallel and grading subprocesses pick ports too:
 * - The port comes from below the system's ephemeral range. A port from
 *   "bind to port 0, close" can be handed out again at once as the source
 *   port of another test's outgoing connection.
 * - Ports are handed out in turn by the clock, one per 10 ms time slot, the
 *   same turn in every process, so a port comes round again only after two
 *   minutes. A server that closed first leaves its port in TIME_WAIT for a
 *   minute, and a program that binds without SO_REUSEADDR (the textbook's
 *   Python) then fails with "Address already in use". (When the server that
 *   closed first had no SO_REUSEADDR itself, Linux refuses every bind of the
 *   port, Deno's with SO_REUSEADDR too: measured on Linux 6.18.)
 * - While reserved, a lock listener is held on a partner port further down
 *   (127.0.0.1, port - span), so two reservations in one slot cannot both
 *   win, and a port freed for a moment between two steps of one test (the
 *   harness stops listening, then listens again) is not taken by another.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * {
 *   using reserved = await reserveFixedPort();
 *   assert.ok(reserved.port > 1024);
 *   // Start the program under test on reserved.port here.
 * }
 * ```
 */
export async function reserveFixedPort(): Promise<FixedPort> {
  let ephemeralStart = 32768;
  try {
    const range = Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range");
    ephemeralStart = Number(range.trim().split(/\s+/)[0]) || ephemeralStart;
  } catch {
    // Not Linux, or not readable: assume the common default.
  }
  // Ports [low, ephemeralStart) are handed out; [low - span, low) are their locks.
  const span = Math.min(12_000, Math.floor((ephemeralStart - 1024) / 2));
  const low = ephemeralStart - span;
  const slotMs = Math.max(10, Math.ceil(120_000 / span)); // one round in two minutes
  const giveUpAt = Date.now() + 30_000;
  for (;;) {
    const slot = Math.floor(Date.now() / slotMs);
    if (slot !== lastSlot) {
      const port = low + (slot % span);
      let lock: Deno.Listener | undefined;
      try {
        lock = Deno.listen({ hostname: "127.0.0.1", port: port - span });
      } catch {
        // Won by another reservation in this slot, or used by something else.
      }
      if (lock && isFreeOnLoopback(port)) {
        lastSlot = slot;
        return { port, [Symbol.dispose]: () => lock.close() };
      }
      lock?.close();
    }
    if (Date.now() > giveUpAt) {
      throw new Error(`No free port found between ${low} and ${ephemeralStart} in 30 s`);
    }
    // Wait for the next slot and its port.
    await new Promise((resolve) => setTimeout(resolve, (slot + 1) * slotMs - Date.now()));
  }
}

/** Whether `port` can be bound right now on both loopback addresses, for TCP and UDP. */
function isFreeOnLoopback(port: number): boolean {
  try {
    for (const hostname of ["127.0.0.1", "::1"]) {
      Deno.listen({ hostname, port }).close();
      Deno.listenDatagram({ transport: "udp", hostname, port }).close();
    }
    return true;
  } catch {
    return false;
  }
}
