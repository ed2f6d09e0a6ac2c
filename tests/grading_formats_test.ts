/**
 * The results formats of `deno task grade --format`: Gradescope,
 * PrairieLearn and Exercism, each asserted field by field, graded and not
 * graded; and the flag itself, end to end.
 */
import assert from "node:assert/strict";
import { GRADING_VARIABLES, loadConfig } from "./grading/config.ts";
import {
  type ExercismResults,
  formatResults,
  type GradescopeResults,
  type PrairieLearnResults,
  toExercism,
  toPrairieLearn,
} from "./grading/formats.ts";
import { toGradescope } from "./grading/grade.ts";
import type { CheckResult } from "./grading/runner.ts";
import { ROOT, SUBPROCESS } from "./helpers.ts";

const CONFIG = loadConfig({
  env: { TCP_SERVER: "python3 TCPServer.py {port}", UDP_CLIENT: "python3 UDPClient.py {port}" },
  onlySubmitted: true,
});

/** A passed check, a failed one (its report on three lines), and one of a second role. */
const RESULTS: CheckResult[] = [
  {
    role: "tcp_server",
    id: "basic",
    name: "TCP server: basic ASCII sentence",
    passed: true,
    output: "the reply was exact (5 bytes)",
    ms: 40,
  },
  {
    role: "tcp_server",
    id: "long1k",
    name: "TCP server: a 1500-byte line",
    passed: false,
    output: "the reply is cut at 1024 bytes\n--- its stdout (empty)\nHint: loop on recv()",
    ms: 300,
  },
  {
    role: "udp_client",
    id: "basic",
    name: "UDP client: basic ASCII sentence",
    passed: true,
    output: "the reply appeared in the client's output (5 bytes)",
    ms: 80,
  },
];

/** The roles in the kit's order (UDP first), whatever the order of the results. */
const ROLES_LINES = "UDP client: UDP_CLIENT=python3 UDPClient.py {port}\n" +
  "TCP server: TCP_SERVER=python3 TCPServer.py {port}";

Deno.test("grading formats: gradescope, field by field", () => {
  const json: GradescopeResults = toGradescope(RESULTS, { config: CONFIG, seconds: 12.34 });
  assert.deepEqual(Object.keys(json).sort(), [
    "execution_time",
    "output",
    "output_format",
    "score",
    "stdout_visibility",
    "test_output_format",
    "tests",
    "visibility",
  ]);
  assert.equal(json.score, 2);
  assert.equal(json.execution_time, 12.3);
  assert.equal(json.output, `${ROLES_LINES}\n2 of 3 checks passed.`);
  assert.equal(json.output_format, "text");
  assert.equal(json.test_output_format, "text");
  assert.equal(json.stdout_visibility, "visible");
  assert.equal(json.visibility, "visible");
  assert.deepEqual(json.tests, [
    {
      name: "TCP server: basic ASCII sentence",
      number: "2.1",
      score: 1,
      max_score: 1,
      status: "passed",
      output: "the reply was exact (5 bytes)",
      tags: ["tcp_server", "basic"],
      visibility: "visible",
    },
    {
      name: "TCP server: a 1500-byte line",
      number: "2.2",
      score: 0,
      max_score: 1,
      status: "failed",
      output: RESULTS[1].output,
      tags: ["tcp_server", "long1k"],
      visibility: "visible",
    },
    {
      name: "UDP client: basic ASCII sentence",
      number: "1.1",
      score: 1,
      max_score: 1,
      status: "passed",
      output: RESULTS[2].output,
      tags: ["udp_client", "basic"],
      visibility: "visible",
    },
  ]);
  // formatResults gives the same for the default format.
  assert.deepEqual(
    formatResults("gradescope", { results: RESULTS, config: CONFIG, seconds: 12.34 }),
    json,
  );
});

Deno.test("grading formats: prairielearn, field by field (score from 0 to 1)", () => {
  const json: PrairieLearnResults = toPrairieLearn(RESULTS, { config: CONFIG });
  assert.deepEqual(json, {
    gradable: true,
    score: 2 / 3,
    message: "2 of 3 checks passed.",
    output: ROLES_LINES,
    tests: [
      {
        name: "TCP server: basic ASCII sentence",
        description: "tcp_server basic",
        points: 1,
        max_points: 1,
        message: "the reply was exact (5 bytes)",
        output: "the reply was exact (5 bytes)",
      },
      {
        name: "TCP server: a 1500-byte line",
        description: "tcp_server long1k",
        points: 0,
        max_points: 1,
        message: "the reply is cut at 1024 bytes",
        output: RESULTS[1].output,
      },
      {
        name: "UDP client: basic ASCII sentence",
        description: "udp_client basic",
        points: 1,
        max_points: 1,
        message: RESULTS[2].output,
        output: RESULTS[2].output,
      },
    ],
  });
  const all = toPrairieLearn([RESULTS[0]], { config: CONFIG });
  assert.equal(all.gradable && all.score, 1);
  const none = toPrairieLearn([RESULTS[1]], { config: CONFIG });
  assert.equal(none.gradable && none.score, 0);
});

Deno.test("grading formats: exercism version 2, field by field", () => {
  const json: ExercismResults = toExercism(RESULTS);
  assert.deepEqual(json, {
    version: 2,
    status: "fail",
    tests: [
      { name: "TCP server: basic ASCII sentence", status: "pass" },
      { name: "TCP server: a 1500-byte line", status: "fail", message: RESULTS[1].output },
      { name: "UDP client: basic ASCII sentence", status: "pass" },
    ],
  });
  assert.deepEqual(toExercism([RESULTS[0], RESULTS[2]]), {
    version: 2,
    status: "pass",
    tests: [
      { name: "TCP server: basic ASCII sentence", status: "pass" },
      { name: "UDP client: basic ASCII sentence", status: "pass" },
    ],
  });
});

Deno.test("grading formats: not graded (void or setup failure) is each format's error form", () => {
  const why = "The grade is void: port 12000 (UDP) is taken by another program: nc -lu 12000";
  const outcome = { notGraded: why, seconds: 2.06 };
  assert.deepEqual(formatResults("gradescope", outcome), {
    score: 0,
    execution_time: 2.1,
    output: why,
    output_format: "text",
    test_output_format: "text",
    stdout_visibility: "visible",
    visibility: "visible",
    tests: [],
  });
  assert.deepEqual(formatResults("prairielearn", outcome), {
    gradable: false,
    format_errors: [why],
    message: why,
  });
  assert.deepEqual(formatResults("exercism", outcome), {
    version: 2,
    status: "error",
    message: why,
  });
  // Exercism takes at most 65535 characters of message.
  const long = formatResults("exercism", { notGraded: "x".repeat(100_000), seconds: 0 });
  assert.ok("version" in long && long.status === "error");
  assert.ok(long.message.length <= 65535, `${long.message.length} characters`);
  assert.match(long.message, /\(cut short\)$/);
});

/** Runs the grade script with `args` and an environment without the grading variables. */
async function grade(args: string[], extraEnv: Record<string, string>) {
  const env = Deno.env.toObject();
  for (const name of GRADING_VARIABLES) delete env[name];
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tests/grading/grade.ts`, ...args],
    cwd: ROOT,
    clearEnv: true,
    env: { ...env, ...extraEnv, NO_COLOR: "1", RUST_BACKTRACE: "0" },
    stdin: "null",
  }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, stdout: text(stdout), stderr: text(stderr) };
}

Deno.test({
  name: "grading formats: --format prairielearn and exercism write their error form end to end",
  permissions: SUBPROCESS,
  fn: async () => {
    // A setup failure (an unknown role) needs no program: the grade cannot run.
    const env = { GRADE_ROLES: "tcp_sever" };
    const [pl, ex] = await Promise.all([
      grade(["--format", "prairielearn", "--output", "-"], env),
      grade(["--format", "exercism", "--output", "-"], env),
    ]);
    assert.equal(pl.code, 0, pl.stderr);
    const plJson = JSON.parse(pl.stdout);
    assert.deepEqual(Object.keys(plJson).sort(), ["format_errors", "gradable", "message"]);
    assert.equal(plJson.gradable, false);
    assert.match(plJson.message, /^The grading could not run: .*tcp_sever/);
    assert.deepEqual(plJson.format_errors, [plJson.message]);
    assert.equal(ex.code, 0, ex.stderr);
    const exJson = JSON.parse(ex.stdout);
    assert.deepEqual(Object.keys(exJson).sort(), ["message", "status", "version"]);
    assert.equal(exJson.version, 2);
    assert.equal(exJson.status, "error");
    assert.equal(exJson.message, plJson.message);
  },
});

Deno.test({
  name: "grading formats: an unknown --format is a one-line usage error; --help names JUnit",
  permissions: SUBPROCESS,
  fn: async () => {
    const bad = await grade(["--format", "moodle", "--output", "-"], {});
    assert.equal(bad.code, 2);
    assert.equal(bad.stdout, "");
    assert.equal(
      bad.stderr,
      'error: Unknown format "moodle": use gradescope, prairielearn, exercism (see --help)\n',
    );
    const help = await grade(["--help"], {});
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--format FORMAT/);
    assert.match(help.stdout, /--reporter=junit/);
  },
});
