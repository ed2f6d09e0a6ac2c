/**
 * tcp_server.ts: tested in-process through startTcpServer() and as a real
 * subprocess. Every reply is compared byte for byte with expectedReply().
 */
import assert from "node:assert/strict";
import { startTcpServer } from "../tcp_server.ts";
import {
  assertBytes,
  expectedReply,
  expectOneLineError,
  NET,
  NO_NET_ERROR,
  Program,
  readToEnd,
  SUBPROCESS,
  tcpExchange,
  utf8,
  waitUntil,
  withDeadline,
  withServer,
  writeAll,
} from "./helpers.ts";

/** Sends `request` (optionally in several chunks) and checks the exact reply. */
async function checkReply(port: number, chunks: Uint8Array[], gapMs = 0) {
  const request = new Uint8Array(chunks.flatMap((c) => [...c]));
  const reply = await tcpExchange({ port, chunks, gapMs });
  assertBytes(reply, expectedReply(request));
  return reply;
}

Deno.test({
  name: "tcp server: ASCII, mixed case and punctuation come back uppercased",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const reply = await checkReply(port, [utf8("hello, World! 123")]);
      assert.equal(new TextDecoder().decode(reply), "HELLO, WORLD! 123");
    }),
});

Deno.test({
  name: "tcp server: multibyte UTF-8 (ä € 😀 ß -> SS, ΐ grows 2 -> 6 bytes)",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const reply = await checkReply(port, [utf8("ä € 😀 ß \u0390")]);
      // ΐ (U+0390, 2 bytes) uppercases to three code points, 6 bytes.
      assert.equal(new TextDecoder().decode(reply), "Ä € 😀 SS \u0399\u0308\u0301");
    }),
});

Deno.test({
  name: "tcp server: a UTF-8 character split across two writes is not broken",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const euro = utf8("€"); // e2 82 ac
      // The gap makes the halves arrive in separate reads on the server.
      const reply = await checkReply(port, [utf8("a"), euro.subarray(0, 1), euro.subarray(1)], 50);
      assert.equal(new TextDecoder().decode(reply), "A€");
    }),
});

Deno.test({
  name: "tcp server: invalid bytes become U+FFFD and the server lives on",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const reply = await checkReply(port, [new Uint8Array([0x61, 0xff, 0xfe, 0x62, 0xc3])]);
      assert.equal(new TextDecoder().decode(reply), "A\uFFFD\uFFFDB\uFFFD");
      await checkReply(port, [utf8("still here")]);
    }),
});

Deno.test({
  name: "tcp server: empty input gets an empty reply",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const reply = await checkReply(port, []);
      assert.equal(reply.length, 0);
    }),
});

Deno.test({
  name: "tcp server: a 100 KB line comes back whole",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const line = "the quick brown fox jumps over the lazy dog ä€😀 ".repeat(2000);
      const reply = await checkReply(port, [utf8(line)]);
      assert.ok(reply.length > 100_000);
    }),
});

Deno.test({
  name: "tcp server: a slow reader gets every byte of a 4 MB reply (flow control, nothing lost)",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      // Reading slowly fills the socket buffers, so the server's write() calls
      // accept only part of what they are given; a server that ignores that loses data.
      const request = utf8("slow reader ß ".repeat(300_000));
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        const reading = withDeadline(
          (async () => {
            const buffer = new Uint8Array(256 * 1024);
            let total = 0;
            for (;;) {
              await new Promise((r) => setTimeout(r, 2));
              const n = await conn.read(buffer);
              if (n === null) return total;
              total += n;
            }
          })(),
          10_000,
          "the slow read",
        );
        await writeAll(conn, request);
        await conn.closeWrite();
        assert.equal(await reading, expectedReply(request).length);
      } finally {
        conn.close();
      }
    }),
});

Deno.test({
  name: "tcp server: a silent client does not delay another (concurrent, not iterative)",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const silent = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await withDeadline(checkReply(port, [utf8("second client")]), 2000, "the second client");
      } finally {
        silent.close();
      }
    }),
});

Deno.test({
  name: "tcp server: a client that vanishes mid-reply costs only its own connection",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port, log) => {
      const rude = await Deno.connect({ hostname: "127.0.0.1", port });
      await rude.write(utf8("x".repeat(1_000_000)).subarray(0, 200_000));
      rude.close(); // never reads the reply: the server's writes fail
      await checkReply(port, [utf8("next client")]);
      const served = () => log.filter((l) => l.startsWith("Served")).length;
      await waitUntil(() => served() >= 2, 3000, () => `2 log lines, have ${served()}`);
    }),
});

Deno.test({
  name: "tcp server: one log line per connection with address and byte counts",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port, log) => {
      await checkReply(port, [utf8("ß")]);
      // The line is written when the server closes, just before or after our read ends.
      await waitUntil(() => log.length > 0, 2000, () => "the log line");
      assert.match(log[0], /^Served 127\.0\.0\.1:\d+: 2 bytes in, 2 bytes out$/);
      assert.equal(log.length, 1);
    }),
});

Deno.test({
  name: "tcp server: --idle-timeout closes a connection that sends nothing",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, { idleTimeout: 0.2 }, async (port, log) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        const reply = await withDeadline(readToEnd(conn), 3000, "the idle close");
        assert.equal(reply.length, 0);
      } finally {
        conn.close();
      }
      assert.match(log.join("\n"), /closed after 0\.2 s idle/);
    }),
});

Deno.test({
  name: "tcp server: past --max-connections, new clients are accepted and closed at once",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, { maxConnections: 1 }, async (port, log) => {
      const first = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await first.write(utf8("a")); // make sure the server has accepted it
        const second = await Deno.connect({ hostname: "127.0.0.1", port });
        try {
          const reply = await withDeadline(readToEnd(second), 2000, "the refusal");
          assert.equal(reply.length, 0);
        } finally {
          second.close();
        }
        assert.match(log.join("\n"), /Refused 127\.0\.0\.1:\d+: 1 connections already open/);
      } finally {
        first.close();
      }
    }),
});

Deno.test({
  name: "tcp server: localhost binds both 127.0.0.1 and ::1 on one port",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, { hostname: "localhost" }, async (port) => {
      await checkReply(port, [utf8("v4")]);
      const reply = await tcpExchange({ hostname: "::1", port, chunks: [utf8("v6")] });
      assertBytes(reply, utf8("V6"));
    }),
});

Deno.test({
  name: "tcp server: shutdown lets an exchange in flight finish, then resolves",
  permissions: NET,
  fn: async () => {
    const controller = new AbortController();
    const server = await startTcpServer({ port: 0, log: () => {}, signal: controller.signal });
    const port = server.addrs[0].port;
    const idle = await Deno.connect({ hostname: "127.0.0.1", port });
    const busy = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await busy.write(utf8("first half, "));
      const replyStart = new Uint8Array(12);
      await withDeadline(
        (async () => {
          let got = 0;
          while (got < 12) got += (await busy.read(replyStart.subarray(got)))!;
        })(),
        2000,
        "the first half of the reply",
      );
      controller.abort(); // shutdown begins mid-exchange
      // The idle connection (nothing sent) is closed at once.
      assert.equal((await withDeadline(readToEnd(idle), 2000, "idle close")).length, 0);
      // New connections are refused: the listener is closed. (gVisor frees a
      // closed listener in the background, so a connect at once may still land.)
      await refusedWithin(port, 2000);
      // The busy client still finishes its exchange.
      await busy.write(utf8("second half"));
      await busy.closeWrite();
      const rest = await withDeadline(readToEnd(busy), 2000, "the rest of the reply");
      assert.equal(new TextDecoder().decode(rest), "SECOND HALF");
      await withDeadline(server.finished, 2000, "server.finished");
    } finally {
      idle.close();
      busy.close();
    }
  },
});

// --- as a subprocess ------------------------------------------------------

Deno.test({
  name: "tcp server (subprocess): ready line, replies, SIGTERM exits 0 with a goodbye",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("tcp_server.ts", ["--port", "0"]);
    const ready = await server.waitForLine(/^The server is ready to receive on (.+)$/);
    assert.match(ready[1], /^127\.0\.0\.1:(\d+) and \[::1\]:\1$/);
    const port = await server.readyPort();
    await checkReply(port, [utf8("hello from a subprocess test")]);
    await server.waitForLine(/^Served 127\.0\.0\.1:\d+: 28 bytes in, 28 bytes out$/);
    server.kill("SIGTERM");
    const { code, stdout } = await server.finish();
    assert.equal(code, 0);
    assert.match(stdout, /The server has shut down\.$/);
  },
});

Deno.test({
  name: "tcp server (subprocess): --quiet prints the ready line but no log lines",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("tcp_server.ts", ["--port", "0", "--quiet"]);
    const port = await server.readyPort();
    await checkReply(port, [utf8("quiet")]);
    server.kill("SIGTERM");
    const { code, stdout } = await server.finish();
    assert.equal(code, 0);
    assert.doesNotMatch(stdout, /Served/);
  },
});

for (
  const [args, pattern] of [
    [["--port", "70000"], /--port must be a whole number from 0 to 65535, not "70000"/],
    [["--port", "abc"], /--port must be a whole number from 0 to 65535, not "abc"/],
    [["--bogus"], /Unknown option "--bogus"/],
    [["--idle-timeout", "-1"], /--idle-timeout/],
  ] as const
) {
  Deno.test({
    name: `tcp server (subprocess): ${args.join(" ")} is a usage error, exit 2`,
    permissions: SUBPROCESS,
    fn: async () => {
      await expectOneLineError("tcp_server.ts", [...args], { code: 2, pattern });
    },
  });
}

Deno.test({
  name: "tcp server (subprocess): without --allow-net it says which flag to add, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    await expectOneLineError("tcp_server.ts", ["--port", "0"], {
      code: 2,
      pattern: NO_NET_ERROR,
      flags: [],
    });
  },
});

Deno.test({
  name: "tcp server (subprocess): a port in use is a one-line error, exit 1",
  permissions: SUBPROCESS,
  fn: async () => {
    using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = String(taken.addr.port);
    await expectOneLineError("tcp_server.ts", ["--host", "127.0.0.1", "--port", port], {
      code: 1,
      pattern: new RegExp(`^error: Address 127\\.0\\.0\\.1:${port} is already in use`),
    });
  },
});

Deno.test({
  name: "tcp server (subprocess): an address not on this machine is a one-line error, exit 1",
  permissions: SUBPROCESS,
  fn: async () => {
    // 192.0.2.1 is a documentation address (TEST-NET-1): binding fails locally, no traffic.
    const { code, stderr } = await Program.start("tcp_server.ts", ["--host", "192.0.2.1"]).finish();
    assert.equal(code, 1);
    assert.equal(
      stderr.trim(),
      "error: Cannot bind 192.0.2.1:12000: 192.0.2.1 is not an address of this machine",
    );
  },
});

/** Resolves once a connection to `port` on 127.0.0.1 is refused; throws after `ms`. */
async function refusedWithin(port: number, ms: number): Promise<void> {
  const stopAt = performance.now() + ms;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    } catch (error) {
      assert.ok(error instanceof Deno.errors.ConnectionRefused, String(error));
      return;
    }
    if (performance.now() > stopAt) throw new Error(`Deadline: port ${port} still accepts`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
