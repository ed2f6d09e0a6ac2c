/**
 * The servers under hostile input and load: bad bytes, odd senders, a client
 * that never reads, 10,000 connections, a UDP flood, a seeded fuzz run,
 * shutdown under load, and the minimal permission grants.
 *
 * Lines starting with "[figures]" report what was measured (connections
 * held, datagrams answered, fuzz inputs, peak memory); the assertions are
 * about correctness and bounds, never about speed.
 *
 * Longer fuzz run: `FUZZ_SECONDS=60 deno task test --filter fuzz`.
 */
import assert from "node:assert/strict";
import { startTcpServer } from "../tcp_server.ts";
import { startUdpServer } from "../udp_server.ts";
import {
  assertBytes,
  escapeBytes,
  expectedReply,
  NET,
  Program,
  readToEnd,
  reserveFixedPort,
  servedCount,
  SUBPROCESS,
  tcpExchange,
  udpExchange,
  utf8,
  withDeadline,
  withServer,
  writeAll,
} from "./helpers.ts";
import { expectedText } from "./grading/compare.ts";

// --- helpers for this file -------------------------------------------------

/** A small seeded PRNG (mulberry32): the same seed gives the same run. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Peak and current resident memory of a process, in KB, from /proc. Deno
 * reads another process's /proc files only with --allow-all, so ask `cat`.
 */
async function memoryKb(pid: number): Promise<{ hwm: number; rss: number }> {
  const { stdout } = await new Deno.Command("cat", { args: [`/proc/${pid}/status`] }).output();
  const status = new TextDecoder().decode(stdout);
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1]);
  return { hwm: field("VmHWM"), rss: field("VmRSS") };
}

/**
 * The soft limit on open files, as a child process (which inherits it) sees
 * it: `sh -c 'ulimit -n'`. Deno reads /proc/self/limits only with
 * --allow-all; the error must not pass for "unlimited". 0 where unknown.
 */
async function openFileLimit(): Promise<number> {
  try {
    const { stdout } = await new Deno.Command("sh", { args: ["-c", "ulimit -n"] }).output();
    const soft = new TextDecoder().decode(stdout).trim();
    return soft === "unlimited" ? Infinity : Number(soft) || 0;
  } catch {
    return 0;
  }
}

function figures(line: string) {
  console.log(`[figures] ${line}`);
}

/** Inputs that crash the textbook servers, each with a name. */
const BAD_INPUTS: [string, Uint8Array][] = [
  ["invalid byte 0xff", new Uint8Array([0x61, 0xff, 0x62])],
  ["lone continuation byte", new Uint8Array([0x80, 0x61])],
  ["lone BOM", new Uint8Array([0xef, 0xbb, 0xbf])],
  ["BOM then text", new Uint8Array([0xef, 0xbb, 0xbf, 0x61, 0x62])],
  ["NUL bytes", new Uint8Array([0x61, 0x00, 0x62, 0x00])],
  ["overlong slash (c0 af)", new Uint8Array([0xc0, 0xaf, 0x61])],
  ["overlong 3-byte (e0 80 af)", new Uint8Array([0xe0, 0x80, 0xaf])],
  ["UTF-16 surrogate (ed a0 80)", new Uint8Array([0xed, 0xa0, 0x80, 0x61])],
  ["beyond U+10FFFF (f4 90 80 80)", new Uint8Array([0xf4, 0x90, 0x80, 0x80])],
  ["character cut at the end", new Uint8Array([0x61, 0xe2, 0x82])],
  // Byte by byte, the plain "b" arrives while half a character is pending.
  ["cut character, then ASCII", new Uint8Array([0x61, 0xe2, 0x82, 0x62, 0x63])],
  ["all 256 byte values", Uint8Array.from({ length: 256 }, (_, i) => i)],
];

// --- bad bytes ---------------------------------------------------------------

Deno.test({
  name: "robustness: bad bytes over TCP, whole and one byte per write: exact replies",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      for (const [name, input] of BAD_INPUTS) {
        const whole = await tcpExchange({ port, chunks: [input] });
        assertBytes(whole, expectedReply(input), `${name} (whole)`);
        const bytes = [...input].map((b) => new Uint8Array([b]));
        const split = await tcpExchange({ port, chunks: bytes, gapMs: 1 });
        assertBytes(split, expectedReply(input), `${name} (byte by byte)`);
      }
    }),
});

Deno.test({
  name: "robustness: bad bytes over UDP: exact replies, the server lives on",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      for (const [name, input] of BAD_INPUTS) {
        const reply = await udpExchange({ port, data: input });
        assert.ok(reply, `no reply to ${name}`);
        assertBytes(reply.data, expectedReply(input), name);
      }
    }),
});

// --- replies that grow, odd senders ------------------------------------------

Deno.test({
  name: "robustness: a TCP reply three times the request (ΐ -> Ϊ́) streams back whole",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const request = utf8("\u0390".repeat(200_000)); // 400 KB in, 1.2 MB out
      const reply = await tcpExchange({ port, chunks: [request] });
      assert.equal(reply.length, 3 * request.length);
      assertBytes(reply, expectedReply(request));
    }),
});

Deno.test({
  name: "robustness: a long line sent one byte per write comes back exact",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      // 3000 bytes, each multibyte character split across writes.
      const request = utf8("slow ß€😀 sender ".repeat(150)).subarray(0, 3000);
      const bytes = [...request].map((b) => new Uint8Array([b]));
      const reply = await tcpExchange({ port, chunks: bytes, ms: 20_000 });
      assertBytes(reply, expectedReply(request));
    }),
});

Deno.test({
  name: "robustness: clients that connect and leave, or reset mid-stream, cost only themselves",
  permissions: NET,
  fn: async () => {
    let log: string[] = [];
    await withServer(startTcpServer, {}, async (port, lines) => {
      log = lines;
      // 50 clients that connect and close at once.
      for (let i = 0; i < 50; i++) (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      // 50 clients that send, never read, and close: closing with unread
      // data in the receive buffer makes the kernel send a reset (RST).
      await Promise.all(Array.from({ length: 50 }, async () => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await writeAll(conn, utf8("reset me ".repeat(20_000)));
        conn.close();
      }));
      // Everyone else is still served, exactly.
      await Promise.all(Array.from({ length: 20 }, async (_, i) => {
        const request = utf8(`still served ${i} ä€😀`);
        assertBytes(await tcpExchange({ port, chunks: [request] }), expectedReply(request));
      }));
    });
    // After shutdown, which writes the count of the last second: one log line
    // each, 10 a second, then one line a second counts the rest.
    assert.equal(servedCount(log), 120, log.join("\n"));
  },
});

Deno.test({
  name: "robustness: --idle-timeout 0 never closes a silent connection",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, { idleTimeout: 0 }, async (port) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        // Long enough for a 0.2 s idle timeout to have fired several times.
        await new Promise((r) => setTimeout(r, 600));
        const request = utf8("awake");
        await writeAll(conn, request);
        await conn.closeWrite();
        const reply = await withDeadline(readToEnd(conn), 2000, "the reply");
        assertBytes(reply, expectedReply(request));
      } finally {
        conn.close();
      }
    }),
});

Deno.test({
  name: "robustness: a client that sends and never reads is throttled; server memory stays flat",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("tcp_server.ts", ["--port", "0", "--quiet"]);
    const port = await server.readyPort();
    const pid = server.pid;
    const before = await memoryKb(pid);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    let sent = 0;
    try {
      // Write until a write has been stuck for half a second: TCP flow control
      // has reached us because the server stopped reading. Bounded at 256 MB.
      const chunk = new Uint8Array(256 * 1024).fill(0x61);
      while (sent < 256 * 1024 * 1024) {
        const write = conn.write(chunk);
        const stuck = new Promise<"stuck">((r) => setTimeout(() => r("stuck"), 500));
        const result = await Promise.race([write, stuck]);
        if (result === "stuck") {
          write.catch(() => {}); // closing below ends it
          break;
        }
        sent += result;
      }
    } finally {
      conn.close();
    }
    const after = await memoryKb(pid);
    figures(
      `never-reading client: sent ${(sent / 1e6).toFixed(1)} MB before being throttled; ` +
        `server VmHWM ${before.hwm} KB -> ${after.hwm} KB`,
    );
    assert.ok(sent < 64 * 1024 * 1024, `the server read ${sent} bytes it could not answer`);
    assert.ok(
      after.hwm - before.hwm < 32 * 1024,
      `server memory grew by ${after.hwm - before.hwm} KB`,
    );
    server.kill("SIGTERM");
    assert.equal((await server.finish()).code, 0);
  },
});

// --- many clients --------------------------------------------------------------

const CONNECTIONS = 10_000;
const fileLimit = await openFileLimit();

Deno.test({
  name: `robustness: ${CONNECTIONS} concurrent idle TCP connections held, each answered afterwards`,
  // This process holds the client side of every connection; the server, a
  // separate process, holds the other side. Both inherit this limit.
  ignore: fileLimit < CONNECTIONS + 500,
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("tcp_server.ts", [
      "--port",
      "0",
      "--quiet",
      "--max-connections",
      String(CONNECTIONS + 100),
    ]);
    const port = await server.readyPort();
    const pid = server.pid;
    const conns: Deno.TcpConn[] = [];
    const batch = 500; // stay under the listen backlog (511)
    try {
      await withDeadline(
        (async () => {
          while (conns.length < CONNECTIONS) {
            const n = Math.min(batch, CONNECTIONS - conns.length);
            conns.push(
              ...await Promise.all(
                Array.from({ length: n }, () => Deno.connect({ hostname: "127.0.0.1", port })),
              ),
            );
          }
        })(),
        60_000,
        `opening ${CONNECTIONS} connections`,
      );
      const held = await memoryKb(pid);
      // Every connection, opened long ago and idle since, is still served.
      await withDeadline(
        (async () => {
          for (let start = 0; start < conns.length; start += batch) {
            await Promise.all(
              conns.slice(start, start + batch).map(async (conn, i) => {
                const request = utf8(`client ${start + i} ß`);
                await writeAll(conn, request);
                await conn.closeWrite();
                assertBytes(await readToEnd(conn), expectedReply(request));
              }),
            );
          }
        })(),
        60_000,
        `answering ${CONNECTIONS} connections`,
      );
      figures(
        `${CONNECTIONS} idle connections held and answered; server VmRSS ${held.rss} KB ` +
          `(${(held.rss / CONNECTIONS).toFixed(1)} KB per connection, baseline included), ` +
          `VmHWM ${(await memoryKb(pid)).hwm} KB`,
      );
    } finally {
      for (const conn of conns) conn.close();
    }
    server.kill("SIGTERM");
    assert.equal((await server.finish(15_000)).code, 0);
  },
});
if (fileLimit < CONNECTIONS + 500) {
  console.log(
    `[skipped] ${CONNECTIONS}-connection test: the open-file limit is ${fileLimit}; ` +
      `run "ulimit -n ${CONNECTIONS * 2}" first (Deno cannot raise its own limit)`,
  );
}

Deno.test({
  name: "robustness: UDP flood from many sockets: no reply twice, none to the wrong sender",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("udp_server.ts", ["--port", "0", "--quiet"]);
    const port = await server.readyPort();
    const sockets = 40;
    const perSocket = 100;
    let answered = 0;
    await Promise.all(Array.from({ length: sockets }, async (_, s) => {
      const socket = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
      const expected = new Map<string, number>(); // reply text -> times seen
      let receiving: Promise<[Uint8Array, Deno.Addr]> | undefined;
      try {
        for (let i = 0; i < perSocket; i++) {
          const text = `socket ${s} datagram ${i} ß`;
          expected.set(expectedText(text), 0);
          await socket.send(utf8(text), { transport: "udp", hostname: "127.0.0.1", port });
        }
        // Collect replies until all came or 300 ms pass without one.
        for (let got = 0; got < perSocket; got++) {
          receiving ??= socket.receive();
          let timer: ReturnType<typeof setTimeout> | undefined;
          const quiet = new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), 300));
          const result = await Promise.race([receiving, quiet]);
          clearTimeout(timer);
          if (result === undefined) break;
          receiving = undefined;
          const [data, from] = result as [Uint8Array, Deno.NetAddr];
          const text = new TextDecoder().decode(data);
          assert.equal(from.port, port, "a reply from the server's port");
          assert.ok(expected.has(text), `socket ${s} got a reply it never asked for: ${text}`);
          assert.equal(expected.get(text), 0, `socket ${s} got ${text} twice`);
          expected.set(text, 1);
          answered++;
        }
      } finally {
        socket.close();
        await receiving?.catch(() => {});
      }
    }));
    figures(
      `UDP flood: ${
        sockets * perSocket
      } datagrams sent from ${sockets} sockets, ${answered} answered`,
    );
    assert.ok(answered > 0, "no datagram answered at all");
    // The server is alive and serving after the flood.
    const data = utf8("after the flood");
    const reply = await udpExchange({ port, data });
    assert.ok(reply, "no reply after the flood");
    assertBytes(reply.data, expectedReply(data));
    server.kill("SIGTERM");
    assert.equal((await server.finish()).code, 0);
  },
});

// --- fuzz ------------------------------------------------------------------------

/** Random bytes biased towards the interesting: ASCII letters, UTF-8, invalid bytes. */
function fuzzInput(rand: () => number, maxLength: number): Uint8Array {
  const pieces = ["a", "Z", " ", "ß", "ä", "€", "😀", "\u0390", "ﬃ", "\u0149", "\0", "\n"];
  const out: number[] = [];
  const length = Math.floor(rand() * maxLength);
  while (out.length < length) {
    const kind = rand();
    if (kind < 0.5) out.push(...utf8(pieces[Math.floor(rand() * pieces.length)]));
    else if (kind < 0.8) out.push(0x61 + Math.floor(rand() * 26));
    else out.push(Math.floor(rand() * 256));
  }
  return new Uint8Array(out.slice(0, length));
}

/** Splits bytes into random chunks of 1 to `max` bytes. */
function randomChunks(rand: () => number, bytes: Uint8Array, max: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length;) {
    const size = 1 + Math.floor(rand() * max);
    chunks.push(bytes.subarray(i, i + size));
    i += size;
  }
  return chunks;
}

Deno.test({
  name: "robustness: seeded fuzz over TCP and UDP: every reply exact, both servers alive",
  permissions: SUBPROCESS,
  fn: async () => {
    const seconds = Number(Deno.env.get("FUZZ_SECONDS") ?? "1.5");
    const seed = Number(Deno.env.get("FUZZ_SEED") ?? "12000");
    await using tcp = Program.start("tcp_server.ts", ["--port", "0", "--quiet"]);
    await using udp = Program.start("udp_server.ts", ["--port", "0", "--quiet"]);
    const [tcpPort, udpPort] = await Promise.all([tcp.readyPort(), udp.readyPort()]);
    const stopAt = performance.now() + seconds * 1000;
    let tried = 0;
    const workers = Array.from({ length: 8 }, async (_, w) => {
      const rand = random(seed + w);
      while (performance.now() < stopAt) {
        const input = fuzzInput(rand, w % 2 === 0 ? 4000 : 1400);
        const what = `worker ${w}, seed ${seed + w}, input ${escapeBytes(input, 60)}`;
        if (w % 2 === 0) {
          const reply = await tcpExchange({
            port: tcpPort,
            chunks: randomChunks(rand, input, 700),
          });
          assertBytes(reply, expectedReply(input), `TCP fuzz reply (${what})`);
        } else {
          const reply = await udpExchange({ port: udpPort, data: input });
          assert.ok(reply, `no UDP reply (${what})`);
          assertBytes(reply.data, expectedReply(input), `UDP fuzz reply (${what})`);
        }
        tried++;
      }
    });
    await Promise.all(workers);
    figures(`fuzz: ${tried} inputs in ${seconds} s (seed ${seed}), all replies exact`);
    tcp.kill("SIGTERM");
    udp.kill("SIGTERM");
    assert.equal((await tcp.finish()).code, 0, "the TCP server exits 0: it never crashed");
    assert.equal((await udp.finish()).code, 0, "the UDP server exits 0: it never crashed");
  },
});

// --- shutdown under load ---------------------------------------------------------

Deno.test({
  name: "robustness: SIGTERM mid-exchange: replies in flight complete, exit 0 in bounded time",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("tcp_server.ts", ["--port", "0"]);
    const port = await server.readyPort();
    const busy = await Promise.all(
      Array.from({ length: 20 }, () => Deno.connect({ hostname: "127.0.0.1", port })),
    );
    const idle = await Promise.all(
      Array.from({ length: 5 }, () => Deno.connect({ hostname: "127.0.0.1", port })),
    );
    try {
      // Each busy client sends a first half and reads its reply, so the
      // server is certainly in the middle of its exchange.
      await Promise.all(busy.map(async (conn, i) => {
        const first = utf8(`client ${i} first half; `);
        await writeAll(conn, first);
        const echo = new Uint8Array(expectedReply(first).length);
        let got = 0;
        while (got < echo.length) got += (await conn.read(echo.subarray(got)))!;
        assertBytes(echo, expectedReply(first), "the first half");
      }));
      const started = performance.now();
      server.kill("SIGTERM");
      await server.waitForLine(/^Shutting down/);
      // Idle connections are closed at once: end of stream, nothing else.
      for (const conn of idle) {
        assert.equal((await withDeadline(readToEnd(conn), 2000, "idle close")).length, 0);
      }
      // Busy clients finish: their whole reply arrives, then end of stream.
      await Promise.all(busy.map(async (conn, i) => {
        const second = utf8(`client ${i} second half ä€`);
        await writeAll(conn, second);
        await conn.closeWrite();
        const rest = await withDeadline(readToEnd(conn), 5000, "the rest of the reply");
        assertBytes(rest, expectedReply(second), "the second half");
      }));
      const { code, stdout } = await server.finish(5000);
      figures(
        `shutdown under load: 20 in-flight replies completed, exit after ${
          Math.round(performance.now() - started)
        } ms`,
      );
      assert.equal(code, 0);
      assert.match(stdout, /The server has shut down\.$/);
    } finally {
      for (const conn of [...busy, ...idle]) conn.close();
    }
  },
});

// --- security ------------------------------------------------------------------

Deno.test({
  name: "security: each program works under exactly the minimal grant from the README",
  permissions: SUBPROCESS,
  fn: async () => {
    using reserved = await reserveFixedPort();
    const port = reserved.port;
    const p = String(port);
    const exact = `127.0.0.1:${p},[::1]:${p}`;
    {
      await using server = Program.start("tcp_server.ts", ["--port", p], {
        flags: [`--allow-net=${exact}`],
      });
      await server.readyPort();
      const client = await Program.start("tcp_client.ts", ["--port", p, "tight"], {
        flags: [`--allow-net=${exact}`],
      }).finish();
      assert.equal(client.code, 0, client.stderr);
      assert.equal(client.stdout, `From Server: ${expectedText("tight")}`);
      server.kill("SIGTERM");
      assert.equal((await server.finish()).code, 0);
    }
    {
      await using server = Program.start("udp_server.ts", ["--port", p], {
        flags: ["--allow-net=127.0.0.1,[::1]"],
      });
      await server.readyPort();
      const client = await Program.start("udp_client.ts", ["--port", p, "tight"], {
        flags: [`--allow-net=${exact},[::]:0`],
      }).finish();
      assert.equal(client.code, 0, client.stderr);
      assert.equal(client.stdout, expectedText("tight"));
      server.kill("SIGTERM");
      assert.equal((await server.finish()).code, 0);
    }
  },
});

Deno.test({
  name: "security: loopback by default, and serving other hosts is stated at startup",
  permissions: SUBPROCESS,
  fn: async () => {
    for (const script of ["tcp_server.ts", "udp_server.ts"]) {
      {
        await using server = Program.start(script, ["--port", "0"]);
        await server.waitForLine(/^Only this machine can (connect|reach it) \(loopback\)/);
        server.kill("SIGTERM");
        assert.equal((await server.finish()).code, 0);
      }
      {
        await using server = Program.start(script, ["--port", "0", "--host", "0.0.0.0"]);
        const ready = await server.waitForLine(/^The server is ready to receive on (\S+)$/);
        assert.match(ready[1], /^0\.0\.0\.0:\d+$/);
        await server.waitForLine(/^Serving other hosts too \(--host 0\.0\.0\.0\)/);
        server.kill("SIGTERM");
        assert.equal((await server.finish()).code, 0);
      }
    }
  },
});
