/**
 * `deno task grade`: runs the grading checks and writes a Gradescope-style
 * results.json (one test per check, with its score, max score and output).
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
import { ConfigError, type GradeConfig, loadConfig, ROLE_ENV, ROLE_LABEL } from "./config.ts";
import { type CheckResult, runRoles } from "./runner.ts";

/** One test in results.json. */
export interface GradescopeTest {
  name: string;
  number: string;
  score: number;
  max_score: number;
  status: "passed" | "failed";
  output: string;
  tags: string[];
  visibility: "visible";
}

/** The results.json an autograder expects. */
export interface GradescopeResults {
  score: number;
  execution_time: number;
  output: string;
  output_format: "text";
  test_output_format: "text";
  stdout_visibility: "visible";
  visibility: "visible";
  tests: GradescopeTest[];
}

/**
 * Turns check results into Gradescope's format: one point per check.
 *
 * @example
 * ```ts
 * const json = toGradescope(await runRoles(config), { config, seconds: 12 });
 * console.log(json.score);
 * ```
 */
export function toGradescope(
  results: CheckResult[],
  { config, seconds }: { config: GradeConfig; seconds: number },
): GradescopeResults {
  const roleNumbers = new Map(config.roles.map((role, i) => [role, i + 1]));
  const counters = new Map<string, number>();
  const tests = results.map((result): GradescopeTest => {
    const count = (counters.get(result.role) ?? 0) + 1;
    counters.set(result.role, count);
    return {
      name: result.name,
      number: `${roleNumbers.get(result.role)}.${count}`,
      score: result.passed ? 1 : 0,
      max_score: 1,
      status: result.passed ? "passed" : "failed",
      output: result.output,
      tags: [result.role, result.id],
      visibility: "visible",
    };
  });
  const score = tests.reduce((sum, test) => sum + test.score, 0);
  return {
    score,
    execution_time: Math.round(seconds * 10) / 10,
    output: `${describeRoles(config)}\n${score} of ${tests.length} checks passed.`,
    output_format: "text",
    test_output_format: "text",
    stdout_visibility: "visible",
    visibility: "visible",
    tests,
  };
}

/** One line per graded role: which program ran. */
function describeRoles(config: GradeConfig): string {
  return config.roles.map((role) => {
    const source = config.submitted.includes(role)
      ? `${ROLE_ENV[role]}=${config.templates[role]}`
      : "this project's program (no submission given)";
    return `${ROLE_LABEL[role]}: ${source}`;
  }).join("\n");
}

/** A results.json that reports a setup problem instead of a grade. */
function setupFailure(message: string, seconds = 0): GradescopeResults {
  return {
    score: 0,
    execution_time: Math.round(seconds * 10) / 10,
    output: message,
    output_format: "text",
    test_output_format: "text",
    stdout_visibility: "visible",
    visibility: "visible",
    tests: [],
  };
}

const USAGE = `Usage: deno task grade [--output PATH]
       deno task grade --class DIR --out OUT [--help for its options]

Runs the grading checks on the programs named by UDP_SERVER, UDP_CLIENT,
TCP_SERVER and TCP_CLIENT (command templates; {host} and {port} are filled in)
and writes a Gradescope-style results.json. Exits 0 whatever the grade;
3 if the grade is void (another program held a fixed port: grade again).

Options:
  --output PATH   where to write the results (default: $GRADE_RESULTS, or
                  results.json in the current folder); - writes them to stdout
  --help          show this help

Environment: GRADE_ROLES, GRADE_FIXED_PORT, GRADE_READY_DEADLINE,
GRADE_CLIENT_DEADLINE (see the README, "Grading student submissions").`;

/**
 * Runs the grade from the command line and resolves to the exit code: 0
 * once results.json is written (whatever the grade), 3 if the grade is void
 * (results.json says why), 1 if it cannot be written, 2 for a usage error.
 *
 * @example
 * ```ts
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
  const env = Deno.env.toObject();
  const base = env.INIT_CWD || Deno.cwd();
  const target = values.output ?? env.GRADE_RESULTS ?? "results.json";
  const toStdout = target === "-";
  // With the results on stdout, the summary goes to stderr.
  const say = toStdout ? console.error : console.log;

  const started = performance.now();
  let json: GradescopeResults;
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
      json = setupFailure(`${describeRoles(config)}\n${voided.output}`, seconds);
      say("No score: the grade is void (see above); fix that and grade again.");
      code = 3;
    } else {
      json = toGradescope(results, { config, seconds });
      say(`Score: ${json.score}/${json.tests.length}`);
    }
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    say(`error: ${error.message}`);
    json = setupFailure(`The grading could not run: ${error.message}`);
  }

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
