/**
 * tcp_client.ts: tested in-process through exchangeTcp() and as a real
 * subprocess, against this project's server and against stub servers that
 * misbehave on purpose.
 */
import assert from "node:assert/strict";
import { exchangeTcp, parseClientArgs, ReplyTooLongError, TimeoutError } from "../tcp_client.ts";
import { startTcpServer } from "../tcp_server.ts";
import {
  expectOneLineError,
  NET,
  NO_NET_ERROR,
  Program,
  readToEnd,
  ROOT,
  SUBPROCESS,
  withServer,
  withStub,
  writeAll,
} from "./helpers.ts";
import { expectedReply, expectedText } from "./grading/compare.ts";

/** A stub that reads the request to its end, then answers through `answer`. */
function withReadingStub(
  answer: (conn: Deno.Conn, request: Uint8Array) => Promise<void>,
  body: (port: number) => Promise<void>,
) {
  return withStub(async (conn) => await answer(conn, await readToEnd(conn)), body);
}

// The golden test: the one place that pins the service itself, with a
// literal reply. Every other test derives its expectation from expectedReply().
Deno.test({
  name: "tcp client: exchangeTcp returns the server's exact reply",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const reply = await exchangeTcp({ hostname: "127.0.0.1", port, sentence: "hello ä€😀 ß" });
      assert.equal(reply, "HELLO Ä€😀 SS");
    }),
});

Deno.test({
  name: "tcp client: the default host localhost reaches a server on ::1 only",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, { hostname: "::1" }, async (port) => {
      const reply = await exchangeTcp({ hostname: "localhost", port, sentence: "v6" });
      assert.equal(reply, expectedText("v6"));
    }),
});

Deno.test({
  name: "tcp client: a reply split across many reads is read whole, to end of stream",
  permissions: NET,
  fn: () =>
    withReadingStub(async (conn, request) => {
      // Answer one byte at a time, splitting every multibyte character.
      for (const byte of expectedReply(request)) {
        await writeAll(conn, new Uint8Array([byte]));
        await new Promise((r) => setTimeout(r, 1));
      }
    }, async (port) => {
      const sentence = "ä€😀 split";
      const reply = await exchangeTcp({ hostname: "127.0.0.1", port, sentence });
      assert.equal(reply, expectedText(sentence));
    }),
});

Deno.test({
  name: "tcp client: a 16 MB sentence and its reply go through whole (partial writes completed)",
  permissions: NET,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      // One write() of 16 MB is accepted only in part: the client must loop.
      const sentence = "abc€".repeat(2_800_000);
      const reply = await exchangeTcp({ hostname: "127.0.0.1", port, sentence });
      assert.equal(reply, expectedText(sentence));
    }),
});

Deno.test({
  name: "tcp client: a refused connection rejects with ConnectionRefused",
  permissions: NET,
  fn: async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = listener.addr.port;
    listener.close(); // now nothing listens there
    await assert.rejects(
      exchangeTcp({ hostname: "127.0.0.1", port, sentence: "x" }),
      Deno.errors.ConnectionRefused,
    );
  },
});

Deno.test({
  name: "tcp client: a server that never replies times out within --timeout",
  permissions: NET,
  fn: () => {
    let release = () => {};
    const never = new Promise<void>((resolve) => release = resolve);
    return withReadingStub(() => never, async (port) => {
      const started = performance.now();
      try {
        await assert.rejects(
          exchangeTcp({ hostname: "127.0.0.1", port, sentence: "x", timeout: 0.3 }),
          TimeoutError,
        );
      } finally {
        release();
      }
      const elapsed = performance.now() - started;
      assert.ok(elapsed < 2000, `gave up after ${elapsed} ms, expected about 300 ms`);
    });
  },
});

Deno.test({
  name: "tcp client: parseClientArgs joins the sentence and checks the port",
  fn: () => {
    const args = parseClientArgs(["--port", "5000", "hello", "world"]);
    assert.deepEqual(args, {
      help: false,
      hostname: "localhost",
      port: 5000,
      timeout: 10,
      service: "upper",
      sentence: "hello world",
      session: false,
    });
    assert.equal(parseClientArgs([]).sentence, undefined);
    assert.equal(parseClientArgs(["--service", "count-s"]).service, "count-s");
    assert.throws(() => parseClientArgs(["--service", "lower"]), /--service must be/);
    assert.throws(() => parseClientArgs(["--port", "0"]), /--port must be/);
    assert.throws(() => parseClientArgs(["--timeout", "soon"]), /--timeout must be/);
  },
});

// --- as a subprocess ------------------------------------------------------

Deno.test({
  name: "tcp client (subprocess): the sentence from the arguments, From Server: REPLY",
  permissions: SUBPROCESS,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const client = Program.start("tcp_client.ts", ["--port", String(port), "hello", "wörld"]);
      const { code, stdout, stderr } = await client.finish();
      assert.equal(code, 0, stderr);
      assert.equal(stdout, `From Server: ${expectedText("hello wörld")}`);
    }),
});

Deno.test({
  name: "tcp client (subprocess): piped stdin sends every line, replies in order",
  permissions: SUBPROCESS,
  fn: () =>
    withServer(startTcpServer, {}, async (port) => {
      const lines = ["first line", "second ß", "", "last without newline"];
      const client = Program.start("tcp_client.ts", ["--port", String(port)], {
        input: `${lines[0]}\n${lines[1]}\r\n${lines[2]}\n${lines[3]}`,
      });
      const { code, stdout, stderr } = await client.finish();
      assert.equal(code, 0, stderr);
      assert.deepEqual(
        stdout.split("\n"),
        lines.map((line) => `From Server: ${expectedText(line)}`),
      );
    }),
});

Deno.test({
  name: "tcp client (subprocess): connection refused says to start the server, exit 1",
  permissions: SUBPROCESS,
  fn: async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = listener.addr.port;
    listener.close();
    const { code, stderr } = await Program.start("tcp_client.ts", [
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "x",
    ]).finish();
    assert.equal(code, 1);
    assert.equal(
      stderr.trim(),
      `error: Connection refused by 127.0.0.1:${port}: is the server running on 127.0.0.1:${port}?`,
    );
  },
});

Deno.test({
  name: "tcp client (subprocess): --timeout bounds a server that never replies, exit 1",
  permissions: SUBPROCESS,
  fn: async () => {
    // A listener that accepts (the kernel does it) but never reads or replies.
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = String(listener.addr.port);
    const { code, stderr } = await Program.start("tcp_client.ts", [
      "--host",
      "127.0.0.1",
      "--port",
      port,
      "--timeout",
      "0.5",
      "x",
    ]).finish(5000);
    assert.equal(code, 1);
    assert.equal(
      stderr.trim(),
      `error: Timed out after 0.5 s waiting for 127.0.0.1:${port} (see --timeout)`,
    );
  },
});

for (
  const [args, pattern] of [
    [["--port", "70000", "x"], /--port must be a whole number from 1 to 65535, not "70000"/],
    [["--port", "abc", "x"], /--port must be a whole number from 1 to 65535, not "abc"/],
    [["--nope", "x"], /Unknown option "--nope"/],
  ] as const
) {
  Deno.test({
    name: `tcp client (subprocess): ${args.join(" ")} is a usage error, exit 2`,
    permissions: SUBPROCESS,
    fn: async () => {
      await expectOneLineError("tcp_client.ts", [...args], { code: 2, pattern });
    },
  });
}

Deno.test({
  name: "tcp client (subprocess): without --allow-net it says which flag to add, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    await expectOneLineError("tcp_client.ts", ["x"], { code: 2, pattern: NO_NET_ERROR, flags: [] });
  },
});

Deno.test({
  name: "tcp client (subprocess): an unknown host is a one-line error, exit 1",
  permissions: SUBPROCESS,
  fn: async () => {
    // .invalid never resolves (RFC 2606); the lookup fails without any traffic to it.
    const { code, stderr } = await Program.start("tcp_client.ts", [
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

// --- hostile servers (issue 9) --------------------------------------------

/** Peak resident memory (VmHWM, KB) of a process, read through `cat` (Deno needs --allow-all for /proc). */
async function peakKb(pid: number): Promise<number> {
  const { stdout } = await new Deno.Command("cat", { args: [`/proc/${pid}/status`] }).output();
  // 0 once the process has exited (no status file any more).
  return Number(/VmHWM:\s+(\d+)/.exec(new TextDecoder().decode(stdout))?.[1] ?? 0);
}

Deno.test({
  name:
    "tcp client (subprocess): an endless reply streams out in bounded memory; --timeout ends it",
  permissions: SUBPROCESS,
  fn: async () => {
    const SEND = 64 * 1024 * 1024;
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = String(listener.addr.port);
    const env = Deno.env.toObject();
    delete env.RUST_BACKTRACE;
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        `${ROOT}tcp_client.ts`,
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--timeout",
        "2",
        "endless",
      ],
      clearEnv: true,
      env: { ...env, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Count stdout without keeping it: it is one line of 64 MB.
    let printed = 0;
    let head = "";
    let last = 0;
    const draining = (async () => {
      for await (const chunk of child.stdout) {
        if (head.length < 20) head += new TextDecoder().decode(chunk.subarray(0, 20));
        printed += chunk.length;
        last = chunk[chunk.length - 1];
      }
    })();
    const stderr = new Response(child.stderr).text();
    // The server: reads the request, then sends up to 64 MB and says nothing
    // more. On a loaded machine the client's --timeout can end the exchange
    // before all of it went out: the timeout ends it either way. The
    // client's peak memory is read while it is still running.
    const conn = await listener.accept();
    let peak = 0;
    let sent = 0;
    try {
      await readToEnd(conn);
      const chunk = new Uint8Array(256 * 1024).fill(0x41);
      while (sent < SEND) {
        sent += await conn.write(chunk);
        if (sent % (4 * 1024 * 1024) < chunk.length) peak = Math.max(peak, await peakKb(child.pid));
      }
      peak = Math.max(peak, await peakKb(child.pid)); // it waits for more until --timeout
    } catch {
      // The client timed out and closed the connection mid-stream.
    } finally {
      const { code } = await child.status;
      conn.close();
      await draining;
      console.log(
        `[figures] endless reply: ${(sent / 1e6).toFixed(1)} MB sent, ` +
          `${(printed / 1e6).toFixed(1)} MB printed, client peak memory ` +
          `${(peak / 1024).toFixed(0)} MB, exit ${code}`,
      );
      assert.equal(code, 1);
    }
    assert.equal(
      (await stderr).trim(),
      `error: Timed out after 2 s waiting for 127.0.0.1:${port} (see --timeout)`,
    );
    assert.ok(head.startsWith("From Server: AAAA"), head);
    assert.equal(last, 0x0a, "the cut-off reply ends its line");
    // Streamed as it came: everything the client got, it printed.
    assert.ok(printed >= 4 * 1024 * 1024, `only ${printed} bytes printed`);
    assert.ok(peak > 0, "the client's memory was read while it ran");
    assert.ok(peak < 90 * 1024, `the client's memory peaked at ${peak} KB`);
  },
});

Deno.test({
  name: "tcp client: exchangeTcp caps the reply it keeps; onReply takes it piece by piece",
  permissions: NET,
  fn: async () => {
    const reply = new Uint8Array(2 * 1024 * 1024).fill(0x62);
    const answer = (conn: Deno.Conn) => writeAll(conn, reply);
    await withReadingStub(answer, async (port) => {
      await assert.rejects(
        exchangeTcp({ hostname: "127.0.0.1", port, sentence: "x", maxReplyBytes: 1024 * 1024 }),
        ReplyTooLongError,
      );
    });
    await withReadingStub(answer, async (port) => {
      let received = 0;
      const kept = await exchangeTcp({
        hostname: "127.0.0.1",
        port,
        sentence: "x",
        maxReplyBytes: 1024,
        onReply: (text) => {
          received += text.length;
        },
      });
      assert.equal(kept, "");
      assert.equal(received, reply.length);
    });
  },
});

Deno.test({
  name: "tcp client (subprocess): a grant without 127.0.0.1 names it and the grant to add, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    // The client tries 127.0.0.1 first: not granted, it stops there, no traffic.
    const line = await expectOneLineError("tcp_client.ts", ["--port", "12000", "x"], {
      code: 2,
      pattern: /^error: Network access to 127\.0\.0\.1:12000 was not granted/,
      flags: ["--allow-net=[::1]:12000"],
    });
    assert.equal(
      line,
      "error: Network access to 127.0.0.1:12000 was not granted: " +
        "add it to --allow-net (--allow-net='127.0.0.1:12000,[::1]:12000')",
    );
  },
});
