/**
 * `deno task grade`: runs the grading checks and writes a results.json (one
 * test per check, with its score, max score and output) in Gradescope's
 * format, or with `--format` in PrairieLearn's or Exercism's (formats.ts).
 * It exits 0 whatever the grade, as autograder runners expect: the grade is
 * in the file, not in the exit code. The one exception is a void grade
 * (exit 3): the submission could not be graded fairly (another program held
 * its fixed port), and results.json says why instead of giving a score.
 *
 * The same environment variables as the test suite select the programs:
 * UDP_SERVER, UDP_CLIENT, TCP_SERVER, TCP_CLIENT (command templates with
 * {host} and {port}). Only the roles given are graded (all four of this
 * project's programs if none is); GRADE_ROLES overrides.
 *
 * ```sh
 * TCP_SERVER='python3 submissions/alice/TCPServer.py {port}' deno task grade --output /autograder/results/results.json
 * ```
 *
 * @module
 */
import { dirname, isAbsolute, resolve } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { ConfigError, loadConfig } from "./config.ts";
import {
  describeRoles,
  type Format,
  formatResults,
  FORMATS,
  type GradeOutcome,
  toGradescope,
} from "./formats.ts";
import { type CheckResult, runRoles } from "./runner.ts";

// The formats live in formats.ts; toGradescope stays importable from here.
export { type GradescopeResults, type GradescopeTest, toGradescope } from "./formats.ts";

/**
 * The arguments to `Deno.execPath()` that run this script as `deno task grade`
 * does, with its grants; the grading options follow.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(GRADE_COMMAND[0], "run");
 * assert.match(GRADE_COMMAND.at(-1)!, /grade\.ts$/);
 * ```
 */
export const GRADE_COMMAND: readonly string[] = [
  "run",
  "--allow-net",
  "--allow-run",
  "--allow-read",
  "--allow-env",
  "--allow-write",
  fileURLToPath(import.meta.url),
];

const USAGE = `Usage: deno task grade [--output PATH] [--format FORMAT]
       deno task grade --class DIR --out OUT [--help for its options]

Runs the grading checks on the programs named by UDP_SERVER, UDP_CLIENT,
TCP_SERVER and TCP_CLIENT (command templates; {host} and {port} are filled in)
and writes a results.json. Exits 0 whatever the grade; 3 if the grade is void
(another program held a fixed port: grade again).

Options:
  --output PATH    where to write the results (default: $GRADE_RESULTS, or
                   results.json in the current folder); - writes them to stdout
  --format FORMAT  gradescope (default): Gradescope's results.json
                   prairielearn: PrairieLearn's external grading results.json
                   exercism: Exercism's test runner results.json (version 2)
  --help           show this help

JUnit XML (CodeGrade, CI): deno test --allow-net --allow-run --allow-read
  --allow-env --reporter=junit --junit-path=junit.xml tests/conformance_test.ts

Environment: GRADE_ROLES, GRADE_FIXED_PORT, GRADE_READY_DEADLINE,
GRADE_CLIENT_DEADLINE (see the README, "Grading student submissions").`;

/**
 * Runs the grade from the command line and resolves to the exit code: 0
 * once results.json is written (whatever the grade), 3 if the grade is void
 * (results.json says why), 1 if it cannot be written, 2 for a usage error.
 *
 * @example
 * ```ts ignore
 * // ignore: it runs every check (seconds) and writes a file; the tests in
 * // tests/grading_formats_test.ts and tests/grading_meta_test.ts run it.
 * const code = await main(["--output", "results.json"]);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  if (args.some((arg) => arg === "--class" || arg.startsWith("--class="))) {
    // A whole class: its own options (see class/main.ts and docs/class_grading.md).
    const { classMain } = await import("./class/main.ts");
    return await classMain(args, { gradescope: toGradescope });
  }
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        output: { type: "string" },
        format: { type: "string", default: "gradescope" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (error) {
    console.error(`error: ${(error as Error).message} (see --help)`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const format = values.format as Format;
  if (!FORMATS.includes(format)) {
    console.error(
      `error: Unknown format "${values.format}": use ${FORMATS.join(", ")} (see --help)`,
    );
    return 2;
  }
  const env = Deno.env.toObject();
  const base = env.INIT_CWD || Deno.cwd();
  const target = values.output ?? env.GRADE_RESULTS ?? "results.json";
  const toStdout = target === "-";
  // With the results on stdout, the summary goes to stderr.
  const say = toStdout ? console.error : console.log;

  const started = performance.now();
  let outcome: GradeOutcome;
  let code = 0;
  try {
    const config = loadConfig({ env, onlySubmitted: true });
    say(describeRoles(config));
    const results = await runRoles(config);
    for (const result of results) printResult(result, say);
    const seconds = (performance.now() - started) / 1000;
    const voided = results.find((result) => result.void);
    if (voided) {
      // No score at all: a zero would look like the student's.
      outcome = { notGraded: `${describeRoles(config)}\n${voided.output}`, seconds };
      say("No score: the grade is void (see above); fix that and grade again.");
      code = 3;
    } else {
      outcome = { results, config, seconds };
      say(`Score: ${results.filter((result) => result.passed).length}/${results.length}`);
    }
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    say(`error: ${error.message}`);
    outcome = { notGraded: `The grading could not run: ${error.message}`, seconds: 0 };
  }
  const json = formatResults(format, outcome);

  const text = JSON.stringify(json, null, 2) + "\n";
  if (toStdout) {
    console.log(text.trimEnd());
    return code;
  }
  const path = isAbsolute(target) ? target : resolve(base, target);
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    await Deno.writeTextFile(path, text);
  } catch (error) {
    console.error(`error: Cannot write ${path}: ${(error as Error).message}`);
    return 1;
  }
  say(`Wrote ${path}`);
  return code;
}

function printResult(result: CheckResult, say: (...data: unknown[]) => void) {
  const seconds = (result.ms / 1000).toFixed(1);
  if (result.passed) {
    say(`%c✓%c ${result.name} (${seconds} s)`, "color: green", "");
  } else if (result.void) {
    say(`%c⊘%c ${result.name} (${seconds} s): not graded`, "color: yellow", "");
    say(result.output.replace(/^/gm, "    "));
  } else {
    say(`%c✗%c ${result.name} (${seconds} s)`, "color: red", "");
    say(result.output.replace(/^/gm, "    "));
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
