/**
 * Grading benchmark: a class of generated students (copies of the fixture
 * class's students: correct, textbook, buggy, missing, Python 2, Java, C,
 * TypeScript, non-compiling, empty), graded with every role and every check
 * at the kit's default deadlines, once one student at a time and then with
 * several at once. Prints students per minute for each, the speed-up
 * against one at a time (measured in the same run), the time for 100
 * students, and where the time goes: the checks that waited longest, and
 * how many of them ran into a deadline; and whether grading several at
 * once changed any grade.
 *
 * ```sh
 * deno task bench-grading             # 40 students; jobs 1, 2 and 8
 * deno task bench-grading 20 1,4      # 20 students; jobs 1 and 4
 * ```
 *
 * Not a test: nothing is asserted. Results go in bench/GRADING.md by hand.
 *
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { GRADE_COMMAND } from "../tests/grading/grade.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const FIXTURE_CLASS = join(ROOT, "tests", "fixtures", "class", "folders");

const students = Number(Deno.args[0] ?? 40);
const jobsList = (Deno.args[1] ?? "1,2,8").split(",").map(Number);

/** Copies the fixture students round-robin into `dir` as student01_alice, student02_Bob... */
async function generateClass(dir: string, count: number) {
  const profiles: string[] = [];
  for await (const entry of Deno.readDir(FIXTURE_CLASS)) {
    if (entry.isDirectory) profiles.push(entry.name);
  }
  profiles.sort();
  for (let i = 0; i < count; i++) {
    const profile = profiles[i % profiles.length];
    const target = join(dir, `student${String(i + 1).padStart(3, "0")}_${profile}`);
    await copyTree(join(FIXTURE_CLASS, profile), target);
  }
  return profiles;
}

async function copyTree(from: string, to: string) {
  await Deno.mkdir(to, { recursive: true });
  for await (const entry of Deno.readDir(from)) {
    if (entry.isDirectory) await copyTree(join(from, entry.name), join(to, entry.name));
    else if (entry.isFile) await Deno.copyFile(join(from, entry.name), join(to, entry.name));
  }
}

interface Check {
  role: string;
  id: string;
  ms: number;
  passed: boolean;
}

/** Grades the class with `jobs` at once; returns the wall time and every check's time. */
async function gradeOnce(dir: string, jobs: number) {
  const out = await Deno.makeTempDir({ prefix: "grading-bench-out-" });
  const started = performance.now();
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      ...GRADE_COMMAND,
      "--class",
      dir,
      "--out",
      out,
      "--jobs",
      String(jobs),
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - started) / 1000;
  const log = new TextDecoder().decode(stderr);
  if (code !== 0) throw new Error(`grading failed (exit ${code}):\n${log}`);
  const checks: Check[] = [];
  const perStudent: number[] = [];
  for await (const entry of Deno.readDir(join(out, ".state"))) {
    const { report } = JSON.parse(await Deno.readTextFile(join(out, ".state", entry.name)));
    perStudent.push(report.seconds);
    for (const role of report.roles) {
      for (const check of role.checks) {
        checks.push({ role: check.role, id: check.id, ms: check.ms, passed: check.passed });
      }
    }
  }
  const gradebook = await Deno.readTextFile(join(out, "gradebook.csv"));
  await Deno.remove(out, { recursive: true });
  return { seconds, checks, perStudent, gradebook, isolation: log.split("\n")[0] };
}

function table(rows: (string | number)[][]): string {
  return rows.map((row) => `| ${row.join(" | ")} |`).join("\n");
}

const dir = await Deno.makeTempDir({ prefix: "grading-bench-class-" });
try {
  const profiles = await generateClass(dir, students);
  console.log(
    `${students} students, made of the fixture class's ${profiles.length} (${
      profiles.join(", ")
    }); ` +
      `${navigator.hardwareConcurrency} cores; all four roles, every check, default deadlines.`,
  );
  const runs = [];
  for (const jobs of jobsList) {
    const run = await gradeOnce(dir, jobs);
    runs.push({ jobs, ...run });
    console.log(`jobs ${jobs}: ${run.seconds.toFixed(1)} s (${run.isolation})`);
  }
  const base = runs[0];
  // Grading several at once must not change a grade.
  for (const run of runs.slice(1)) {
    const a = base.gradebook.split("\n");
    const b = run.gradebook.split("\n");
    const differ = a.filter((line, i) => line !== b[i]);
    console.log(
      `jobs ${run.jobs}: ${
        differ.length === 0 ? "the same gradebook as" : `${differ.length} row(s) differ from`
      } jobs ${base.jobs}`,
    );
    for (const line of differ) console.log(`  jobs ${base.jobs}: ${line}`);
  }
  console.log("");
  console.log(table([
    ["students at once", "wall time", "students per minute", "speed-up", "100 students"],
    ["---", "---", "---", "---", "---"],
    ...runs.map((run) => [
      run.jobs,
      `${run.seconds.toFixed(1)} s`,
      (students / run.seconds * 60).toFixed(1),
      `${(base.seconds / run.seconds).toFixed(2)}x`,
      `${(run.seconds / students * 100 / 60).toFixed(1)} min`,
    ]),
  ]));

  // Where the time goes, from the one-at-a-time run (no waiting on others).
  const byCheck = new Map<string, { total: number; n: number; slow: number }>();
  for (const check of base.checks) {
    const key = `${check.role}.${check.id}`;
    const entry = byCheck.get(key) ?? { total: 0, n: 0, slow: 0 };
    entry.total += check.ms / 1000;
    entry.n++;
    if (check.ms >= 1900) entry.slow++;
    byCheck.set(key, entry);
  }
  const all = [...byCheck.values()].reduce((sum, e) => sum + e.total, 0);
  const perStudent = base.perStudent.reduce((a, b) => a + b, 0);
  console.log("");
  console.log(
    `One at a time: ${perStudent.toFixed(0)} s of student time, ${all.toFixed(0)} s of it in ` +
      "checks (the UDP and TCP roles run side by side, so check time can exceed student time); " +
      "the checks that took longest:",
  );
  console.log("");
  console.log(table([
    ["check", "total", "runs", "runs of 1.9 s or more (a deadline or a 2 s wait)", "share"],
    ["---", "---", "---", "---", "---"],
    ...[...byCheck].sort((a, b) => b[1].total - a[1].total).slice(0, 10).map(([key, e]) => [
      key,
      `${e.total.toFixed(1)} s`,
      e.n,
      e.slow,
      `${(e.total / all * 100).toFixed(0)}%`,
    ]),
  ]));
} finally {
  await Deno.remove(dir, { recursive: true });
}
