/**
 * The grading suite must catch real mistakes: it runs against every
 * known-buggy fixture in tests/fixtures/ (and the textbook-faithful
 * programs in tests/fixtures/textbook/) and each must fail exactly the
 * expected checks and pass the rest. Then the suite is run end to end as a
 * grader would: `deno test --reporter=junit` and `deno task grade`'s script,
 * with the environment variables.
 */
import assert from "node:assert/strict";
import {
  type Assignment,
  type GradeConfig,
  GRADING_VARIABLES,
  loadConfig,
  type Role,
  ROLE_ENV,
} from "./grading/config.ts";
import { type CheckId, checksFor } from "./grading/checks.ts";
import type { Service } from "./grading/compare.ts";
import { shellQuote } from "./grading/process.ts";
import { GRADE_COMMAND } from "./grading/grade.ts";
import { type CheckResult, RoleRunner } from "./grading/runner.ts";
import { reserveFixedPort, ROOT, SUBPROCESS, withDeadline } from "./helpers.ts";

/** A program to grade and the checks it must fail. */
interface Fixture {
  file: string;
  role: Role;
  /** The checks it fails; every other check of its role must pass. */
  fails: CheckId[];
  /** Why, in a few words. */
  bug: string;
  /** What some checks' output must say: the real cause, named. */
  says?: Partial<Record<CheckId, RegExp>>;
  /** Its third argument is the port it "hard-codes": a free one, picked by the test. */
  hardcodesPort?: boolean;
  /** The assignment it is graded on (`GRADE_ASSIGNMENT`); default the uppercase app. */
  assignment?: Assignment;
  /** The assignment it is graded for (GRADE_SERVICE); default `upper`. */
  service?: Service;
}

/** Every check of `role`: for fixtures that cannot pass any. */
const every = (role: Role): CheckId[] => checksFor(role).map((check) => check.id);

/** The checks of a fixture's role in its assignment. */
const checksOf = (fixture: Fixture) =>
  checksFor(fixture.role, { assignment: fixture.assignment, service: fixture.service });

const FIXTURES: Fixture[] = [
  {
    file: "udp_server_echo.py",
    role: "udp_server",
    bug: "echoes without uppercasing",
    fails: ["basic", "mixed", "utf8", "long1k", "long2k"],
  },
  {
    file: "udp_server_crash_invalid.py",
    role: "udp_server",
    bug: "strict decode() crashes on invalid UTF-8",
    fails: ["invalid"],
    says: { invalid: /UnicodeDecodeError/ },
  },
  {
    file: "udp_server_one_datagram.py",
    role: "udp_server",
    bug: "answers one datagram and exits (no readiness probe may eat it)",
    fails: ["serves_many"],
    says: { serves_many: /client 2 of 5 got no reply .*exited with code 0/ },
  },
  {
    file: "udp_server_nul_padding.py",
    role: "udp_server",
    bug: "Java/C style: replies padded with NULs to 1024 bytes",
    fails: ["basic", "mixed", "utf8", "long1k", "long2k"],
    says: { basic: /the right text, then 1013 NUL byte\(s\).*sizeof\(buffer\)/ },
  },
  {
    file: "tcp_server_ascii_only.py",
    role: "tcp_server",
    bug: "bytes.upper() uppercases ASCII only",
    fails: ["utf8"],
  },
  {
    file: "tcp_server_single_recv.py",
    role: "tcp_server",
    bug: "a single recv(1024) is taken as the message",
    fails: ["long1k", "long2k", "split"],
  },
  {
    file: "tcp_server_iterative.py",
    role: "tcp_server",
    bug: "serves one client at a time",
    fails: ["concurrent"],
  },
  {
    file: "tcp_server_split_decode.ts",
    role: "tcp_server",
    bug: "decodes each read separately",
    fails: ["split"],
  },
  {
    file: "tcp_server_crash_invalid.ts",
    role: "tcp_server",
    bug: "a fatal decoder's error ends the server",
    fails: ["invalid"],
  },
  {
    file: "tcp_server_close_before_reply.py",
    role: "tcp_server",
    bug: "closes the connection before replying",
    fails: every("tcp_server"),
    says: { closes: /closed the connection without replying/ },
  },
  {
    file: "tcp_server_java_textbook.py",
    role: "tcp_server",
    bug: "Java textbook: iterative, one readLine(), never closes, dies on an empty connection",
    fails: ["multiline", "closes", "concurrent"],
    says: {
      multiline: /^only the first line came back/,
      closes: /^the reply was right, but the server never closed the connection/,
    },
  },
  {
    file: "tcp_server_dies_on_empty.py",
    role: "tcp_server",
    bug: "dies on a connection closed without a byte (no check sends one)",
    fails: [],
  },
  {
    file: "tcp_server_never_closes.py",
    role: "tcp_server",
    bug: "replies, then loops on end of stream and never closes",
    fails: ["closes"],
  },
  {
    file: "tcp_server_strips_newlines.py",
    role: "tcp_server",
    bug: "' '.join(sentence.split()) turns newlines into spaces",
    fails: ["multiline"],
    says: { multiline: /^the lines came back without their newlines/ },
  },
  {
    file: "tcp_server_one_client.py",
    role: "tcp_server",
    bug: "serves one client and exits (so it cannot serve a second one at once either)",
    fails: ["serves_many", "concurrent"],
    says: { serves_many: /client [12] of 5 got no reply.*exited with code 0/ },
  },
  {
    file: "tcp_server_ready_line_early.py",
    role: "tcp_server",
    bug: "prints its ready line 0.2 s before it listens",
    fails: [],
  },
  {
    file: "tcp_server_ignores_port.py",
    role: "tcp_server",
    bug: "listens on a hard-coded port instead of {port}",
    fails: every("tcp_server"),
    hardcodesPort: true,
    says: { basic: /was not ready: it listens on TCP \d+ \(0\.0\.0\.0\), not on port \d+/ },
  },
  {
    file: "udp_client_no_timeout.py",
    role: "udp_client",
    bug: "recvfrom() without a timeout",
    fails: ["lossy", "no_reply"],
  },
  {
    file: "udp_client_ascii_decode.py",
    role: "udp_client",
    bug: "decodes the reply as ASCII",
    fails: ["utf8"],
  },
  {
    file: "udp_client_python2.py",
    role: "udp_client",
    bug: "Python 2 code run by python3: exits before sending",
    fails: every("udp_client"),
    says: {
      basic: /Python 2 code run by python3/,
      lossy: /^the client never reached the server/,
      no_reply: /^the client never reached the server/,
    },
  },
  {
    file: "tcp_client_single_read.ts",
    role: "tcp_client",
    bug: "a single 1024-byte read is taken as the reply",
    fails: ["long1k", "long2k", "split"],
  },
  {
    file: "tcp_client_split_decode.py",
    role: "tcp_client",
    bug: "decodes each recv() separately",
    fails: ["split"],
  },
  {
    file: "tcp_client_unknown_host.py",
    role: "tcp_client",
    bug: "a hard-coded server name that does not resolve",
    fails: every("tcp_client"),
    says: {
      basic: /never reached the server[\s\S]*hard-codes its server name/,
      no_reply: /^the client never reached the server/,
    },
  },
  // The textbook's programs, as printed: fine for short ASCII and UTF-8
  // sentences, and known to fail the rest.
  {
    file: "textbook/UDPServer.py",
    role: "udp_server",
    bug: "textbook: recvfrom(2048), strict decode()",
    fails: ["long2k", "invalid"],
  },
  {
    file: "textbook/UDPClient.py",
    role: "udp_client",
    bug: "textbook: recvfrom(2048), no timeout",
    fails: ["long2k", "lossy", "no_reply"],
  },
  {
    file: "textbook/TCPServer.py",
    role: "tcp_server",
    bug: "textbook: iterative, one recv(1024), strict decode()",
    fails: ["long1k", "long2k", "split", "concurrent", "invalid"],
  },
  {
    file: "textbook/TCPClient.py",
    role: "tcp_client",
    bug: "textbook: one recv(1024), no timeout",
    fails: ["long1k", "long2k", "split", "no_reply"],
  },
  // Seed 001's TCP task (GRADE_ASSIGNMENT=session): a correct server and
  // client in Python, and the mistakes the slides' programs make.
  {
    file: "session/tcp_server.py",
    role: "tcp_server",
    assignment: "session",
    bug: "none: a correct session server",
    fails: [],
  },
  {
    file: "session/tcp_server_counts_characters.py",
    role: "tcp_server",
    assignment: "session",
    bug: "session: counts characters, not UTF-8 bytes",
    fails: ["session_bytes"],
    says: {
      session_bytes:
        /"né" \(3 bytes\): expected the reply "Your data was 3 bytes", got "Your data was 2 bytes"/,
    },
  },
  {
    file: "session/tcp_server_one_recv.py",
    role: "tcp_server",
    assignment: "session",
    bug: "session: one recv() taken as one message",
    fails: ["session_two_in_one", "session_split"],
    says: {
      session_two_in_one: /took the whole recv\(\) as one message/,
      session_split: /took one recv\(\) as one message/,
    },
  },
  {
    file: "session/tcp_client.py",
    role: "tcp_client",
    assignment: "session",
    bug: "none: a correct session client",
    fails: [],
  },
  {
    file: "session/tcp_client_one_recv.py",
    role: "tcp_client",
    assignment: "session",
    bug: "session: one recv() taken as one reply",
    fails: ["session_split"],
  },
  // The textbook's suggested modification, graded with GRADE_SERVICE=count-s.
  {
    file: "good/tcp_server_count_s.py",
    role: "tcp_server",
    service: "count-s",
    bug: "none: a correct count-s server",
    fails: [],
  },
  {
    file: "udp_server_count_lowercase.py",
    role: "udp_server",
    service: "count-s",
    bug: "count-s: counts only the lowercase s",
    fails: ["mixed"],
    says: { mixed: /got 1 bytes, want 2\)\n {2}got: {2}7\n {2}want: 11/ },
  },
  {
    file: "tcp_server_count_each_recv.py",
    role: "tcp_server",
    service: "count-s",
    bug: "count-s: a count per recv(), not one for the whole sentence",
    fails: ["long1k", "long2k", "split"],
  },
  // A correct client needs no change for count-s: the reply is found as a number of its own.
  ...(["udp_client", "tcp_client"] as const).map((role) => ({
    file: `good/${role}.py`,
    role,
    service: "count-s" as const,
    bug: "none: a correct client, graded for count-s",
    fails: [],
  })),
  // Correct programs in another language: no false failures.
  ...(["udp_server", "udp_client", "tcp_server", "tcp_client"] as const).map((role) => ({
    file: `good/${role}.py`,
    role,
    bug: "none: a correct program",
    fails: [],
  })),
];

/**
 * Fixtures graded at the same time. Most of a fixture's time is spent
 * waiting (for a hung client's deadline, or an iterative server), so many at
 * once is quickest; but this process runs every proxy and stub, and with all
 * thirty at once on two cores the split proxy's 5 ms gaps stretched past a
 * client's 2 s deadline.
 */
const CONCURRENCY = 12;

/** Checks that wait for a deadline when they fail. */
const SLOW_WHEN_FAILED: CheckId[] = ["concurrent", "closes", "multiline", "lossy", "no_reply"];

/**
 * The Python interpreter itself: a version manager's `python3` shim (pyenv)
 * costs over 100 ms per start, and the meta-test starts Python ~70 times.
 */
const PYTHON = await (async () => {
  try {
    const { stdout } = await new Deno.Command("python3", {
      args: ["-c", "import sys; print(sys.executable)"],
      stdin: "null",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(stdout).trim() || "python3";
  } catch {
    return "python3";
  }
})();

/** The command template that runs a fixture, with {host} and {port} (and more arguments). */
function templateFor(file: string, { port = "{port}", args = [] as string[] } = {}): string {
  const path = shellQuote(`${ROOT}tests/fixtures/${file}`);
  const all = ["{host}", port, ...args].join(" ");
  return file.endsWith(".py")
    ? `${shellQuote(PYTHON)} ${path} ${all}`
    : `${shellQuote(Deno.execPath())} run --no-prompt --allow-net ${path} ${all}`;
}

/**
 * Settings that keep the meta-test short: a hung client is killed after 2 s
 * (the fixtures' own timeouts are at most 1.2 s).
 */
const QUICK = { GRADE_CLIENT_DEADLINE: "2", GRADE_READY_DEADLINE: "10" };

function configFor(fixture: Fixture, hardcodedPort: number): GradeConfig {
  const args = fixture.hardcodesPort ? [String(hardcodedPort)] : [];
  return loadConfig({
    env: {
      ...QUICK,
      [ROLE_ENV[fixture.role]]: templateFor(fixture.file, { args }),
      GRADE_ROLES: fixture.role,
      GRADE_ASSIGNMENT: fixture.assignment ?? "uppercase",
      GRADE_SERVICE: fixture.service ?? "upper",
    },
  });
}

/**
 * Runs `work` on every item, at most `limit` at a time, the heaviest first
 * (so that the longest ones do not start last); the results keep the order.
 */
async function mapLimited<T, R>(
  items: T[],
  { limit, work, weight }: {
    limit: number;
    work: (item: T) => Promise<R>;
    weight: (item: T) => number;
  },
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  const order = [...items.keys()].sort((a, b) => weight(items[b]) - weight(items[a]));
  let next = 0;
  const worker = async () => {
    while (next < order.length) {
      const i = order[next++];
      results[i] = await work(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** Asserts that exactly the fixture's checks failed, and said what they must. */
function assertFails(results: CheckResult[], { fails: expected, says = {} }: Fixture) {
  const failed = results.filter((r) => !r.passed).map((r) => r.id);
  const surprises = results.filter((r) => r.passed === expected.includes(r.id));
  const details = surprises.map((r) =>
    `--- ${r.name}: ${r.passed ? "passed, expected to fail" : "failed, expected to pass"}\n` +
    r.output
  ).join("\n");
  assert.deepEqual(
    [...failed].sort(),
    [...expected].sort(),
    `failed checks differ from the expectation\n${details}`,
  );
  for (const [id, pattern] of Object.entries(says)) {
    const result = results.find((r) => r.id === id);
    assert.match(result?.output ?? "", pattern!, `what the ${id} check says`);
  }
}

Deno.test({
  name: "grading meta-test: the expectation table names only existing checks",
  fn: () => {
    for (const fixture of FIXTURES) {
      const ids = checksOf(fixture).map((check) => check.id);
      for (const id of fixture.fails) assert.ok(ids.includes(id), `${fixture.file}: ${id}`);
    }
    const buggy = FIXTURES.filter((f) => f.fails.length > 0 && !f.file.startsWith("textbook/"));
    assert.ok(buggy.length >= 8, "at least eight known-buggy fixtures");
    for (const role of ["udp_server", "udp_client", "tcp_server", "tcp_client"] as const) {
      assert.ok(FIXTURES.some((f) => f.role === role && f.fails.length === 0), `a good ${role}`);
    }
  },
});

/**
 * The environment for a test's child process: this one's, without the
 * grading variables an instructor may have set (TCP_SERVER=... would make
 * the child grade that program too), plus `extra`.
 */
function childEnv(extra: Record<string, string>): Record<string, string> {
  const env = Deno.env.toObject();
  for (const name of GRADING_VARIABLES) delete env[name];
  return { ...env, ...extra, NO_COLOR: "1" };
}

/** Runs deno with `args` in the project folder, with extra environment variables. */
async function runDeno(args: string[], { env, ms }: { env: Record<string, string>; ms: number }) {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    clearEnv: true,
    env: childEnv(env),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const { code, stdout, stderr } = await withDeadline(child.output(), ms, `deno ${args[0]}`);
    return {
      code,
      stdout: new TextDecoder().decode(stdout),
      stderr: new TextDecoder().decode(stderr),
    };
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    throw error;
  }
}

/** `deno test --reporter=junit` on the suite, grading the textbook UDP server. */
function runJunit() {
  return runDeno([
    "test",
    "--allow-net",
    "--allow-run",
    "--allow-read",
    "--allow-env",
    "--reporter=junit",
    "tests/conformance_test.ts",
  ], {
    env: { ...QUICK, UDP_SERVER: templateFor("textbook/UDPServer.py"), GRADE_ROLES: "udp_server" },
    ms: 30_000,
  });
}

function checkJunit({ code, stdout, stderr }: Awaited<ReturnType<typeof runDeno>>) {
  assert.notEqual(code, 0, "deno test fails when a check fails");
  const cases = [
    ...stdout.matchAll(/<testcase name="([^"]*)"[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g),
  ];
  // Seven checks, then the test that stops the server under test.
  assert.equal(cases.length, 8, `seven UDP server checks and a stop\n${stdout}\n${stderr}`);
  assert.equal(cases[7][1], "UDP server: stop the server under test");
  const failed = cases.filter((m) => m[3]?.includes("<failure")).map((m) => m[1]);
  assert.deepEqual(failed, [
    "UDP server: a 3000-byte line (longer than a 2048-byte recv)",
    "UDP server: invalid UTF-8: the server survives and keeps serving",
  ]);
  assert.match(stdout, /UnicodeDecodeError/, "the failure shows the server's traceback");
}

/**
 * The grade script on the textbook TCP server, with a template without
 * {port}: the fixed port, for which a free port stands in for 12000.
 */
function runGrade(port: number) {
  return runDeno([...GRADE_COMMAND, "--output", "-"], {
    env: {
      ...QUICK,
      TCP_SERVER: templateFor("textbook/TCPServer.py", { port: String(port) }),
      GRADE_FIXED_PORT: String(port),
    },
    ms: 30_000,
  });
}

function checkGrade({ code, stdout, stderr }: Awaited<ReturnType<typeof runDeno>>) {
  assert.equal(code, 0, stderr);
  const json = JSON.parse(stdout);
  assert.equal(json.tests.length, 11, "only the submitted role is graded");
  assert.equal(json.score, 6);
  const failed = json.tests.filter((t: { status: string }) => t.status === "failed")
    .map((t: { tags: string[] }) => t.tags[1]);
  assert.deepEqual(failed, ["long1k", "long2k", "split", "concurrent", "invalid"]);
  for (const test of json.tests) {
    assert.equal(test.max_score, 1);
    assert.equal(typeof test.output, "string");
  }
  assert.match(stderr, /Score: 6\/11/);
}

/** Asserts a settled promise fulfilled, and checks its value. */
function fulfilled<T>(settled: PromiseSettledResult<T>, check: (value: T) => void) {
  if (settled.status === "rejected") throw settled.reason;
  check(settled.value);
}

Deno.test({
  name: "grading meta-test: every fixture fails exactly the expected checks, end to end too",
  permissions: SUBPROCESS,
  fn: async (t) => {
    using reserved = await reserveFixedPort();
    const fixedPort = reserved.port;
    using hardcoded = await reserveFixedPort();
    // Everything at once: the fixtures, and the suite run as a grader runs it.
    const [fixtures, junit, grade] = await Promise.allSettled([
      withDeadline(
        mapLimited(FIXTURES, {
          limit: CONCURRENCY,
          // TCP servers have the most checks; waiting checks cost the most.
          weight: (fixture) =>
            checksOf(fixture).length +
            fixture.fails.filter((id) => SLOW_WHEN_FAILED.includes(id)).length * 4,
          work: (fixture) =>
            new RoleRunner({
              role: fixture.role,
              config: configFor(fixture, hardcoded.port),
            }).runAll(),
        }),
        60_000,
        "grading every fixture",
      ),
      runJunit(),
      runGrade(fixedPort),
    ]);
    for (const [i, fixture] of FIXTURES.entries()) {
      const fails = fixture.fails.length === checksOf(fixture).length
        ? "every check"
        : fixture.fails.join(", ");
      const graded = fixture.service ? ` (GRADE_SERVICE=${fixture.service})` : "";
      await t.step(`${fixture.file}${graded} (${fixture.bug}) fails ${fails}`, () => {
        fulfilled(fixtures, (outcomes) => assertFails(outcomes[i], fixture));
      });
    }
    await t.step("deno test --reporter=junit with UDP_SERVER set grades that program", () => {
      fulfilled(junit, checkJunit);
    });
    await t.step("the grade script writes Gradescope JSON and exits 0 (fixed port)", () => {
      fulfilled(grade, checkGrade);
    });
  },
});
