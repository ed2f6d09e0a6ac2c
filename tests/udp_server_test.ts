/**
 * udp_server.ts: tested in-process through startUdpServer() and as a real
 * subprocess. Every reply is compared byte for byte with expectedReply().
 */
import assert from "node:assert/strict";
import { startUdpServer } from "../udp_server.ts";
import {
  assertBytes,
  expectedReply,
  expectOneLineError,
  NET,
  NO_NET_ERROR,
  Program,
  SUBPROCESS,
  udpExchange,
  utf8,
  withServer,
} from "./helpers.ts";

/** Sends one datagram and checks the exact reply and that it came from the server. */
async function checkReply(port: number, data: Uint8Array, hostname = "127.0.0.1") {
  const reply = await udpExchange({ hostname, port, data });
  assert.ok(reply, `no reply to a ${data.length}-byte datagram`);
  assert.equal(reply.from.port, port);
  assertBytes(reply.data, expectedReply(data));
  return reply.data;
}

Deno.test({
  name: "udp server: ASCII, multibyte and ß -> SS come back uppercased",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const reply = await checkReply(port, utf8("hello, ä € 😀 ß!"));
      assert.equal(new TextDecoder().decode(reply), "HELLO, Ä € 😀 SS!");
    }),
});

Deno.test({
  name: "udp server: invalid bytes become U+FFFD and the server lives on",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const reply = await checkReply(port, new Uint8Array([0xff, 0x61, 0xc3]));
      assert.equal(new TextDecoder().decode(reply), "\uFFFDA\uFFFD");
      await checkReply(port, utf8("still here"));
    }),
});

Deno.test({
  name: "udp server: an empty datagram gets an empty reply",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const reply = await checkReply(port, new Uint8Array(0));
      assert.equal(reply.length, 0);
    }),
});

Deno.test({
  name: "udp server: a 65507-byte datagram (largest over IPv4) is received whole",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const data = utf8("abcdefghij".repeat(6551).slice(0, 65507));
      assert.equal(data.length, 65507);
      await checkReply(port, data);
    }),
});

Deno.test({
  name: "udp server: a 65527-byte datagram (largest over IPv6) is received whole",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const data = utf8("z".repeat(65527));
      await checkReply(port, data, "::1");
    }),
});

Deno.test({
  name: "udp server: a reply too big for one datagram is logged and dropped, then the next served",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port, log) => {
      // 32000 x ΐ: 64000 bytes in, 192000 bytes out.
      const data = utf8("\u0390".repeat(32000));
      const reply = await udpExchange({ port, data, ms: 300 });
      assert.equal(reply, undefined);
      assert.match(
        log.join("\n"),
        /Dropped the reply to 127\.0\.0\.1:\d+: 64000 bytes in, 192000 bytes out do not fit/,
      );
      await checkReply(port, utf8("next"));
    }),
});

Deno.test({
  name: "udp server: one log line per exchange with address and byte counts",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port, log) => {
      await checkReply(port, utf8("ß"));
      assert.equal(log.length, 1);
      assert.match(log[0], /^Served 127\.0\.0\.1:\d+: 2 bytes in, 2 bytes out$/);
    }),
});

Deno.test({
  name: "udp server: localhost binds both 127.0.0.1 and ::1 on one port",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, { hostname: "localhost" }, async (port) => {
      await checkReply(port, utf8("v4"), "127.0.0.1");
      await checkReply(port, utf8("v6"), "::1");
    }),
});

// --- as a subprocess ------------------------------------------------------

Deno.test({
  name: "udp server (subprocess): ready line, replies, SIGTERM exits 0 with a goodbye",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("udp_server.ts", ["--port", "0"]);
    const ready = await server.waitForLine(/^The server is ready to receive on (.+)$/);
    assert.match(ready[1], /^127\.0\.0\.1:(\d+) and \[::1\]:\1$/);
    const port = await server.readyPort();
    await checkReply(port, utf8("hello from a subprocess test"));
    await server.waitForLine(/^Served 127\.0\.0\.1:\d+: 28 bytes in, 28 bytes out$/);
    server.kill("SIGTERM");
    const { code, stdout } = await server.finish();
    assert.equal(code, 0);
    assert.match(stdout, /The server has shut down\.$/);
  },
});

Deno.test({
  name: "udp server (subprocess): without --unstable-net it names the flag, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    // --no-config: as if the file had been copied out of the project folder.
    await expectOneLineError("udp_server.ts", ["--port", "0"], {
      code: 2,
      pattern: /^error: UDP needs the --unstable-net flag/,
      flags: ["--no-config", "--allow-net"],
    });
  },
});

Deno.test({
  name: "udp server (subprocess): without --allow-net it says which flag to add, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    await expectOneLineError("udp_server.ts", ["--port", "0"], {
      code: 2,
      pattern: NO_NET_ERROR,
      flags: [],
    });
  },
});

for (
  const [args, pattern] of [
    [["--port", "70000"], /--port must be a whole number from 0 to 65535, not "70000"/],
    [["--port", "abc"], /--port must be a whole number from 0 to 65535, not "abc"/],
    [["--loud"], /Unknown option "--loud"/],
  ] as const
) {
  Deno.test({
    name: `udp server (subprocess): ${args.join(" ")} is a usage error, exit 2`,
    permissions: SUBPROCESS,
    fn: async () => {
      await expectOneLineError("udp_server.ts", [...args], { code: 2, pattern });
    },
  });
}

Deno.test({
  name: "udp server (subprocess): a port in use is a one-line error, exit 1",
  permissions: SUBPROCESS,
  fn: async () => {
    const taken = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    try {
      const port = String((taken.addr as Deno.NetAddr).port);
      const { code, stderr } = await Program.start("udp_server.ts", [
        "--host",
        "127.0.0.1",
        "--port",
        port,
      ]).finish();
      assert.equal(code, 1);
      assert.equal(
        stderr.trim(),
        `error: Address 127.0.0.1:${port} is already in use: stop the other server or choose another --port`,
      );
    } finally {
      taken.close();
    }
  },
});
