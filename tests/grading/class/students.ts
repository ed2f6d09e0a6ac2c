/**
 * Finds the students in a class's submissions folder, whatever layout the
 * course system downloaded it in:
 *
 * - one subfolder per student (GitHub Classroom, a zip per student):
 *   `alice/TCPServer.py`;
 * - Canvas's flat files, `lastnamefirstname_12345_67890_TCPServer.py`
 *   (user id, file id, then the name the student uploaded), with `_LATE_`
 *   after the name for a late submission, and `-1`, `-2`... before the
 *   extension where Canvas renamed a file the student uploaded again;
 * - Moodle's folders, `Full Name_12345_assignsubmission_file_/...` (the
 *   number is the participant's id in the assignment).
 *
 * Each entry is read on its own, so a folder that mixes layouts still works.
 * Nothing is written under the submissions folder.
 *
 * @module
 */
import { basename, join, relative } from "node:path";

/** How a student's files were laid out. */
export type Layout = "folders" | "canvas" | "moodle";

/** One file a student submitted. */
export interface SubmittedFile {
  /** Where it is, under the submissions folder. */
  path: string;
  /**
   * The name to grade it under: the name the student gave it, without
   * Canvas's prefix and resubmission suffix, with its folders inside the
   * submission ("src/TCPServer.java").
   */
  name: string;
  /** Canvas's resubmission number (`TCPServer-2.py` is 2), else 0. */
  attempt: number;
  /** Its size in bytes. */
  size: number;
}

/** One student and their files. */
export interface Student {
  /** As the course system wrote it: "Zoë Ådahl", "lastnamefirstname", "alice". */
  name: string;
  /** A safe file name for OUT/feedback/KEY.md and OUT/results/KEY.json: unique in the class. */
  key: string;
  /** Canvas's user id or Moodle's participant id, if the layout gives one. */
  id?: string;
  /** How the submissions folder named the student's files. */
  layout: Layout;
  /** Whether Canvas marked the submission late. */
  late: boolean;
  /** The files graded (resubmissions resolved). */
  files: SubmittedFile[];
  /** What was left out, and why (a file that was submitted again, say). */
  notes: string[];
}

/** The students found, and what in the folder was not a student's. */
export interface ClassFolder {
  /** The students found. */
  students: Student[];
  /** The most common layout. */
  layout: Layout;
  /** Entries of the folder that belong to no student, with why. */
  ignored: string[];
}

/** Files and folders no student wrote: skipped everywhere. */
const SKIPPED = /^(\.|__MACOSX$|__pycache__$|Thumbs\.db$|desktop\.ini$)/i;
/** Files per student and bytes per file beyond which the rest is left out. */
const MAX_FILES = 200;
const MAX_FILE_BYTES = 5 * 1024 * 1024;
/** How deep a student's folders are walked. */
const MAX_DEPTH = 6;

const CANVAS_FILE = /^([^_]+)(_late)?_(\d+)_(\d+)_(.+)$/i;
const MOODLE_FOLDER = /^(.+)_(\d+)_assignsubmission_[a-z]+_?$/i;
const RESUBMITTED = /^(.+)-(\d+)(\.[^.]*)?$/;

/**
 * Reads the students of a submissions folder.
 *
 * @example
 * ```ts ignore
 * // ignore: reads an instructor's folder (tests/class_grading_test.ts runs it on the fixtures)
 * const { students, layout } = await findStudents("submissions");
 * console.log(layout, students.map((s) => s.name));
 * ```
 */
export async function findStudents(dir: string): Promise<ClassFolder> {
  const byKey = new Map<string, Student>();
  const ignored: string[] = [];
  const entries = [];
  for await (const entry of Deno.readDir(dir)) entries.push(entry);
  entries.sort((a, b) => a.name.localeCompare(b.name));

  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (SKIPPED.test(entry.name)) continue;
    const info = await Deno.stat(path).catch(() => undefined);
    if (info === undefined) {
      ignored.push(`${entry.name}: cannot be read`);
      continue;
    }
    const moodle = info.isDirectory ? MOODLE_FOLDER.exec(entry.name) : null;
    const canvas = info.isFile ? CANVAS_FILE.exec(entry.name) : null;
    if (moodle) {
      // A student may have a folder per submission plugin (file_, onlinetext_).
      const [, name, id] = moodle;
      const student = studentFor(byKey, { name: name.trim(), id, layout: "moodle" });
      student.files.push(...await walk(path, student.notes));
    } else if (canvas) {
      const [, name, late, id, , uploaded] = canvas;
      const student = studentFor(byKey, { name, id, layout: "canvas" });
      student.late ||= late !== undefined;
      const original = RESUBMITTED.exec(uploaded);
      student.files.push({
        path,
        name: original ? original[1] + (original[3] ?? "") : uploaded,
        attempt: original ? Number(original[2]) : 0,
        size: info.size,
      });
    } else if (info.isDirectory) {
      const student = studentFor(byKey, { name: entry.name, layout: "folders" });
      student.files.push(...await walk(path, student.notes));
    } else {
      ignored.push(
        `${entry.name}: a file outside any student's folder, and not named as Canvas names files`,
      );
    }
  }

  const students = [...byKey.values()];
  for (const student of students) keepLatest(student);
  assignKeys(students);
  const counts = new Map<Layout, number>();
  for (const s of students) counts.set(s.layout, (counts.get(s.layout) ?? 0) + 1);
  const layout = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "folders";
  return { students, layout, ignored };
}

/** The student of that name (and id), created on first sight. */
function studentFor(
  byKey: Map<string, Student>,
  { name, id, layout }: { name: string; id?: string; layout: Layout },
): Student {
  const key = `${layout}\0${name}\0${id ?? ""}`;
  let student = byKey.get(key);
  if (student === undefined) {
    student = { name, key: "", id, layout, late: false, files: [], notes: [] };
    byKey.set(key, student);
  }
  return student;
}

/** Every file under `root` (bounded in depth, count and size), named relative to it. */
async function walk(root: string, notes: string[]): Promise<SubmittedFile[]> {
  const files: SubmittedFile[] = [];
  const visit = async (dir: string, depth: number) => {
    const entries = [];
    try {
      for await (const entry of Deno.readDir(dir)) entries.push(entry);
    } catch (error) {
      notes.push(`${relative(root, dir) || "."}: cannot be read (${(error as Error).message})`);
      return;
    }
    entries.sort((a, b) => a.name.localeCompare(b.name));
    for (const entry of entries) {
      if (SKIPPED.test(entry.name)) continue;
      const path = join(dir, entry.name);
      // Symbolic links are not followed: they could point anywhere.
      if (entry.isDirectory && depth < MAX_DEPTH) await visit(path, depth + 1);
      if (!entry.isFile) continue;
      if (files.length >= MAX_FILES) {
        notes.push(`more than ${MAX_FILES} files: the rest were left out`);
        return;
      }
      const { size } = await Deno.stat(path);
      if (size > MAX_FILE_BYTES) {
        notes.push(`${relative(root, path)}: ${size} bytes, too big to be a program: left out`);
        continue;
      }
      files.push({ path, name: relative(root, path), attempt: 0, size });
    }
  };
  await visit(root, 0);
  return files;
}

/** Of the files Canvas named after one upload (`a.py`, `a-1.py`), keeps the latest. */
function keepLatest(student: Student) {
  const latest = new Map<string, SubmittedFile>();
  for (const file of student.files) {
    const seen = latest.get(file.name);
    if (seen === undefined || file.attempt > seen.attempt) latest.set(file.name, file);
  }
  for (const file of student.files) {
    if (latest.get(file.name) !== file) {
      student.notes.push(
        `${basename(file.path)}: an earlier upload of ${file.name}, left out for ` +
          basename(latest.get(file.name)!.path),
      );
    }
  }
  student.files = [...latest.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * A file name from a student's name: letters and digits of any script are
 * kept, everything else becomes "_" ("Zoë Ådahl" -> "Zoë_Ådahl").
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(safeName("Zoë  Ådahl"), "Zoë_Ådahl");
 * assert.deepEqual(safeName("../etc/passwd"), "etc_passwd");
 * assert.deepEqual(safeName("..."), "student");
 * ```
 */
export function safeName(name: string): string {
  const safe = name.normalize("NFC").replace(/[^\p{L}\p{N}\p{M}.-]+/gu, "_")
    .replace(/^[._-]+|[._-]+$/g, "").replace(/\.{2,}/g, ".").slice(0, 80);
  return safe || "student";
}

/** Unique keys, case-insensitively (for case-insensitive file systems): "name", "name_2". */
function assignKeys(students: Student[]) {
  const taken = new Set<string>();
  for (const student of students) {
    const base = safeName(student.name);
    let key = base;
    for (let n = 2; taken.has(key.toLowerCase()); n++) key = `${base}_${n}`;
    taken.add(key.toLowerCase());
    student.key = key;
  }
}
