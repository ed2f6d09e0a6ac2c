/**
 * The session mode (`--session`, seed 001's TCP task) of tcp_server.ts and
 * tcp_client.ts: many newline-framed messages on one connection, each
 * answered "Your data was N bytes" (UTF-8 bytes), "Exit" answered
 * "Disconnect". Tested in-process and as real subprocesses.
 */
import assert from "node:assert/strict";
import { openSession } from "../tcp_client.ts";
import { startSessionServer } from "../tcp_server.ts";
import { loadConfig } from "./grading/config.ts";
import { RoleRunner } from "./grading/runner.ts";
import {
  NET,
  Program,
  readToEnd,
  SUBPROCESS,
  utf8,
  withDeadline,
  withServer,
  withStub,
} from "./helpers.ts";

/** The reply to `message`, worked out from its UTF-8 bytes. */
function bytesReply(message: string): string {
  return `Your data was ${utf8(message).length} bytes`;
}

/** Reads lines from `conn` until `count` have arrived (or the stream ends), within `ms`. */
async function readLines(conn: Deno.Conn, count: number, ms = 3000): Promise<string[]> {
  const decoder = new TextDecoder();
  let text = "";
  const buffer = new Uint8Array(4096);
  await withDeadline(
    (async () => {
      while (text.split("\n").length - 1 < count) {
        const n = await conn.read(buffer);
        if (n === null) break;
        text += decoder.decode(buffer.subarray(0, n), { stream: true });
      }
    })(),
    ms,
    `${count} reply lines`,
  );
  return text.split("\n").slice(0, count);
}

/** Whether anything arrives on `conn` within `ms` (the read is left pending otherwise: close conn after). */
async function arrivesWithin(conn: Deno.Conn, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const quiet = new Promise<false>((resolve) => timer = setTimeout(resolve, ms, false));
  const read = conn.read(new Uint8Array(64)).then(() => true, () => true);
  try {
    return await Promise.race([read, quiet]);
  } finally {
    clearTimeout(timer);
  }
}

// The golden test: the slides' exchange, literal replies and the log in the slides' order.
Deno.test({
  name: "session server: the slides' exchange, with their replies and log lines in order",
  permissions: NET,
  fn: () =>
    withServer(startSessionServer, {}, async (port, log) => {
      await using conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const replies: string[] = [];
      for (const message of ["Hi", "Testing Connection", "Message1", "Exit"]) {
        await conn.write(utf8(`${message}\n`));
        replies.push(...await readLines(conn, 1));
      }
      assert.deepEqual(replies, [
        "Your data was 2 bytes",
        "Your data was 18 bytes",
        "Your data was 8 bytes",
        "Disconnect",
      ]);
      assert.equal((await readToEnd(conn)).length, 0, "the server closes after Disconnect");
      const me = `127.0.0.1:${(conn.localAddr as Deno.NetAddr).port}`;
      assert.deepEqual(log, [
        `The server now is connected to: ${me}`,
        `Socket connects between 127.0.0.1:${port} and ${me}`,
        "Received Message from Client: Hi",
        "Received Message from Client: Testing Connection",
        "Received Message from Client: Message1",
        "Received Message from Client: Exit",
        "Reply sent, Server socket closed",
        `Listening at 127.0.0.1:${port} and [::1]:${port}`,
      ]);
    }),
});

Deno.test({
  name: "session server: N counts UTF-8 bytes, not characters; CRLF ends a line too",
  permissions: NET,
  fn: () =>
    withServer(startSessionServer, {}, async (port) => {
      await using conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const messages = ["né", "grüße 😀 €", "", "中文"];
      await conn.write(utf8(messages.map((m) => `${m}\r\n`).join("")));
      assert.deepEqual(await readLines(conn, messages.length), messages.map(bytesReply));
    }),
});

Deno.test({
  name: "session server: two messages in one write get two replies, in order",
  permissions: NET,
  fn: () =>
    withServer(startSessionServer, {}, async (port) => {
      await using conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.setNoDelay(true);
      await conn.write(utf8("Message1\nMessage two\n")); // one segment: one read on the server
      assert.deepEqual(await readLines(conn, 2), [
        bytesReply("Message1"),
        bytesReply("Message two"),
      ]);
    }),
});

Deno.test({
  name:
    "session server: one message written a byte at a time is one message, answered at its newline",
  permissions: NET,
  fn: () =>
    withServer(startSessionServer, {}, async (port) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        conn.setNoDelay(true);
        const message = "split é 😀"; // multibyte characters cut between writes
        for (const byte of utf8(message)) await conn.write(new Uint8Array([byte]));
        assert.equal(await arrivesWithin(conn, 200), false, "no reply before the newline");
      } finally {
        conn.close(); // ends the pending read too
      }
      // The same on a fresh connection, now with the newline: one reply for the whole message.
      await using again = await Deno.connect({ hostname: "127.0.0.1", port });
      again.setNoDelay(true);
      for (const byte of utf8("split é 😀\n")) await again.write(new Uint8Array([byte]));
      assert.deepEqual(await readLines(again, 1), [bytesReply("split é 😀")]);
    }),
});

Deno.test({
  name: "session server: after one client's Exit the next client is served",
  permissions: NET,
  fn: () =>
    withServer(startSessionServer, {}, async (port, log) => {
      for (let i = 1; i <= 2; i++) {
        await using conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(utf8(`client ${i}\nExit\nnot read\n`));
        assert.deepEqual(await readLines(conn, 2), [bytesReply(`client ${i}`), "Disconnect"]);
        assert.equal((await readToEnd(conn)).length, 0);
      }
      assert.equal(log.filter((line) => line === "Reply sent, Server socket closed").length, 2);
      assert.ok(!log.includes("Received Message from Client: not read"), log.join("\n"));
    }),
});

Deno.test({
  name: "session server: a line over 64 KiB gets an error reply and the connection is closed",
  permissions: NET,
  fn: () =>
    withServer(startSessionServer, {}, async (port, log) => {
      await using conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const writing = conn.write(new Uint8Array(64 * 1024 + 2).fill(0x61)).catch(() => 0);
      const [line] = await readLines(conn, 1);
      await writing;
      assert.equal(line, "Error: message longer than 65536 bytes");
      assert.ok(
        log.includes("Message longer than 65536 bytes, Server socket closed"),
        log.join("\n"),
      );
      // A line of exactly 65536 bytes is still a message.
      await using ok = await Deno.connect({ hostname: "127.0.0.1", port });
      await ok.write(new Uint8Array(64 * 1024).fill(0x62));
      await ok.write(utf8("\n"));
      assert.deepEqual(await readLines(ok, 1), ["Your data was 65536 bytes"]);
    }),
});

Deno.test({
  name: "session server: an idle session is closed; a silent client does not block another",
  permissions: NET,
  fn: () =>
    withServer(startSessionServer, { idleTimeout: 0.5 }, async (port, log) => {
      await using silent = await Deno.connect({ hostname: "127.0.0.1", port });
      await using other = await Deno.connect({ hostname: "127.0.0.1", port });
      await other.write(utf8("still served\n"));
      assert.deepEqual(await readLines(other, 1), [bytesReply("still served")]);
      assert.equal((await withDeadline(readToEnd(silent), 3000, "the idle close")).length, 0);
      assert.ok(log.includes("Client idle for 0.5 s, Server socket closed"), log.join("\n"));
    }),
});

Deno.test({
  name:
    "session server: control characters are escaped in the log; a last line without newline counts",
  permissions: NET,
  fn: () =>
    withServer(startSessionServer, {}, async (port, log) => {
      await using conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(utf8("\x1b[2Jcleared?"));
      await conn.closeWrite();
      assert.deepEqual(await readLines(conn, 1), [bytesReply("\x1b[2Jcleared?")]);
      assert.ok(log.includes("Received Message from Client: \\x1b[2Jcleared?"), log.join("\n"));
      assert.ok(log.includes("Client left without Exit, Server socket closed"), log.join("\n"));
    }),
});

Deno.test({
  name: "session client: two replies in one read are two replies; a reply split into bytes is one",
  permissions: NET,
  fn: () =>
    withStub(async (conn) => {
      await readLines(conn, 1); // the first message
      conn.setNoDelay(true);
      await conn.write(utf8("first reply\nsecond reply\n")); // both at once
      await readLines(conn, 1); // the second message
      for (const byte of utf8("third: é 😀\n")) await conn.write(new Uint8Array([byte]));
      await readLines(conn, 2);
    }, async (port) => {
      const session = await openSession({ hostname: "127.0.0.1", port, timeout: 3 });
      try {
        assert.equal(await session.send("one"), "first reply");
        assert.equal(await session.send("two"), "second reply"); // already here
        assert.equal(await session.send("three"), "third: é 😀");
      } finally {
        session.close();
      }
    }),
});

Deno.test({
  name: "session client: piped lines, one connection, Exit sent at the end of the input",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("tcp_server.ts", ["--session", "--port", "0"]);
    const port = Number((await server.waitForLine(/^Listening at \S+:(\d+)/))[1]);
    await using client = Program.start("tcp_client.ts", ["--session", "--port", String(port)], {
      input: "Hi\nné 😀\n",
    });
    const { code, stdout, stderr } = await client.finish();
    assert.equal(stderr, "");
    assert.equal(code, 0);
    assert.equal(
      stdout,
      [
        `Received Message from Server: ${bytesReply("Hi")}`,
        `Received Message from Server: ${bytesReply("né 😀")}`,
        "Received Message from Server: Disconnect",
      ].join("\n"),
    );
    await server.waitForLine(/^Reply sent, Server socket closed$/);
    const received = server.stdoutLines.filter((line) => line.startsWith("Received Message"));
    assert.deepEqual(received, [
      "Received Message from Client: Hi",
      "Received Message from Client: né 😀",
      "Received Message from Client: Exit",
    ]);
    server.kill();
    assert.equal((await server.finish()).code, 0);
  },
});

Deno.test({
  name: "session client: typed Exit ends the session; lines after it are not sent",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("tcp_server.ts", ["--session", "--port", "0"]);
    const port = Number((await server.waitForLine(/^Listening at \S+:(\d+)/))[1]);
    await using client = Program.start("tcp_client.ts", ["--session", "--port", String(port)], {
      input: "a\nExit\nnever sent\n",
    });
    const { code, stdout } = await client.finish();
    assert.equal(code, 0);
    assert.equal(
      stdout,
      `Received Message from Server: ${bytesReply("a")}\nReceived Message from Server: Disconnect`,
    );
    await server.waitForLine(/^Reply sent, Server socket closed$/);
    assert.ok(!server.stdoutLines.some((line) => line.includes("never sent")), server.output());
  },
});

Deno.test({
  name: "session client: a server that never replies makes it give up after --timeout",
  permissions: SUBPROCESS,
  fn: () =>
    withStub((conn) => readToEnd(conn).then(() => {}), async (port) => {
      await using client = Program.start(
        "tcp_client.ts",
        ["--session", "--port", String(port), "--timeout", "0.5", "Hi"],
      );
      const { code, stdout, stderr } = await client.finish();
      assert.equal(code, 1);
      assert.equal(stdout, "");
      assert.match(
        stderr,
        /^error: Timed out after 0\.5 s waiting for localhost:\d+ \(see --timeout\)\n$/,
      );
    }),
});

Deno.test({
  name: "session: the grading kit (GRADE_ASSIGNMENT=session) passes this project's programs",
  permissions: SUBPROCESS,
  fn: async () => {
    for (const role of ["tcp_server", "tcp_client"] as const) {
      const config = loadConfig({
        env: { GRADE_ASSIGNMENT: "session", GRADE_ROLES: role, GRADE_READY_DEADLINE: "10" },
      });
      const results = await new RoleRunner({ role, config }).runAll();
      assert.ok(results.length >= 4, `${role}: ${results.length} checks`);
      for (const result of results) assert.ok(result.passed, `${result.name}: ${result.output}`);
    }
  },
});

Deno.test({
  name:
    "session: GRADE_ASSIGNMENT=session grades the TCP roles only; a UDP role or a typo is an error",
  fn: () => {
    assert.deepEqual(loadConfig({ env: { GRADE_ASSIGNMENT: "session" } }).roles, [
      "tcp_server",
      "tcp_client",
    ]);
    assert.match(
      loadConfig({ env: { GRADE_ASSIGNMENT: "session" } }).templates.tcp_server,
      /tcp_server\.ts .*--session$/,
    );
    assert.throws(
      () => loadConfig({ env: { GRADE_ASSIGNMENT: "session", GRADE_ROLES: "udp_server" } }),
      /TCP roles only/,
    );
    assert.throws(
      () => loadConfig({ env: { GRADE_ASSIGNMENT: "sesion" } }),
      /GRADE_ASSIGNMENT must be/,
    );
  },
});
