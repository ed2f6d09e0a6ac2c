/**
 * `deno task grade --class DIR --out OUT`: grades a whole class (see
 * docs/class_grading.md).
 *
 * @module
 */
import { isAbsolute, resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  type Assignment,
  AssignmentError,
  defaultAssignment,
  readAssignment,
} from "./assignment.ts";
import { ClassError, gradeClass } from "./batch.ts";
import { noIsolation, probeIsolation } from "./isolation.ts";
import { findToolchain } from "./programs.ts";
import type { toGradescope } from "../grade.ts";

const USAGE = `Usage: deno task grade --class DIR --out OUT [options]

Grades every student in the submissions folder DIR (one folder per student,
Canvas's flat files, or Moodle's folders) and writes:
  OUT/gradebook.csv          one row per student: a column per check, total, max, status, error
  OUT/feedback/STUDENT.md    each check, its result, the diff and the hint
  OUT/results/STUDENT.json   Gradescope-style results
Students whose files did not change since the last run keep their grades.

Options:
  --assignment FILE   the assignment (JSON): roles, checks, points, files, commands, ports
  --jobs N            students graded at once (default: the number of cores; 1 without
                      network namespaces)
  --only NAME         regrade this student only (name, file name or id)
  --force             regrade students whose files did not change
  --no-namespaces     do not use network namespaces even where they work (one student
                      at a time, on this machine's ports)
  --canvas            also write OUT/canvas_grades.csv (Canvas grade import)
  --moodle            also write OUT/moodle_grading_worksheet.csv (Moodle offline grading)
  --help              show this help

Exits 0 once the gradebook is written, whatever the grades; 2 for a usage error.`;

/**
 * Runs the class grading from the command line; resolves to the exit code.
 *
 * @example
 * ```ts ignore
 * // ignore: grades a whole folder of submissions (tests/class_grading_test.ts runs it)
 * import { toGradescope } from "../grade.ts";
 * const code = await classMain(["--class", "submissions", "--out", "grades"], {
 *   gradescope: toGradescope,
 * });
 * ```
 */
export async function classMain(
  args: string[],
  { gradescope }: { gradescope: typeof toGradescope },
): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        class: { type: "string" },
        out: { type: "string" },
        output: { type: "string" },
        assignment: { type: "string" },
        jobs: { type: "string" },
        only: { type: "string" },
        force: { type: "boolean", default: false },
        "no-namespaces": { type: "boolean", default: false },
        canvas: { type: "boolean", default: false },
        moodle: { type: "boolean", default: false },
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
  const out = values.out ?? values.output;
  if (!values.class || !out) {
    console.error("error: --class DIR and --out OUT are both needed (see --help)");
    return 2;
  }
  let jobs: number | undefined;
  if (values.jobs !== undefined) {
    jobs = Number(values.jobs);
    if (!/^\d+$/.test(values.jobs) || jobs < 1 || jobs > 256) {
      console.error(`error: --jobs must be a whole number from 1 to 256, not "${values.jobs}"`);
      return 2;
    }
  }
  const base = Deno.env.get("INIT_CWD") || Deno.cwd();
  const path = (p: string) => isAbsolute(p) ? p : resolve(base, p);

  let assignment: Assignment;
  try {
    assignment = values.assignment
      ? await readAssignment(path(values.assignment))
      : defaultAssignment();
  } catch (error) {
    if (!(error instanceof AssignmentError)) throw error;
    console.error(`error: ${error.message}`);
    return 2;
  }

  try {
    const summary = await gradeClass({
      dir: path(values.class),
      out: path(out),
      assignment,
      isolation: values["no-namespaces"] ? noIsolation("--no-namespaces") : await probeIsolation(),
      tools: await findToolchain(),
      gradescope,
      jobs,
      only: values.only,
      force: values.force,
      canvas: values.canvas,
      moodle: values.moodle,
    });
    const written = ["gradebook.csv", "feedback/", "results/"];
    if (values.canvas) written.push("canvas_grades.csv");
    if (values.moodle) written.push("moodle_grading_worksheet.csv");
    console.error(
      `Graded ${summary.graded.length} student(s) in ${summary.seconds.toFixed(1)} s ` +
        `(${summary.skipped.length} unchanged). Wrote ${
          written.map((w) => `${out}/${w}`).join(", ")
        }`,
    );
    return 0;
  } catch (error) {
    if (error instanceof ClassError) {
      console.error(`error: ${error.message}`);
      return 2;
    }
    if (error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.NotFound) {
      console.error(`error: ${(error as Error).message}`);
      return 1;
    }
    throw error;
  }
}
