/**
 * The grading harness's own parts: process groups, readiness, the fixed
 * port, the configuration, the comparisons and the proxies.
 */
import assert from "node:assert/strict";
import {
  ConfigError,
  fillTemplate,
  GRADING_VARIABLES,
  loadConfig,
  usesPortPlaceholder,
} from "./grading/config.ts";
import { indexOfBytes, outputDiff, replyDiff, replyMatches } from "./grading/compare.ts";
import { portBecomesFree, sleep, tcpRequest } from "./grading/net.ts";
import { ProgramProcess, shellQuote } from "./grading/process.ts";
import { seededRandom, startSplitProxy } from "./grading/proxies.ts";
import { RoleRunner } from "./grading/runner.ts";
import { portHolders } from "./grading/sockets.ts";
import { removeDir, reserveFixedPort, ROOT, SUBPROCESS, tempDir, utf8 } from "./helpers.ts";

const TEXTBOOK = `${ROOT}tests/fixtures/textbook/`;

Deno.test({
  name: "grading kit: stands on its own: no file in tests/grading/ imports from outside it",
  permissions: SUBPROCESS,
  fn: async () => {
    // The kit is a product: the tests import from it, never the other way
    // round, and it does not depend on this project's programs. Only the
    // runtime's node: modules and npm: packages pinned in deno.json may come
    // from elsewhere. `deno info` follows every import, static or dynamic.
    const kit = new URL("./grading/", import.meta.url);
    const files = [...Deno.readDirSync(kit)]
      .filter((entry) => entry.isFile && entry.name.endsWith(".ts"))
      .map((entry) => new URL(entry.name, kit).href)
      .sort();
    assert.ok(files.length >= 10, `only ${files.length} files in ${kit}`);
    const outside = await Promise.all(files.map(async (file) => {
      const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["info", "--json", file],
        cwd: ROOT,
      }).output();
      assert.ok(success, new TextDecoder().decode(stderr));
      const graph = JSON.parse(new TextDecoder().decode(stdout));
      return (graph.modules as { specifier: string; kind?: string }[])
        .filter(({ specifier, kind }) =>
          !(kind === "node" || kind === "npm" || /^(node|npm):/.test(specifier)) &&
          !specifier.startsWith(kit.href)
        )
        .map(({ specifier }) => `${file.slice(kit.href.length)} -> ${specifier}`);
    }));
    assert.deepEqual(outside.flat(), []);
  },
});

/**
 * The process group ids of every live process on the machine. Killed
 * processes that init has not reaped yet (zombies, state Z) do not count.
 */
async function processGroups(): Promise<number[]> {
  const { stdout } = await new Deno.Command("ps", { args: ["-eo", "pgid=,stat="] }).output();
  return new TextDecoder().decode(stdout).split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter(([pgid, stat]) => pgid && !stat?.startsWith("Z"))
    .map(([pgid]) => Number(pgid));
}

Deno.test({
  name: "grading harness: stop() kills the program and everything it started",
  permissions: SUBPROCESS,
  fn: async () => {
    const program = ProgramProcess.spawn({ command: "sleep 30 & sleep 31 & echo started; wait" });
    assert.ok(await program.waitUntil(() => program.stdoutText().includes("started"), 5000));
    assert.ok((await processGroups()).filter((g) => g === program.pid).length >= 3);
    await program.stop();
    assert.equal(program.describeExit(), "was killed by SIGKILL");
    // The shell was killed with its two children: nothing is left in the group.
    assert.deepEqual((await processGroups()).filter((g) => g === program.pid), []);
  },
});

Deno.test({
  name: "grading harness: input is written to stdin and output collected as bytes",
  permissions: SUBPROCESS,
  fn: async () => {
    await using program = ProgramProcess.spawn({ command: "cat", input: utf8("ä€\n") });
    await program.exited;
    await program.drain(2000);
    assert.deepEqual(program.stdoutBytes(), utf8("ä€\n"));
    assert.equal(program.describeExit(), "exited with code 0");
  },
});

Deno.test({
  name: "grading harness: a server that exits before it is ready fails with its output",
  permissions: SUBPROCESS,
  fn: async () => {
    const config = loadConfig({
      env: { TCP_SERVER: "echo cannot bind {port} >&2; exit 3", GRADE_ROLES: "tcp_server" },
    });
    await using runner = new RoleRunner({ role: "tcp_server", config });
    const result = await runner.run(runner.checks[0]);
    assert.equal(result.passed, false);
    assert.match(result.output, /exited with code 3 before it was ready/);
    assert.match(result.output, /--- its stderr\ncannot bind \d+/);
    assert.match(result.output, /^Hint: /m);
  },
});

Deno.test({
  name: "grading harness: a server that is never ready fails at the deadline, and is killed",
  permissions: SUBPROCESS,
  fn: async () => {
    const config = loadConfig({
      env: { UDP_SERVER: "sleep 30 # {port}", GRADE_READY_DEADLINE: "0.3" },
    });
    await using runner = new RoleRunner({ role: "udp_server", config });
    const started = performance.now();
    const result = await runner.run(runner.checks[0]);
    assert.ok(performance.now() - started < 3000);
    assert.equal(result.passed, false);
    // Nothing was sent to it: readiness is read from the kernel's socket tables.
    assert.match(
      result.output,
      /was not ready: within 0\.3 s no process of it was bound on UDP port \d+/,
    );
    // The other checks do not wait for the deadline again.
    const next = await runner.run(runner.checks[1]);
    assert.ok(next.ms < 200);
    assert.match(next.output, /^not run: the server under test was not ready in an earlier check/);
  },
});

Deno.test({
  name: "grading harness: a fixed port held by another program voids the grade, and names it",
  permissions: SUBPROCESS,
  fn: async () => {
    using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = taken.addr.port;
    const env = {
      TCP_SERVER: `python3 ${shellQuote(`${TEXTBOOK}TCPServer.py`)}`,
      TCP_CLIENT: `python3 ${shellQuote(`${TEXTBOOK}TCPClient.py`)}`,
      GRADE_TCP_PORT: String(port),
    };
    const config = loadConfig({ env });
    for (const role of ["tcp_server", "tcp_client"] as const) {
      await using runner = new RoleRunner({ role, config });
      assert.equal(runner.shared, role === "tcp_server");
      const result = await runner.run(runner.checks[0]);
      assert.equal(result.passed, false);
      assert.equal(result.void, true);
      // This test process holds the port: it is named, with its pid.
      assert.match(
        result.output,
        new RegExp(
          `^The grade is void: port ${port} \\(TCP\\) is taken by another program: ` +
            `\\S*deno.* \\(pid ${Deno.pid}\\), so `,
        ),
      );
      assert.match(result.output, /or put \{port\} in TCP_/);
      // The other checks are not run: the grade as a whole is void.
      const next = await runner.run(runner.checks[1]);
      assert.equal(next.void, true);
      assert.match(next.output, /^The grade is void: not run: /);
    }
  },
});

Deno.test({
  name: "grading harness: a void grade is no score: deno task grade exits 3 and says why",
  permissions: SUBPROCESS,
  fn: async () => {
    const taken = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    try {
      await gradeWithPortTaken((taken.addr as Deno.NetAddr).port);
    } finally {
      taken.close();
    }
  },
});

/** Runs `deno task grade`'s script on the textbook UDP server, its fixed port held by us. */
async function gradeWithPortTaken(port: number) {
  const env = Deno.env.toObject();
  for (const name of GRADING_VARIABLES) delete env[name];
  const { code, stdout } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tests/grading/grade.ts`, "--output", "-"],
    cwd: ROOT,
    clearEnv: true,
    env: {
      ...env,
      NO_COLOR: "1",
      UDP_SERVER: `python3 ${shellQuote(`${TEXTBOOK}UDPServer.py`)}`,
      UDP_SERVER_PORT: String(port),
    },
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  assert.equal(code, 3);
  const json = JSON.parse(new TextDecoder().decode(stdout));
  assert.deepEqual(json.tests, []);
  assert.equal(json.score, 0);
  assert.match(json.output, /The grade is void: port \d+ \(UDP\) is taken by another program/);
}

Deno.test({
  name: "grading harness: a client without {port} is served on the fixed port (plain and split)",
  permissions: SUBPROCESS,
  fn: async () => {
    using reserved = await reserveFixedPort();
    const port = reserved.port;
    const config = loadConfig({
      env: {
        TCP_CLIENT: `python3 ${shellQuote(`${TEXTBOOK}TCPClient.py`)} localhost ${port}`,
        GRADE_FIXED_PORT: String(port),
      },
    });
    await using runner = new RoleRunner({ role: "tcp_client", config });
    const [basic, split] = ["basic", "split"].map((id) => runner.checks.find((c) => c.id === id)!);
    const passed = await runner.run(basic);
    assert.equal(passed.passed, true, passed.output);
    const failed = await runner.run(split);
    assert.equal(failed.passed, false);
    // One recv(1024) gets the first byte or, on a busy machine, the first few.
    const agrees = /the closest match in the output agrees with the first (\d+) of (\d+) /
      .exec(failed.output);
    assert.ok(agrees, failed.output);
    assert.ok(Number(agrees[1]) < Number(agrees[2]), failed.output);
    assert.match(failed.output, /the proxy delivered \d+ bytes one at a time over 1 connection/);
  },
});

Deno.test({
  name: "grading harness: no server check leaves a connection without a byte",
  permissions: SUBPROCESS,
  fn: async () => {
    // Such a connection crashes a server that fails on an empty read, and
    // the next check would be blamed for it, or not, as the timing went.
    const dir = await tempDir();
    try {
      const log = `${dir}/deaths.log`;
      const fixture = `${ROOT}tests/fixtures/tcp_server_dies_on_empty.py`;
      const config = loadConfig({
        env: { TCP_SERVER: `python3 ${shellQuote(fixture)} {host} {port} ${shellQuote(log)}` },
      });
      await using runner = new RoleRunner({ role: "tcp_server", config });
      const results = await runner.runAll();
      assert.ok(results.length >= 10, `only ${results.length} checks`);
      const failed = results.filter((result) => !result.passed);
      assert.deepEqual(failed.map((result) => `${result.id}: ${result.output}`), []);
      const deaths = await Deno.readTextFile(log).catch(() => "");
      assert.equal(deaths, "");
    } finally {
      await removeDir(dir);
    }
  },
});

Deno.test({
  name: "grading harness: the server checks leave no TIME_WAIT on a fixed port (textbook server)",
  permissions: SUBPROCESS,
  fn: async () => {
    // The textbook server closes first and sets no SO_REUSEADDR: a TIME_WAIT
    // on its port would keep it, and the kit's own server for the client
    // checks that follow, from binding the port for up to a minute.
    using reserved = await reserveFixedPort();
    const config = loadConfig({
      env: {
        TCP_SERVER: `python3 ${shellQuote(`${TEXTBOOK}TCPServer.py`)} {host} ${reserved.port}`,
        GRADE_FIXED_PORT: String(reserved.port),
      },
    });
    await using runner = new RoleRunner({ role: "tcp_server", config });
    const results = await runner.runAll();
    assert.deepEqual(
      results.filter((result) => !result.passed).map((result) => result.id),
      ["long1k", "long2k", "split", "concurrent", "invalid"],
    );
    // A listener just closed can hold its port a moment longer; a TIME_WAIT holds it a minute.
    if (!await portBecomesFree("tcp", reserved.port)) {
      const holders = await portHolders("tcp", reserved.port);
      assert.fail(
        `port ${reserved.port} is still taken after the checks: ` +
          JSON.stringify(holders?.entries.map((entry) => entry.state)),
      );
    }
  },
});

Deno.test({
  name: "grading harness: a request stalled past its half-close delay leaves no TIME_WAIT",
  permissions: SUBPROCESS,
  fn: async () => {
    // Like the textbook's, this server replies and closes without waiting
    // for end of stream, and sets no SO_REUSEADDR; it replies after 50 ms.
    // The kit half-closes after a delay of 100 ms, unless the server has
    // closed by then. Here this process stalls (as on a loaded machine) from
    // 20 ms to 170 ms: the server's close arrives and the delay passes
    // meanwhile, and the timer runs before the close is read.
    using reserved = await reserveFixedPort();
    const port = reserved.port;
    const script = "import socket, sys, time\n" +
      "s = socket.socket()\n" +
      "s.bind(('127.0.0.1', int(sys.argv[1])))\n" +
      "s.listen(5)\n" +
      "print('ready', flush=True)\n" +
      "while True:\n" +
      "    c, _ = s.accept()\n" +
      "    data = c.recv(1024)\n" +
      "    time.sleep(0.05)\n" +
      "    c.send(data.upper())\n" +
      "    c.close()\n";
    await using server = ProgramProcess.spawn({
      command: `exec python3 -c ${shellQuote(script)} ${port}`,
    });
    assert.ok(await server.waitUntil(() => server.stdoutText().includes("ready"), 5000));
    for (let i = 0; i < 5; i++) {
      const request = tcpRequest({
        address: { hostname: "127.0.0.1", port },
        chunks: [utf8("hello")],
        ms: 3000,
        halfCloseDelayMs: 100,
      });
      await sleep(20);
      for (const until = performance.now() + 150; performance.now() < until;) {
        // Stalled.
      }
      const outcome = await request;
      assert.equal(new TextDecoder().decode(outcome.data), "HELLO");
    }
    const holders = await portHolders("tcp", port);
    const states = holders?.entries.map((entry) => entry.state);
    assert.equal(states?.includes("time_wait") ?? false, false, JSON.stringify(states));
  },
});

Deno.test({
  name: "grading harness: a one-recv() server scheduled late still fails the split checks",
  permissions: SUBPROCESS,
  fn: async () => {
    // The server sleeps 0.3 s before each recv(), as on a loaded machine: by
    // then a message written a byte at a time, a few ms apart, has arrived
    // whole. The kit waits until the first byte is read before it sends the
    // next, so that recv() still gets a piece.
    const late = (fixture: string) =>
      `python3 ${shellQuote(`${ROOT}tests/fixtures/${fixture}`)} {host} {port} 0.3`;
    async function run(role: "tcp_server", id: string, env: Record<string, string>) {
      await using runner = new RoleRunner({ role, config: loadConfig({ env }) });
      return await runner.run(runner.checks.find((check) => check.id === id)!);
    }
    const split = await run("tcp_server", "split", {
      TCP_SERVER: late("tcp_server_single_recv.py"),
    });
    assert.equal(split.passed, false, split.output);
    assert.match(split.output, /the reply differs at byte 1 \(got 1 bytes/);
    const session = await run("tcp_server", "session_split", {
      TCP_SERVER: late("session/tcp_server_one_recv.py"),
      GRADE_ASSIGNMENT: "session",
    });
    assert.equal(session.passed, false, session.output);
    assert.match(
      session.output,
      /got "Your data was 1 bytes"; the server took one recv\(\) as one/,
    );
  },
});

Deno.test({
  name: "grading harness: a client's deadline counts from its first request, not from its start",
  permissions: SUBPROCESS,
  fn: async () => {
    // A slow start (a JVM, a loaded grading machine) stands in as `sleep 1.5`.
    const slowStart = (fixture: string) =>
      `sleep 1.5 && exec python3 ${shellQuote(`${ROOT}tests/fixtures/${fixture}`)} {host} {port}`;
    async function noReply(env: Record<string, string>) {
      const config = loadConfig({ env: { GRADE_CLIENT_DEADLINE: "1", ...env } });
      await using runner = new RoleRunner({ role: "udp_client", config });
      return await runner.run(runner.checks.find((check) => check.id === "no_reply")!);
    }
    // Three tries of 0.5 s after a 1.5 s start: it gives up 1.5 s after its first request,
    // within a 2 s deadline, and 3 s after it started, past it.
    const patient = await noReply({
      UDP_CLIENT: slowStart("good/udp_client.py"),
      GRADE_CLIENT_DEADLINE: "2",
    });
    assert.equal(patient.passed, true, patient.output);
    assert.match(patient.output, /the client exited with code 1 after (\d+) ms/);
    assert.ok(Number(/after (\d+) ms/.exec(patient.output)![1]) > 2000, patient.output);
    // No timeout at all: killed 1 s after its request, and told so.
    const hangs = await noReply({ UDP_CLIENT: slowStart("udp_client_no_timeout.py") });
    assert.equal(hangs.passed, false);
    assert.match(
      hangs.output,
      /the client was still running 1 s after it first reached the server \(1\d{3} ms after it started\) and was killed/,
    );
    // A client that never sends is stopped at the longer of the two deadlines.
    const silent = await noReply({ UDP_CLIENT: "sleep 30 # {port}", GRADE_READY_DEADLINE: "0.5" });
    assert.equal(silent.passed, false);
    assert.match(silent.output, /the client reached no server in 1 s and was killed/);
  },
});

Deno.test({
  name: "grading harness: the configuration reads templates, roles and deadlines",
  fn: () => {
    const config = loadConfig({
      env: {
        TCP_SERVER: "python3 s.py {host} {port}",
        GRADE_ROLES: "TCP_SERVER, udp_client",
        GRADE_CLIENT_DEADLINE: "1.5",
        INIT_CWD: "/somewhere",
      },
    });
    assert.deepEqual(config.roles, ["udp_client", "tcp_server"]);
    assert.deepEqual(config.submitted, ["tcp_server"]);
    assert.equal(config.templates.tcp_server, "python3 s.py {host} {port}");
    assert.match(config.templates.udp_client, /udp_client\.ts'? --host \{host\} --port \{port\}/);
    assert.equal(config.clientDeadlineMs, 1500);
    assert.equal(config.fixedPorts.tcp_server, 12000);
    // Fixed ports: a role's own variable, else its transport's, else GRADE_FIXED_PORT.
    const ports = loadConfig({
      env: { GRADE_FIXED_PORT: "5000", GRADE_UDP_PORT: "6000", TCP_CLIENT_PORT: "7000" },
    }).fixedPorts;
    assert.deepEqual(ports, {
      udp_server: 6000,
      udp_client: 6000,
      tcp_server: 5000,
      tcp_client: 7000,
    });
    assert.throws(
      () => loadConfig({ env: { GRADE_TCP_PORT: "12000.5" } }),
      /GRADE_TCP_PORT must be a whole number from 1 to 65535, not "12000\.5"/,
    );
    assert.equal(config.cwd, "/somewhere");
    // Without GRADE_ROLES: all four for deno test, only those given for the grade.
    assert.equal(loadConfig({ env: { TCP_SERVER: "x" } }).roles.length, 4);
    assert.deepEqual(loadConfig({ env: { TCP_SERVER: "x" }, onlySubmitted: true }).roles, [
      "tcp_server",
    ]);
    assert.equal(loadConfig({ env: {}, onlySubmitted: true }).roles.length, 4);
    assert.throws(
      () => loadConfig({ env: { GRADE_ROLES: "web_server" } }),
      (error: Error) =>
        error instanceof ConfigError && /unknown role "web_server"/.test(error.message),
    );
    assert.throws(
      () => loadConfig({ env: { GRADE_READY_DEADLINE: "soon" } }),
      /GRADE_READY_DEADLINE must be a number from 0\.1 to 600, not "soon"/,
    );
    // GRADE_SERVICE: the default is the uppercase app, exactly as before.
    assert.equal(config.service, "upper");
    assert.doesNotMatch(config.templates.udp_client, /--service/);
    const counting = loadConfig({ env: { GRADE_SERVICE: "count-s", TCP_SERVER: "x {port}" } });
    assert.equal(counting.service, "count-s");
    assert.match(counting.templates.udp_server, / --service count-s$/);
    assert.equal(counting.templates.tcp_server, "x {port}"); // a student's command is theirs
    assert.throws(
      () => loadConfig({ env: { GRADE_SERVICE: "lower" } }),
      /GRADE_SERVICE must be upper or count-s, not "lower"/,
    );
    assert.equal(usesPortPlaceholder("python3 TCPServer.py"), false);
    assert.equal(
      fillTemplate("x {host} {port} {port}", { host: "::1", port: 5 }),
      "x ::1 5 5",
    );
    assert.equal(shellQuote("it's"), `'it'\\''s'`);
  },
});

Deno.test({
  name: "grading harness: replies match exactly (one trailing line end allowed), with a diff",
  fn: () => {
    assert.ok(replyMatches(utf8("HI"), utf8("HI")));
    assert.ok(replyMatches(utf8("HI\n"), utf8("HI")));
    assert.ok(replyMatches(utf8("HI\r\n"), utf8("HI")));
    assert.ok(!replyMatches(utf8("HI\n\n"), utf8("HI")));
    assert.ok(!replyMatches(utf8("H"), utf8("HI")));
    assert.equal(
      replyDiff(utf8("\xe4"), utf8("\xc4")),
      "the reply differs at byte 1 (got 2 bytes, want 2)\n  got:  \\xc3\\xa4\n  want: \\xc3\\x84",
    );
    assert.equal(indexOfBytes(utf8("From Server:  HI\n"), utf8("HI")), 14);
    assert.equal(indexOfBytes(utf8("H"), utf8("HI")), -1);
    assert.equal(
      outputDiff(utf8("Input:From Server: HELL\n"), utf8("HELLO")),
      "the closest match in the output agrees with the first 4 of 5 bytes of the reply, " +
        "then differs:\n  got:  HELL\\n\n  want: HELLO",
    );
    assert.match(outputDiff(utf8("nothing"), utf8("XYZ")), /^no part of the expected reply/);
  },
});

Deno.test({
  name: "grading harness: the lossy proxy's seed gives the same losses every run",
  fn: () => {
    const a = seededRandom(2024);
    const b = seededRandom(2024);
    const first = Array.from({ length: 20 }, () => a());
    assert.deepEqual(first, Array.from({ length: 20 }, () => b()));
    assert.ok(first.every((x) => x >= 0 && x < 1));
    assert.notDeepEqual(first, Array.from({ length: 20 }, seededRandom(7)));
  },
});

Deno.test({
  name: "grading harness: the split proxy delivers one byte per read and passes the end on",
  fn: async () => {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const reads: number[] = [];
    const served = (async () => {
      using conn = await listener.accept();
      const buffer = new Uint8Array(1024);
      for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
        reads.push(n);
      }
      await conn.write(utf8("OK"));
    })();
    // 50 ms between bytes, not the default 5: a busy machine then needs a
    // 50 ms scheduling delay before two bytes could arrive in one read.
    const proxy = await startSplitProxy({
      port: 0,
      target: { hostname: "127.0.0.1", port: listener.addr.port },
      gapMs: 50,
    });
    try {
      const outcome = await tcpRequest({
        address: { hostname: "127.0.0.1", port: proxy.port },
        chunks: [utf8("€ab")],
        ms: 3000,
      });
      assert.equal(outcome.end, "eof");
      assert.deepEqual(outcome.data, utf8("OK"));
    } finally {
      await proxy.close();
      await served;
    }
    assert.deepEqual(reads, [1, 1, 1, 1, 1]);
  },
});
