/**
 * The results of one grading run in the formats autograders read:
 *
 * - `gradescope`: Gradescope's results.json (one test per check, score and
 *   max_score in points).
 * - `prairielearn`: PrairieLearn's external grading results.json (a score
 *   from 0 to 1, tests with points, max_points, message and output; a run
 *   that could not grade is `"gradable": false` with `format_errors`).
 * - `exercism`: Exercism's test runner results.json, version 2 (status
 *   pass, fail or error; tests with name, status and message; a run that
 *   could not grade is status `error` with a message).
 *
 * JUnit XML (read by CodeGrade, GitLab and most CI) comes from the test
 * runner itself: `deno test --reporter=junit tests/conformance_test.ts`.
 *
 * Every check is worth one point. A void grade (another program held a fixed
 * port) and a run that could not start (a bad template) are reported in each
 * format's own way of saying "not graded", never as a zero.
 *
 * @module
 */
import { type GradeConfig, ROLE_ENV, ROLE_LABEL } from "./config.ts";
import type { CheckResult } from "./runner.ts";

/** The formats `deno task grade --format` writes. */
export const FORMATS = ["gradescope", "prairielearn", "exercism"] as const;

/** One of {@linkcode FORMATS}. */
export type Format = typeof FORMATS[number];

/** What a grading run produced: check results, or why there are none. */
export type GradeOutcome =
  | { results: CheckResult[]; config: GradeConfig; seconds: number }
  | {
    /** Why the submission was not graded (a void grade, or a setup problem). */
    notGraded: string;
    seconds: number;
  };

/**
 * The results file for `outcome` in `format`, as an object ready for
 * `JSON.stringify`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const json = formatResults("exercism", { notGraded: "TCP_SERVER: no such file", seconds: 0 });
 * assert.deepEqual(json, { version: 2, status: "error", message: "TCP_SERVER: no such file" });
 * ```
 */
export function formatResults(
  format: Format,
  outcome: GradeOutcome,
): GradescopeResults | PrairieLearnResults | ExercismResults {
  if ("notGraded" in outcome) {
    switch (format) {
      case "gradescope":
        return gradescopeNotGraded(outcome.notGraded, outcome.seconds);
      case "prairielearn":
        return prairieLearnNotGraded(outcome.notGraded);
      case "exercism":
        return exercismNotGraded(outcome.notGraded);
    }
  }
  switch (format) {
    case "gradescope":
      return toGradescope(outcome.results, outcome);
    case "prairielearn":
      return toPrairieLearn(outcome.results, outcome);
    case "exercism":
      return toExercism(outcome.results);
  }
}

/**
 * One line per graded role: which program ran.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const config = {
 *   roles: ["tcp_server"],
 *   submitted: ["tcp_server"],
 *   templates: { tcp_server: "python3 TCPServer.py" },
 * } as unknown as Parameters<typeof describeRoles>[0];
 * assert.equal(describeRoles(config), "TCP server: TCP_SERVER=python3 TCPServer.py");
 * ```
 */
export function describeRoles(config: GradeConfig): string {
  return config.roles.map((role) => {
    const source = config.submitted.includes(role)
      ? `${ROLE_ENV[role]}=${config.templates[role]}`
      : "this project's program (no submission given)";
    return `${ROLE_LABEL[role]}: ${source}`;
  }).join("\n");
}

/** Seconds to one decimal. */
function tenths(seconds: number): number {
  return Math.round(seconds * 10) / 10;
}

/** "7 of 9 checks passed." */
function summary(results: CheckResult[]): string {
  return `${results.filter((result) => result.passed).length} of ${results.length} checks passed.`;
}

// ---------------------------------------------------------------------------
// Gradescope
// ---------------------------------------------------------------------------

/** One test in Gradescope's results.json. */
export interface GradescopeTest {
  /** The check, "TCP server: basic ASCII sentence". */
  name: string;
  /** Role number, then check number: "1.2". */
  number: string;
  /** 1 if it passed, else 0. */
  score: number;
  /** Always 1. */
  max_score: number;
  /** Whether it passed. */
  status: "passed" | "failed";
  /** Why it passed or failed: the diff, the program's output, the hint. */
  output: string;
  /** The role and the check id. */
  tags: string[];
  /** Shown to the student at once. */
  visibility: "visible";
}

/** The results.json Gradescope expects. */
export interface GradescopeResults {
  /** Points: the checks passed. */
  score: number;
  /** Seconds the grading took. */
  execution_time: number;
  /** Which programs ran, and how many checks passed (or why none ran). */
  output: string;
  /** The output is plain text. */
  output_format: "text";
  /** Each test's output is plain text. */
  test_output_format: "text";
  /** The autograder's stdout is shown to the student. */
  stdout_visibility: "visible";
  /** The results are shown to the student at once. */
  visibility: "visible";
  /** One per check. */
  tests: GradescopeTest[];
}

/**
 * Turns check results into Gradescope's format: one point per check,
 * numbered role by role ("1.1", "1.2", "2.1").
 *
 * @example
 * ```ts ignore
 * // ignore: runRoles runs the programs; tests/grading_formats_test.ts asserts the shape.
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
    execution_time: tenths(seconds),
    output: `${describeRoles(config)}\n${summary(results)}`,
    output_format: "text",
    test_output_format: "text",
    stdout_visibility: "visible",
    visibility: "visible",
    tests,
  };
}

/** Gradescope has no "not graded": no tests, and the reason as the output. */
function gradescopeNotGraded(message: string, seconds: number): GradescopeResults {
  return {
    score: 0,
    execution_time: tenths(seconds),
    output: message,
    output_format: "text",
    test_output_format: "text",
    stdout_visibility: "visible",
    visibility: "visible",
    tests: [],
  };
}

// ---------------------------------------------------------------------------
// PrairieLearn
// ---------------------------------------------------------------------------

/** One test in PrairieLearn's results.json. */
export interface PrairieLearnTest {
  /** The check, "TCP server: basic ASCII sentence". */
  name: string;
  /** The role and check, "tcp_server basic". */
  description: string;
  /** 1 if it passed, else 0. */
  points: number;
  /** Always 1. */
  max_points: number;
  /** The first line of the check's report: why it passed or failed. */
  message: string;
  /** The whole report: the diff, the program's output, the hint. */
  output: string;
}

/** PrairieLearn's external grading results.json. */
export type PrairieLearnResults =
  | {
    gradable: true;
    /** From 0 to 1: the fraction of checks passed. */
    score: number;
    message: string;
    output: string;
    tests: PrairieLearnTest[];
  }
  | {
    /** Not gradable: no points given or taken, and no attempt used up. */
    gradable: false;
    format_errors: string[];
    message: string;
  };

/**
 * Turns check results into PrairieLearn's format: a score from 0 to 1, one
 * point per check.
 *
 * @example
 * ```ts ignore
 * // ignore: runRoles runs the programs; tests/grading_formats_test.ts asserts the shape.
 * const json = toPrairieLearn(await runRoles(config), { config, seconds: 12 });
 * console.log(json.score); // 0.75
 * ```
 */
export function toPrairieLearn(
  results: CheckResult[],
  { config }: { config: GradeConfig },
): PrairieLearnResults {
  const tests = results.map((result): PrairieLearnTest => ({
    name: result.name,
    description: `${result.role} ${result.id}`,
    points: result.passed ? 1 : 0,
    max_points: 1,
    message: result.output.split("\n")[0],
    output: result.output,
  }));
  const points = tests.reduce((sum, test) => sum + test.points, 0);
  return {
    gradable: true,
    score: tests.length === 0 ? 0 : points / tests.length,
    message: summary(results),
    output: describeRoles(config),
    tests,
  };
}

function prairieLearnNotGraded(message: string): PrairieLearnResults {
  return { gradable: false, format_errors: [message], message };
}

// ---------------------------------------------------------------------------
// Exercism
// ---------------------------------------------------------------------------

/** One test in Exercism's results.json (version 2). */
export interface ExercismTest {
  /** The check, "TCP server: basic ASCII sentence". */
  name: string;
  /** Whether it passed. */
  status: "pass" | "fail";
  /** Why it failed (the diff, the program's output, the hint); absent when it passed. */
  message?: string;
}

/** Exercism's test runner results.json, version 2. */
export type ExercismResults =
  | { version: 2; status: "pass" | "fail"; tests: ExercismTest[] }
  | {
    version: 2;
    /** No check could run. */
    status: "error";
    message: string;
  };

/** Exercism's limit on the top-level message. */
const EXERCISM_MESSAGE_MAX = 65535;

/**
 * Turns check results into Exercism's format, version 2: pass when every
 * check passed, else fail; a failed check's report is its message.
 *
 * @example
 * ```ts ignore
 * // ignore: runRoles runs the programs; tests/grading_formats_test.ts asserts the shape.
 * const json = toExercism(await runRoles(config));
 * console.log(json.status); // "fail"
 * ```
 */
export function toExercism(results: CheckResult[]): ExercismResults {
  const tests = results.map((result): ExercismTest =>
    result.passed
      ? { name: result.name, status: "pass" }
      : { name: result.name, status: "fail", message: result.output }
  );
  const status = tests.every((test) => test.status === "pass") ? "pass" : "fail";
  return { version: 2, status, tests };
}

function exercismNotGraded(message: string): ExercismResults {
  const cut = message.length > EXERCISM_MESSAGE_MAX
    ? `${message.slice(0, EXERCISM_MESSAGE_MAX - 20)}\n... (cut short)`
    : message;
  return { version: 2, status: "error", message: cut };
}
