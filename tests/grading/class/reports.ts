/**
 * What a class's grading writes: the gradebook (CSV, the shape of
 * otter-grader's final_grades.csv: one row per student, one column per
 * check, then total, max, status and error), a feedback file in Markdown and
 * a Gradescope-style results.json per student, and on request exports for
 * Canvas's grade import and Moodle's offline grading worksheet.
 *
 * CSV is written with csv-stringify (quoting, UTF-8), never by hand.
 *
 * @module
 */
import { stringify } from "csv-stringify/sync";
import type { CheckId } from "../checks.ts";
import { type GradeConfig, type Role, ROLE_LABEL } from "../config.ts";
import type { GradescopeResults, toGradescope } from "../grade.ts";
import type { CheckResult } from "../runner.ts";
import type { Assignment } from "./assignment.ts";
import type { RoleProgram } from "./programs.ts";
import type { Layout } from "./students.ts";

/** One check of one student, with its points. */
export interface CheckOutcome extends CheckResult {
  /** The points earned. */
  points: number;
  /** The points the check is worth. */
  maxPoints: number;
}

/** One role of one student: its program (or why none) and its checks. */
export interface RoleReport {
  /** The role. */
  role: Role;
  /** Its program, or why there is none. */
  program: RoleProgram;
  /** Its checks, with points. */
  checks: CheckOutcome[];
}

/** Everything known about one student's grade. */
export interface StudentReport {
  /** The student's name, as the submissions folder gives it. */
  name: string;
  /** A safe, unique file name for the student's feedback and results. */
  key: string;
  /** Canvas's user id or Moodle's participant id, if the layout gives one. */
  id?: string;
  /** How the submissions folder named the student's files. */
  layout: Layout;
  /** Whether Canvas marked the submission late. */
  late: boolean;
  /**
   * "graded"; "empty" (no files at all); "void" (the grade cannot be
   * trusted: grade again); "error" (the kit could not finish: a time
   * limit, say).
   */
  status: "graded" | "empty" | "void" | "error";
  /** One line: what kept points away that is not a check's finding (missing programs, builds). */
  error: string;
  /** Points earned. */
  total: number;
  /** Points possible. */
  max: number;
  /** Each role graded. */
  roles: RoleReport[];
  /** About the submission as a whole: files left out, how it was isolated. */
  notes: string[];
  /** How long grading took. */
  seconds: number;
  /** When it was graded (ISO 8601). */
  gradedAt: string;
}

/** The gradebook's check columns: "tcp_server.basic", in the assignment's order. */
export function checkColumns(assignment: Assignment): string[] {
  return assignment.roles.flatMap((role) => assignment.checks[role].map((id) => `${role}.${id}`));
}

/** The most points a student can get. */
export function maxPoints(assignment: Assignment): number {
  return round(checkColumns(assignment).reduce((sum, key) => sum + assignment.points[key], 0));
}

/**
 * The gradebook CSV: a header, then one row per student.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultAssignment } from "./assignment.ts";
 * const csv = gradebookCsv([], defaultAssignment());
 * assert.match(csv, /^student,.*udp_server\.basic,.*total,max,status,error/);
 * ```
 */
export function gradebookCsv(reports: StudentReport[], assignment: Assignment): string {
  const columns = checkColumns(assignment);
  const rows = reports.map((report) => {
    const earned = new Map<string, number>();
    for (const role of report.roles) {
      for (const check of role.checks) earned.set(`${check.role}.${check.id}`, check.points);
    }
    return [
      report.name,
      report.id ?? "",
      ...columns.map((key) => earned.get(key) ?? 0),
      report.total,
      report.max,
      report.status,
      report.error,
    ];
  });
  return stringify([["student", "id", ...columns, "total", "max", "status", "error"], ...rows]);
}

/**
 * Shaped for Canvas's grade import (Grades > Import): Student, ID, SIS User
 * ID, SIS Login ID, Section, then the assignment's column. Canvas matches
 * rows by ID, the user id in Canvas's file names; the column must be named
 * as the assignment is in Canvas (the assignment file's "name").
 */
export function canvasCsv(reports: StudentReport[], assignment: Assignment): string {
  const header = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", assignment.name];
  const points = ["    Points Possible", "", "", "", "", maxPoints(assignment)];
  // Only Canvas's file names carry Canvas's user id.
  const rows = reports.map((
    r,
  ) => [r.name, r.layout === "canvas" ? r.id ?? "" : "", "", "", "", r.total]);
  return stringify([header, points, ...rows]);
}

/**
 * Shaped like Moodle's offline grading worksheet (Assignment > View all
 * submissions > Download grading worksheet), ready for "Upload grading
 * worksheet": Identifier is "Participant N", N the number in Moodle's
 * folder name.
 */
export function moodleCsv(reports: StudentReport[], assignment: Assignment): string {
  const header = [
    "Identifier",
    "Full name",
    "Email address",
    "Status",
    "Grade",
    "Maximum Grade",
    "Grade can be changed",
    "Last modified (submission)",
    "Last modified (grade)",
    "Feedback comments",
  ];
  const max = maxPoints(assignment);
  const rows = reports.map((r) => [
    // Only Moodle's folder names carry the participant number.
    r.layout === "moodle" && r.id ? `Participant ${r.id}` : "",
    r.name,
    "",
    "Submitted for grading",
    r.total,
    max,
    "Yes",
    "",
    "",
    summaryLine(r),
  ]);
  return stringify([header, ...rows]);
}

/** "14 of 24 points. Failed: TCP server: concurrency ...; ..." */
function summaryLine(report: StudentReport): string {
  const failed = report.roles.flatMap((role) =>
    role.program.state === "ready" ? role.checks.filter((c) => !c.passed).map((c) => c.name) : []
  );
  const parts = [`${report.total} of ${report.max} points.`];
  if (report.error) parts.push(capitalize(report.error) + ".");
  if (failed.length > 0) parts.push(`Failed: ${failed.join("; ")}.`);
  return parts.join(" ");
}

/**
 * The student's results.json, in the same Gradescope shape as `deno task
 * grade` writes (`gradescope` is grade.ts's toGradescope, passed in: grade.ts
 * loads this module, so importing it here would be a cycle), with the
 * assignment's points per check.
 */
export function resultsJson(
  report: StudentReport,
  assignment: Assignment,
  gradescope: typeof toGradescope,
): GradescopeResults {
  const results = report.roles.flatMap((role) => role.checks);
  const config = {
    roles: report.roles.map((r) => r.role),
    submitted: report.roles.filter((r) => r.program.state === "ready").map((r) => r.role),
    templates: {},
  } as unknown as GradeConfig;
  const json = gradescope(results, { config, seconds: report.seconds });
  json.tests.forEach((test, i) => {
    test.score = results[i].points;
    test.max_score = results[i].maxPoints;
  });
  json.score = report.total;
  const lines = [`${assignment.name}: ${report.name}`];
  for (const role of report.roles) lines.push(describeProgram(role.program));
  lines.push(`${report.total} of ${report.max} points (${report.status}).`);
  if (report.error) lines.push(report.error);
  json.output = lines.join("\n");
  return json;
}

/** "TCP server: TCPServer.py (Python 3)" or "TCP server: no TCP server found (...)". */
function describeProgram(program: RoleProgram): string {
  const label = ROLE_LABEL[program.role];
  if (program.state === "missing") return `${label}: ${program.problem}`;
  const what = `${program.file} (${program.language ?? "unknown language"})`;
  if (program.state === "failed") return `${label}: ${what}: it did not build`;
  return `${label}: ${what}`;
}

/**
 * The feedback a student reads: each role's program, each check with its
 * result, and for a failed one the diff, the program's output and the hint.
 */
export function feedbackMarkdown(report: StudentReport, assignment: Assignment): string {
  const out: string[] = [];
  out.push(`# ${assignment.name}: feedback for ${report.name}`, "");
  out.push(`**${round(report.total)} of ${report.max} points** (${report.status}).`);
  if (report.error) out.push("", `${capitalize(report.error)}.`);
  if (report.late) out.push("", "Canvas marked this submission late.");
  for (const note of report.notes) out.push("", note);
  for (const role of report.roles) {
    const { program } = role;
    const earned = round(role.checks.reduce((sum, c) => sum + c.points, 0));
    const possible = round(role.checks.reduce((sum, c) => sum + c.maxPoints, 0));
    out.push("", `## ${ROLE_LABEL[role.role]}: ${earned} of ${possible} points`, "");
    if (program.state === "missing") {
      out.push(`${capitalize(program.problem ?? "not found")}.`);
      continue;
    }
    out.push(
      `Program: \`${program.file}\` (${program.language ?? "unknown language"})` +
        (program.template ? `, run as \`${program.template}\`` : "") +
        (program.state === "ready" ? ` on port ${program.port} unless given one.` : "."),
    );
    for (const note of program.notes) out.push("", note);
    if (program.state === "failed") {
      out.push("", "It did not build, so every check of this role scores 0. The build said:", "");
      out.push(...fenced(program.problem ?? ""));
      continue;
    }
    out.push("", "| Check | Result | Points |", "| --- | --- | --- |");
    for (const check of role.checks) {
      const title = check.name.slice(ROLE_LABEL[role.role].length + 2).replaceAll("|", "\\|");
      const result = check.passed ? "✓ passed" : check.void ? "⊘ not graded" : "✗ failed";
      out.push(`| ${title} | ${result} | ${round(check.points)} / ${round(check.maxPoints)} |`);
    }
    for (const check of role.checks.filter((c) => !c.passed)) {
      out.push("", `### ✗ ${check.name}`, "");
      out.push(...fenced(cut(check.output)));
    }
  }
  return out.join("\n") + "\n";
}

/** At most this many characters of one check's output in the feedback. */
const FEEDBACK_CHARS = 6000;

function cut(text: string): string {
  if (text.length <= FEEDBACK_CHARS) return text;
  return `${text.slice(0, FEEDBACK_CHARS)}\n... (cut: ${text.length} characters in all)`;
}

/** A fenced block that no backticks in `text` can close early. */
function fenced(text: string): string[] {
  const longest = Math.max(2, ...[...text.matchAll(/`+/g)].map((m) => m[0].length));
  const fence = "`".repeat(longest + 1);
  return [`${fence}text`, text, fence];
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Points rounded to hundredths: 0.1 + 0.2 shows as 0.3. */
export function round(value: number): number {
  return Math.round(value * 100) / 100;
}

/** A check that never ran, scored 0: the role's program is missing or did not build. */
export function unrunCheck(
  role: Role,
  id: CheckId,
  title: string,
  output: string,
  maxPoints: number,
): CheckOutcome {
  return {
    role,
    id,
    name: `${ROLE_LABEL[role]}: ${title}`,
    passed: false,
    output,
    ms: 0,
    points: 0,
    maxPoints,
  };
}
