/**
 * udp_client.ts: tested in-process through exchangeUdp() and as a real
 * subprocess, against this project's server and against stub servers that
 * stay silent or send spoofed replies on purpose.
 */
import assert from "node:assert/strict";
import { exchangeUdp, NoReplyError, parseClientArgs } from "../udp_client.ts";
import { startUdpServer } from "../udp_server.ts";
import {
  expectOneLineError,
  NET,
  NO_NET_ERROR,
  Program,
  SUBPROCESS,
  utf8,
  withServer,
} from "./helpers.ts";
import { expectedReply, expectedText } from "./grading/compare.ts";

/**
 * A stub UDP "server" that records every datagram and hands each to
 * `onDatagram` (which may answer, or not).
 */
async function withStub(
  onDatagram: (stub: Deno.DatagramConn, data: Uint8Array, from: Deno.NetAddr) => Promise<void>,
  body: (port: number, received: Uint8Array[]) => Promise<void>,
) {
  const stub = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const received: Uint8Array[] = [];
  const loop = (async () => {
    try {
      for (;;) {
        const [data, from] = await stub.receive();
        received.push(data);
        await onDatagram(stub, data, from as Deno.NetAddr);
      }
    } catch {
      // close() below ends the loop.
    }
  })();
  try {
    await body((stub.addr as Deno.NetAddr).port, received);
  } finally {
    stub.close();
    await loop;
  }
}

// The golden test: the one place that pins the service itself, with a
// literal reply. Every other test derives its expectation from expectedReply().
Deno.test({
  name: "udp client: exchangeUdp returns the server's exact reply",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const reply = await exchangeUdp({ hostname: "127.0.0.1", port, message: "hi ä€😀 ß" });
      assert.equal(reply, "HI Ä€😀 SS");
    }),
});

Deno.test({
  name: "udp client: the default host localhost reaches a server on 127.0.0.1 only or ::1 only",
  permissions: NET,
  fn: async () => {
    for (const hostname of ["127.0.0.1", "::1"]) {
      await withServer(startUdpServer, { hostname }, async (port) => {
        const reply = await exchangeUdp({ hostname: "localhost", port, message: hostname });
        assert.equal(reply, expectedText(hostname));
      });
    }
  },
});

Deno.test({
  name: "udp client: silence means retries, then NoReplyError after timeout x tries",
  permissions: NET,
  fn: () =>
    withStub(async () => {}, async (port, received) => {
      const started = performance.now();
      await assert.rejects(
        exchangeUdp({ hostname: "127.0.0.1", port, message: "anyone?", timeout: 0.2, tries: 3 }),
        (error: Error) => {
          assert.ok(error instanceof NoReplyError);
          assert.equal(
            error.message,
            `No reply from 127.0.0.1:${port} after 3 tries (UDP does not retransmit: ` +
              "a datagram may be lost, or no server is running there)",
          );
          return true;
        },
      );
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 550 && elapsed < 2000, `gave up after ${elapsed} ms, expected ~600`);
      assert.equal(received.length, 3, "one datagram per try");
    }),
});

Deno.test({
  name: "udp client: a lost first reply is recovered by the second try",
  permissions: NET,
  fn: () => {
    let count = 0;
    return withStub(async (stub, data, from) => {
      if (++count === 1) return; // "lose" the first one
      await stub.send(expectedReply(data), from);
    }, async (port, received) => {
      const reply = await exchangeUdp({
        hostname: "127.0.0.1",
        port,
        message: "retry",
        timeout: 0.2,
      });
      assert.equal(reply, expectedText("retry"));
      assert.equal(received.length, 2);
    });
  },
});

Deno.test({
  name: "udp client: a spoofed reply from another socket is ignored",
  permissions: NET,
  fn: async () => {
    const spoofer = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    try {
      await withStub(async (stub, data, from) => {
        // Someone else answers first; only then does the real server reply.
        await spoofer.send(utf8("SPOOFED"), from);
        await new Promise((r) => setTimeout(r, 20));
        await stub.send(expectedReply(data), from);
      }, async (port) => {
        const reply = await exchangeUdp({ hostname: "127.0.0.1", port, message: "genuine" });
        assert.equal(reply, expectedText("genuine"));
      });
    } finally {
      spoofer.close();
    }
  },
});

Deno.test({
  name: "udp client: parseClientArgs reads --timeout and --tries",
  fn: () => {
    assert.deepEqual(parseClientArgs(["--timeout", "0.5", "--tries", "5", "a", "b"]), {
      help: false,
      hostname: "localhost",
      port: 12000,
      timeout: 0.5,
      tries: 5,
      service: "upper",
      message: "a b",
    });
    assert.equal(parseClientArgs(["--service", "count-s"]).service, "count-s");
    assert.throws(() => parseClientArgs(["--service", "lower"]), /--service must be/);
    assert.throws(() => parseClientArgs(["--tries", "0"]), /--tries must be/);
    assert.throws(() => parseClientArgs(["--port", "65536"]), /--port must be/);
  },
});

// --- as a subprocess ------------------------------------------------------

Deno.test({
  name: "udp client (subprocess): prints the reply alone, as the textbook does",
  permissions: SUBPROCESS,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const client = Program.start("udp_client.ts", ["--port", String(port), "hello", "wörld"]);
      const { code, stdout, stderr } = await client.finish();
      assert.equal(code, 0, stderr);
      assert.equal(stdout, expectedText("hello wörld"));
    }),
});

Deno.test({
  name: "udp client (subprocess): piped stdin sends every line, replies in order",
  permissions: SUBPROCESS,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const lines = ["one", "two ß", "", "three"];
      const client = Program.start("udp_client.ts", ["--port", String(port)], {
        input: `${lines[0]}\n${lines[1]}\r\n${lines[2]}\n${lines[3]}`,
      });
      const { code, stdout, stderr } = await client.finish();
      assert.equal(code, 0, stderr);
      assert.deepEqual(stdout.split("\n"), lines.map((line) => expectedText(line)));
    }),
});

Deno.test({
  name: "udp client (subprocess): no reply exits 1 within timeout x tries, with the message",
  permissions: SUBPROCESS,
  fn: () =>
    withStub(async () => {}, async (port, received) => {
      const started = performance.now();
      const { code, stderr } = await Program.start("udp_client.ts", [
        "--host",
        "127.0.0.1",
        "--port",
        String(port),
        "--timeout",
        "0.3",
        "x",
      ]).finish(5000);
      const elapsed = performance.now() - started;
      assert.equal(code, 1);
      assert.match(
        stderr,
        new RegExp(`^error: No reply from 127\\.0\\.0\\.1:${port} after 3 tries`),
      );
      assert.match(stderr, /UDP does not retransmit/);
      assert.ok(elapsed < 3000, `took ${elapsed} ms for 3 x 0.3 s`);
      assert.equal(received.length, 3);
    }),
});

Deno.test({
  name: "udp client (subprocess): without --unstable-net it names the flag, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    await expectOneLineError("udp_client.ts", ["x"], {
      code: 2,
      pattern: /^error: UDP needs the --unstable-net flag/,
      flags: ["--no-config", "--allow-net"],
    });
  },
});

Deno.test({
  name: "udp client (subprocess): without --allow-net it says which flag to add, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    await expectOneLineError("udp_client.ts", ["x"], { code: 2, pattern: NO_NET_ERROR, flags: [] });
  },
});

for (
  const [args, pattern] of [
    [["--port", "70000", "x"], /--port must be a whole number from 1 to 65535, not "70000"/],
    [["--tries", "many", "x"], /--tries must be a whole number/],
    [["--what", "x"], /Unknown option "--what"/],
  ] as const
) {
  Deno.test({
    name: `udp client (subprocess): ${args.join(" ")} is a usage error, exit 2`,
    permissions: SUBPROCESS,
    fn: async () => {
      await expectOneLineError("udp_client.ts", [...args], { code: 2, pattern });
    },
  });
}

Deno.test({
  name: "udp client (subprocess): an unknown host is a one-line error, exit 1",
  permissions: SUBPROCESS,
  fn: async () => {
    const { code, stderr } = await Program.start("udp_client.ts", [
      "--host",
      "no-such-host.invalid",
      "x",
    ])
      .finish(10_000);
    assert.equal(code, 1);
    assert.equal(
      stderr.trim(),
      'error: Unknown host "no-such-host.invalid": check the name, or use an IP address',
    );
  },
});

Deno.test({
  name: "udp client (subprocess): a grant without its own socket names [::]:0 and the grant",
  permissions: SUBPROCESS,
  fn: async () => {
    const line = await expectOneLineError("udp_client.ts", ["--port", "12000", "x"], {
      code: 2,
      pattern:
        /^error: Network access to \[::\]:0 \(the client's own socket\) was not granted: add it to --allow-net, as in --allow-net='127\.0\.0\.1:12000,\[::1\]:12000,\[::\]:0'$/,
      flags: ["--allow-net=127.0.0.1:12000,[::1]:12000"],
    });
    assert.doesNotMatch(line, /run again with the --allow-net flag/);
  },
});

Deno.test({
  name: "udp client (subprocess): a grant without the server's address names it, sends nothing",
  permissions: SUBPROCESS,
  fn: async () => {
    await expectOneLineError("udp_client.ts", ["--host", "127.0.0.1", "--port", "12000", "x"], {
      code: 2,
      pattern:
        /^error: Network access to 127\.0\.0\.1:12000 was not granted: add it to --allow-net, as in --allow-net='127\.0\.0\.1:12000,0\.0\.0\.0:0'$/,
      flags: ["--allow-net=0.0.0.0:0"],
    });
  },
});
