/**
 * Grades a whole class: each student's files are copied to a temporary
 * folder, each role's program is found and built there, and the checks run
 * in a child process of the kit (in the student's own network namespace
 * where the machine allows it, several students at once). Nothing under the
 * submissions folder is written. A student's bad input never stops the
 * batch: it becomes that student's result.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { checksFor } from "../checks.ts";
import { ROLE_LABEL } from "../config.ts";
import type { toGradescope } from "../grade.ts";
import type { CheckResult } from "../runner.ts";
import type { Assignment } from "./assignment.ts";
import type { ChildJob, ChildOutput } from "./child.ts";
import type { Isolation } from "./isolation.ts";
import { pickPrograms, prepareProgram, type RoleProgram, type Toolchain } from "./programs.ts";
import {
  canvasCsv,
  type CheckOutcome,
  feedbackMarkdown,
  gradebookCsv,
  maxPoints,
  moodleCsv,
  resultsJson,
  type RoleReport,
  round,
  type StudentReport,
  unrunCheck,
} from "./reports.ts";
import { findStudents, type Student } from "./students.ts";

/** Changes when the kit's grading changes in a way that makes stored grades stale. */
const KIT_VERSION = "class-grading-1";
/** A student's whole grading may take this long before it is stopped (error). */
const STUDENT_SECONDS = 600;
/** Bytes of the child's stderr kept, for the error column when it fails. */
const CHILD_STDERR_BYTES = 16 * 1024;

const CHILD = fileURLToPath(new URL("./child.ts", import.meta.url));

/** Options for {@linkcode gradeClass}. */
export interface ClassOptions {
  /** The submissions folder. */
  dir: string;
  /** Where gradebook.csv, feedback/ and results/ go. */
  out: string;
  /** What to grade, and how many points each check is worth. */
  assignment: Assignment;
  /** How students are kept apart (namespaces, or one at a time). */
  isolation: Isolation;
  /** The interpreters and compilers found. */
  tools: Toolchain;
  /** grade.ts's toGradescope, for OUT/results (grade.ts loads this module: no import back). */
  gradescope: typeof toGradescope;
  /** Students graded at once (only with namespaces); default the number of cores. */
  jobs?: number;
  /** Regrade only this student (name, file name or id); the others keep their stored grade. */
  only?: string;
  /** Regrade students whose files did not change. */
  force?: boolean;
  /** Also write OUT/canvas_grades.csv. */
  canvas?: boolean;
  /** Also write OUT/moodle_grading_worksheet.csv. */
  moodle?: boolean;
  /** Where progress and messages go; default stderr. */
  log?: (line: string) => void;
  /** Seconds one student may take in all; default 600. */
  studentSeconds?: number;
}

/** What a run did. */
export interface ClassSummary {
  /** Every student's report, graded now or kept from before. */
  reports: StudentReport[];
  /** Students graded in this run (the others' grades were kept). */
  graded: string[];
  /** Students whose files did not change: their grades were kept. */
  skipped: string[];
  /** Students graded at once. */
  jobs: number;
  /** How long the run took. */
  seconds: number;
  /** Entries of the submissions folder that were no student's. */
  ignored: string[];
}

/**
 * A mistake in how the class grading was asked for (no such folder, no
 * such student): said in one line.
 */
export class ClassError extends Error {
  /** Makes the error, with its one-line message. */
  constructor(message: string) {
    super(message);
    this.name = "ClassError";
  }
}

interface Stored {
  hash: string;
  report: StudentReport;
}

/**
 * Grades every student in `dir` and writes OUT/gradebook.csv,
 * OUT/feedback/KEY.md and OUT/results/KEY.json.
 *
 * @example
 * ```ts ignore
 * // ignore: grades a whole folder of submissions (tests/class_grading_test.ts runs it)
 * const summary = await gradeClass({
 *   dir: "submissions", out: "grades", assignment: defaultAssignment(),
 *   isolation: await probeIsolation(), tools: await findToolchain(), gradescope: toGradescope,
 * });
 * console.log(summary.reports.map((r) => `${r.name}: ${r.total}`));
 * ```
 */
export async function gradeClass(options: ClassOptions): Promise<ClassSummary> {
  const started = performance.now();
  const { dir, out, assignment, isolation } = options;
  const log = options.log ?? ((line: string) => console.error(line));
  const info = await Deno.stat(dir).catch(() => undefined);
  if (!info?.isDirectory) throw new ClassError(`${dir} is not a folder of submissions`);
  const found = await findStudents(dir);
  const { students } = found;

  let wanted = students;
  if (options.only !== undefined) {
    const only = options.only.toLowerCase();
    wanted = students.filter((s) =>
      [s.name, s.key, s.id ?? ""].some((n) => n.toLowerCase() === only)
    );
    if (wanted.length === 0) {
      const names = students.map((s) => s.key).slice(0, 20).join(", ");
      throw new ClassError(
        `No student named "${options.only}" in ${dir} (students: ${names || "none"})`,
      );
    }
  }

  for (const sub of ["feedback", "results", ".state"]) {
    await Deno.mkdir(join(out, sub), { recursive: true });
  }
  const assignmentText = JSON.stringify(assignment);
  const hashes = new Map<Student, string>();
  const stored = new Map<Student, Stored>();
  for (const student of students) {
    hashes.set(student, await hashStudent(student, assignmentText));
    const previous = await readStored(out, student.key);
    if (previous) stored.set(student, previous);
  }
  const todo = wanted.filter((s) =>
    options.force || options.only !== undefined || stored.get(s)?.hash !== hashes.get(s)
  );
  const skipped = wanted.filter((s) => !todo.includes(s)).map((s) => s.key);

  const cores = navigator.hardwareConcurrency || 1;
  let jobs = Math.max(1, Math.floor(options.jobs ?? cores));
  log(isolation.description);
  if (!isolation.namespaces && jobs > 1) {
    log("Without namespaces every program needs the same ports: grading one student at a time.");
    jobs = 1;
  }
  if (found.ignored.length > 0) {
    log(`Not a student's (left out): ${found.ignored.join("; ")}`);
  }
  if (skipped.length > 0) {
    log(
      `${skipped.length} student(s) unchanged since the last run: kept their grades (--force regrades).`,
    );
  }
  log(
    `Grading ${todo.length} of ${students.length} student(s), ${
      Math.min(jobs, Math.max(1, todo.length))
    } at a time.`,
  );

  const progress = new Progress(todo.length, log);
  const fresh = new Map<Student, StudentReport>();
  let next = 0;
  const worker = async () => {
    while (next < todo.length) {
      const student = todo[next++];
      progress.start(student.key);
      const report = await gradeStudent(student, options);
      fresh.set(student, report);
      await writeStudent(out, report, {
        assignment,
        hash: hashes.get(student)!,
        gradescope: options.gradescope,
      });
      progress.done(
        student.key,
        `${report.name}: ${report.total}/${report.max} (${report.status})`,
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, todo.length) }, worker));
  progress.end();

  const reports = students.map((student) =>
    fresh.get(student) ?? stored.get(student)?.report ?? notGraded(student, assignment)
  );
  // Feedback and results of kept grades are written again if they were removed.
  for (const student of students) {
    const kept = !fresh.has(student) ? stored.get(student) : undefined;
    if (kept && !await exists(join(out, "results", `${student.key}.json`))) {
      await writeStudent(out, kept.report, {
        assignment,
        hash: kept.hash,
        gradescope: options.gradescope,
      });
    }
  }
  await Deno.writeTextFile(join(out, "gradebook.csv"), gradebookCsv(reports, assignment));
  if (options.canvas) {
    await Deno.writeTextFile(join(out, "canvas_grades.csv"), canvasCsv(reports, assignment));
  }
  if (options.moodle) {
    await Deno.writeTextFile(
      join(out, "moodle_grading_worksheet.csv"),
      moodleCsv(reports, assignment),
    );
  }
  return {
    reports,
    graded: todo.map((s) => s.key),
    skipped,
    jobs,
    seconds: (performance.now() - started) / 1000,
    ignored: found.ignored,
  };
}

/** A row for a student this run did not grade and no earlier run did either (--only). */
function notGraded(student: Student, assignment: Assignment): StudentReport {
  return {
    ...identity(student),
    status: "error",
    error: "not graded yet (an earlier run used --only): grade again without --only",
    total: 0,
    max: maxPoints(assignment),
    roles: [],
    notes: [],
    seconds: 0,
    gradedAt: new Date().toISOString(),
  };
}

function identity(student: Student) {
  const { name, key, id, layout, late } = student;
  return id === undefined ? { name, key, layout, late } : { name, key, id, layout, late };
}

/** One student, from files to report. Never throws for the student's input. */
async function gradeStudent(student: Student, options: ClassOptions): Promise<StudentReport> {
  const { assignment, isolation, tools } = options;
  const started = performance.now();
  const notes = [...student.notes];
  const base = {
    ...identity(student),
    max: maxPoints(assignment),
    notes,
    gradedAt: new Date().toISOString(),
  };
  if (student.files.length === 0) {
    const roles = assignment.roles.map((role) =>
      unrunRole({
        role,
        state: "missing",
        port: 12000,
        notes: [],
        problem: `no ${ROLE_LABEL[role]} found (the submission has no files)`,
      }, assignment)
    );
    return { ...base, status: "empty", error: "no files submitted", total: 0, roles, seconds: 0 };
  }

  const root = await Deno.makeTempDir({ prefix: "grade-class-" });
  try {
    const copy = join(root, "submission");
    for (const file of student.files) {
      const target = join(copy, file.name);
      await Deno.mkdir(dirname(target), { recursive: true });
      await Deno.copyFile(file.path, target);
      await Deno.chmod(target, 0o644).catch(() => {});
    }
    const names = student.files.map((f) => f.name);
    const picks = await pickPrograms(names, copy, assignment);
    const programs: RoleProgram[] = [];
    for (const role of assignment.roles) {
      const pick = picks.get(role)!;
      programs.push(
        await prepareProgram({
          role,
          file: pick.file,
          dir: copy,
          names,
          assignment,
          tools,
          notes: pick.notes,
        }),
      );
    }

    const ready = programs.filter((p) => p.state === "ready");
    let output: ChildOutput = { results: [], seconds: 0 };
    let failure: string | undefined;
    if (ready.length > 0) {
      const job: ChildJob = {
        cwd: copy,
        roles: ready.map((p) => ({
          role: p.role,
          template: p.template!,
          port: p.port,
          checks: assignment.checks[p.role],
        })),
        readyDeadlineMs: assignment.readyDeadlineMs,
        clientDeadlineMs: assignment.clientDeadlineMs,
        service: assignment.service,
      };
      const ran = await runChild(job, root, isolation, options.studentSeconds ?? STUDENT_SECONDS);
      if ("error" in ran) failure = ran.error;
      else output = ran.output;
      // Tracebacks name the temporary copy: show paths as submitted.
      for (const result of output.results) result.output = result.output.replaceAll(`${copy}/`, "");
    }

    const roles = programs.map((program) =>
      program.state === "ready"
        ? gradedRole(program, output.results, assignment, failure)
        : unrunRole(program, assignment)
    );
    const total = round(
      roles.reduce((sum, r) => sum + r.checks.reduce((s, c) => s + c.points, 0), 0),
    );
    const problems = programs.filter((p) => p.state !== "ready").map((p) =>
      p.state === "missing"
        ? `no ${ROLE_LABEL[p.role]} found`
        : `${ROLE_LABEL[p.role]}: ${p.file} did not build`
    );
    const voided = output.results.find((r) => r.void);
    if (failure) problems.unshift(failure);
    else if (voided) problems.unshift(voided.output.split("\n")[0]);
    if (isolation.namespaces) notes.push("Graded in a network namespace of its own.");
    return {
      ...base,
      status: failure ? "error" : voided ? "void" : "graded",
      error: problems.join("; "),
      total,
      roles,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (error) {
    // A bug of the kit, or a file system error: this student only.
    return {
      ...base,
      status: "error",
      error: `the kit could not grade this student: ${(error as Error).message}`,
      total: 0,
      roles: [],
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    // Without a namespace, a process that left its process group (fork,
    // setsid) outlives the kit's kill; it still runs in the student's copy.
    if (!isolation.namespaces) await killProcessesIn(root);
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
}

/**
 * Kills every process whose working folder is under `dir` (the student's
 * temporary copy): what is left of a student's programs once the kit has
 * killed their process groups. Linux only; elsewhere nothing is done.
 */
async function killProcessesIn(dir: string) {
  if (Deno.build.os !== "linux") return;
  const script = `for p in /proc/[0-9]*; do
    case "$(readlink "$p/cwd" 2>/dev/null)" in "$1"|"$1"/*) kill -9 "\${p#/proc/}" 2>/dev/null;; esac
  done; exit 0`;
  await new Deno.Command("sh", { args: ["-c", script, "sh", dir], stdout: "null", stderr: "null" })
    .output().catch(() => {});
}

/** The checks of a role whose program ran, with points. */
function gradedRole(
  program: RoleProgram,
  results: CheckResult[],
  assignment: Assignment,
  failure: string | undefined,
): RoleReport {
  const titles = new Map(
    checksFor(program.role, { service: assignment.service }).map((c) => [c.id, c.title]),
  );
  const checks = assignment.checks[program.role].map((id): CheckOutcome => {
    const max = assignment.points[`${program.role}.${id}`];
    const result = results.find((r) => r.role === program.role && r.id === id);
    if (result === undefined) {
      const why = failure ?? "not run: the grade is void (see above)";
      return unrunCheck(program.role, id, titles.get(id)!, why, max);
    }
    return { ...result, points: result.passed ? max : 0, maxPoints: max };
  });
  return { role: program.role, program, checks };
}

/** A role whose program is missing or did not build: every check 0, with why. */
function unrunRole(program: RoleProgram, assignment: Assignment): RoleReport {
  const titles = new Map(
    checksFor(program.role, { service: assignment.service }).map((c) => [c.id, c.title]),
  );
  const why = program.state === "missing"
    ? program.problem!
    : `${program.file} did not build:\n${program.problem}`;
  const checks = assignment.checks[program.role].map((id) =>
    unrunCheck(program.role, id, titles.get(id)!, why, assignment.points[`${program.role}.${id}`])
  );
  return { role: program.role, program, checks };
}

/**
 * Runs the child that grades one student, in a namespace if there are, and
 * stops it (and, in a namespace, every process the student's programs
 * started) at the time limit.
 */
async function runChild(
  job: ChildJob,
  root: string,
  isolation: Isolation,
  seconds: number,
): Promise<{ output: ChildOutput } | { error: string }> {
  const jobPath = join(root, "job.json");
  const outPath = join(root, "results.json");
  await Deno.writeTextFile(jobPath, JSON.stringify(job));
  const argv = isolation.wrap([
    Deno.execPath(),
    "run",
    "--no-prompt",
    "--allow-net",
    "--allow-run",
    "--allow-read",
    "--allow-env",
    "--allow-write",
    CHILD,
    jobPath,
    outPath,
  ]);
  const env: Record<string, string> = { NO_COLOR: "1" };
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env,
  }).spawn();
  const stderr = collect(child.stderr, CHILD_STDERR_BYTES);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, 3000);
  }, seconds * 1000);
  const status = await child.status;
  clearTimeout(timer);
  const errorText = await stderr;
  if (timedOut) {
    return { error: `the grading of this student took over ${seconds} s and was stopped` };
  }
  if (!status.success) {
    const last = errorText.trim().split("\n").filter(Boolean).slice(-3).join(" / ");
    return {
      error: `the kit's grading process failed (exit ${status.code}): ${last || "no message"}`,
    };
  }
  try {
    return { output: JSON.parse(await Deno.readTextFile(outPath)) as ChildOutput };
  } catch (error) {
    return { error: `the kit's grading process wrote no results: ${(error as Error).message}` };
  }
}

/** Reads a stream to its end, keeping at most `max` bytes. */
async function collect(stream: ReadableStream<Uint8Array>, max: number): Promise<string> {
  const kept: Uint8Array[] = [];
  let length = 0;
  for await (const chunk of stream) {
    if (length < max) {
      kept.push(chunk.subarray(0, max - length));
      length += Math.min(chunk.length, max - length);
    }
  }
  const all = new Uint8Array(length);
  let offset = 0;
  for (const part of kept) {
    all.set(part, offset);
    offset += part.length;
  }
  return new TextDecoder().decode(all);
}

/** A hash of the student's files (names and contents) and of the assignment. */
async function hashStudent(student: Student, assignmentText: string): Promise<string> {
  const parts: Uint8Array[] = [new TextEncoder().encode(`${KIT_VERSION}\n${assignmentText}\n`)];
  for (const file of student.files) {
    parts.push(new TextEncoder().encode(`${file.name}\0${file.size}\0`));
    parts.push(await Deno.readFile(file.path).catch(() => new Uint8Array(0)));
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    all.set(part, offset);
    offset += part.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function readStored(out: string, key: string): Promise<Stored | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(join(out, ".state", `${key}.json`))) as Stored;
  } catch {
    return undefined;
  }
}

/** Writes one student's feedback, results.json and stored grade. */
async function writeStudent(
  out: string,
  report: StudentReport,
  { assignment, hash, gradescope }: {
    assignment: Assignment;
    hash: string;
    gradescope: typeof toGradescope;
  },
) {
  await Deno.writeTextFile(
    join(out, "feedback", `${report.key}.md`),
    feedbackMarkdown(report, assignment),
  );
  await Deno.writeTextFile(
    join(out, "results", `${report.key}.json`),
    JSON.stringify(resultsJson(report, assignment, gradescope), null, 2) + "\n",
  );
  await Deno.writeTextFile(
    join(out, ".state", `${report.key}.json`),
    JSON.stringify({ hash, report } satisfies Stored),
  );
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The progress line on stderr: students done of total, elapsed, an
 * estimate of the time left. On a terminal one line is rewritten; elsewhere
 * a line per student.
 */
class Progress {
  #total: number;
  #done = 0;
  #started = performance.now();
  #running = new Set<string>();
  #log: (line: string) => void;
  #terminal = Deno.stderr.isTerminal();

  constructor(total: number, log: (line: string) => void) {
    this.#total = total;
    this.#log = log;
  }

  start(key: string) {
    this.#running.add(key);
    this.#draw();
  }

  done(key: string, line: string) {
    this.#running.delete(key);
    this.#done++;
    if (this.#terminal) this.#clear();
    this.#log(`${line}  [${this.#status()}]`);
    this.#draw();
  }

  end() {
    if (this.#terminal) this.#clear();
  }

  #status(): string {
    const elapsed = (performance.now() - this.#started) / 1000;
    const left = this.#done > 0 ? (elapsed / this.#done) * (this.#total - this.#done) : undefined;
    return `${this.#done}/${this.#total} done, ${clock(elapsed)} elapsed` +
      (left !== undefined && this.#done < this.#total ? `, about ${clock(left)} left` : "");
  }

  #draw() {
    if (!this.#terminal) return;
    const now = [...this.#running].join(", ");
    const line = `${this.#status()}${now ? `; grading ${now}` : ""}`;
    // A terminal that does not say its width reports 0 columns.
    const columns = Deno.consoleSize().columns;
    const width = columns >= 20 ? columns : 200;
    Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[K${line.slice(0, width - 1)}`));
  }

  #clear() {
    Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
  }
}

/** 75 -> "1m 15s". */
function clock(seconds: number): string {
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}
