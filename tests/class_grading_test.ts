/**
 * Tests of `deno task grade --class DIR --out OUT`: the fixture class in
 * tests/fixtures/class/ (one folder per student, and the same class as
 * Canvas names its files) is graded, and the gradebook is read back with a
 * real CSV parser and compared cell by cell; then reruns, --only, bad input,
 * a hostile student, and the layouts and detection rules on their own.
 *
 * Java and Python 2 students are graded where javac and python2 exist; the
 * expected row says what happens where they do not (the build fails, and the
 * test says so).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { parse } from "csv-parse/sync";
import { parseAssignment } from "./grading/class/assignment.ts";
import { probeIsolation } from "./grading/class/isolation.ts";
import { findToolchain, portFromSource, roleFromName } from "./grading/class/programs.ts";
import { findStudents, safeName } from "./grading/class/students.ts";
import { GRADE_COMMAND } from "./grading/grade.ts";
import { removeDir, ROOT, SUBPROCESS, tempDir } from "./helpers.ts";

const FIXTURES = join(ROOT, "tests", "fixtures", "class");
const ASSIGNMENT = join(FIXTURES, "assignment.json");
const TOOLS = await findToolchain();
const ISOLATION = await probeIsolation();
const PERMISSIONS = SUBPROCESS;

/** Runs `deno task grade` (the same command and grants) and returns its exit code and stderr. */
async function grade(args: string[]): Promise<{ code: number; stderr: string }> {
  const env: Record<string, string> = { ...Deno.env.toObject(), NO_COLOR: "1" };
  delete env.RUST_BACKTRACE;
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [...GRADE_COMMAND, ...args],
    cwd: ROOT,
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code, stderr: new TextDecoder().decode(stderr) };
}

/** Runs a shell script (to lay out files in a temporary folder). */
async function sh(script: string, ...args: string[]) {
  const { success, stderr } = await new Deno.Command("sh", {
    args: ["-c", script, "sh", ...args],
    stderr: "piped",
  }).output();
  assert(success, new TextDecoder().decode(stderr));
}

/** Every file under `dir` with its size and modification time, to prove nothing was written. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (path: string) => {
    for await (const entry of Deno.readDir(path)) {
      const full = join(path, entry.name);
      const info = await Deno.lstat(full);
      out.push(`${full} ${info.size} ${info.mtime?.getTime()}`);
      if (entry.isDirectory) await walk(full);
    }
  };
  await walk(dir);
  return out.sort();
}

function readCsv(text: string): Record<string, string>[] {
  return parse(text, { columns: true, skip_empty_lines: true }) as Record<string, string>[];
}

/** The checks of assignment.json, in the gradebook's column order. */
const COLUMNS = [
  "udp_server.basic",
  "udp_server.utf8",
  "udp_server.long2k",
  "udp_server.invalid",
  "udp_client.basic",
  "udp_client.long2k",
  "udp_client.no_reply",
  "tcp_server.basic",
  "tcp_server.utf8",
  "tcp_server.long1k",
  "tcp_server.concurrent",
  "tcp_server.invalid",
  "tcp_client.basic",
  "tcp_client.long1k",
  "tcp_client.no_reply",
];

interface Expected {
  /** Points per column of COLUMNS. */
  cells: number[];
  status: string;
  error: string;
}

const MISSING = (role: string) => `no ${role} found`;
const javaBuilds = TOOLS.javac !== undefined && TOOLS.java !== undefined;
const python2Runs = TOOLS.python2 !== undefined;

/** The expected row of each student of the fixture class, by folder name. */
const EXPECTED: Record<string, Expected> = {
  // Correct programs: every point.
  alice: { cells: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1], status: "graded", error: "" },
  // The textbook's programs: recvfrom(2048), recv(1024), strict decode(), iterative, no timeouts.
  "Bob Brown": {
    cells: [1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0],
    status: "graded",
    error: "",
  },
  // An echo UDP server (survives invalid bytes only), a single-recv TCP server, no clients.
  "Zoë Ådahl": {
    cells: [0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 2, 1, 0, 0, 0],
    status: "graded",
    error: `${MISSING("UDP client")}; ${MISSING("TCP client")}`,
  },
  // The textbook UDP server (lower-case file name), a Python 2 client with a timeout.
  dave: python2Runs
    ? {
      cells: [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
      status: "graded",
      error: `${MISSING("TCP server")}; ${MISSING("TCP client")}`,
    }
    : {
      cells: [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      status: "graded",
      error: `UDP client: UDPClient.py did not build; ${MISSING("TCP server")}; ${
        MISSING("TCP client")
      }`,
    },
  // A TCP server in C that does not compile; a C UDP server that uppercases ASCII only.
  erin: {
    cells: [1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    status: "graded",
    error: `${MISSING("UDP client")}; TCP server: tcp_server.c did not build; ${
      MISSING("TCP client")
    }`,
  },
  // Only a note and a PDF.
  frank: {
    cells: COLUMNS.map(() => 0),
    status: "graded",
    error: ["UDP server", "UDP client", "TCP server", "TCP client"].map(MISSING).join("; "),
  },
  // The textbook's Java TCP server in a package, on its hard-coded port 6789: iterative.
  grace: {
    cells: javaBuilds ? [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0] : COLUMNS.map(() => 0),
    status: "graded",
    error: javaBuilds
      ? `${MISSING("UDP server")}; ${MISSING("UDP client")}; ${MISSING("TCP client")}`
      : `${MISSING("UDP server")}; ${MISSING("UDP client")}; TCP server: src/lab2/TCPServer.java ` +
        `did not build; ${MISSING("TCP client")}`,
  },
  // A TypeScript server and a CommonJS client, both run by Deno.
  ivan: {
    cells: [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 1, 1, 1, 1],
    status: "graded",
    error: `${MISSING("UDP server")}; ${MISSING("UDP client")}`,
  },
  // No files at all.
  empty: { cells: COLUMNS.map(() => 0), status: "empty", error: "no files submitted" },
};

/** The Canvas names of the same students, with their user ids. */
const CANVAS: Record<string, { name: string; id: string }> = {
  alice: { name: "smithalice", id: "1001" },
  "Bob Brown": { name: "brownbob", id: "1002" },
  "Zoë Ådahl": { name: "ådahlzoë", id: "1003" },
  dave: { name: "davisdave", id: "1004" },
  erin: { name: "evanserin", id: "1005" },
  frank: { name: "franklinfrank", id: "1006" },
  grace: { name: "hoppergrace", id: "1007" },
  ivan: { name: "ivanovivan", id: "1008" },
};

function notes(): string {
  const skipped = [];
  if (!javaBuilds) skipped.push("no javac: grace's Java server is expected to fail its build");
  if (!python2Runs) {
    skipped.push("no python2: dave's Python 2 client is expected to fail its build");
  }
  if (!ISOLATION.namespaces) skipped.push(`no namespaces: ${ISOLATION.description}`);
  return skipped.join("; ");
}

/** Asserts a gradebook row by row and cell by cell. */
function assertGradebook(
  rows: Record<string, string>[],
  expected: [string, string, Expected][],
) {
  assert.deepEqual(rows.length, expected.length, "one row per student");
  for (const [name, id, want] of expected) {
    const row = rows.find((r) => r.student === name);
    if (row === undefined) throw new Error(`no row for ${name}`);
    assert.deepEqual(row.id, id, `${name}: id`);
    COLUMNS.forEach((column, i) =>
      assert.deepEqual(Number(row[column]), want.cells[i], `${name}: ${column}`)
    );
    const total = want.cells.reduce((a, b) => a + b, 0);
    assert.deepEqual(Number(row.total), total, `${name}: total`);
    assert.deepEqual(Number(row.max), 16, `${name}: max`);
    assert.deepEqual(row.status, want.status, `${name}: status`);
    assert.deepEqual(row.error, want.error, `${name}: error`);
  }
}

Deno.test({
  name: "class grading: the fixture class, in folders and as Canvas files, cell by cell",
  permissions: PERMISSIONS,
  async fn() {
    const note = notes();
    if (note) console.log(`(${note})`);
    const outFolders = await tempDir();
    const outCanvas = await tempDir();
    try {
      const folders = join(FIXTURES, "folders");
      const canvas = join(FIXTURES, "canvas");
      const before = [...await snapshot(folders), ...await snapshot(canvas)];
      const common = ["--assignment", ASSIGNMENT, "--jobs", "2"];
      const runFolders = () => grade(["--class", folders, "--out", outFolders, ...common]);
      const runCanvas = () =>
        grade(["--class", canvas, "--out", outCanvas, "--canvas", "--moodle", ...common]);
      // Without namespaces both runs would need port 12000: one after the other.
      const [a, b] = ISOLATION.namespaces
        ? await Promise.all([runFolders(), runCanvas()])
        : [await runFolders(), await runCanvas()];
      assert.deepEqual(a.code, 0, a.stderr);
      assert.deepEqual(b.code, 0, b.stderr);
      assert.match(a.stderr, /9\/9 done/);
      assert.match(b.stderr, /8\/8 done/);
      assert.deepEqual([...await snapshot(folders), ...await snapshot(canvas)], before);

      // Folders: every student, by folder name.
      const gradebook = readCsv(await Deno.readTextFile(join(outFolders, "gradebook.csv")));
      assert.deepEqual(Object.keys(gradebook[0]), [
        "student",
        "id",
        ...COLUMNS,
        "total",
        "max",
        "status",
        "error",
      ]);
      assertGradebook(gradebook, Object.entries(EXPECTED).map(([name, want]) => [name, "", want]));

      // Canvas: the same grades under Canvas's names and ids (no empty student: Canvas lists none).
      const canvasBook = readCsv(await Deno.readTextFile(join(outCanvas, "gradebook.csv")));
      assertGradebook(
        canvasBook,
        Object.entries(CANVAS).map(([name, { name: canvasName, id }]) => [
          canvasName,
          id,
          // Canvas's files are flat: grace's Java file has no folder there.
          { ...EXPECTED[name], error: EXPECTED[name].error.replace("src/lab2/", "") },
        ]),
      );

      // Feedback and results for every student, under safe file names.
      for (
        const [dir, keys] of [
          [outFolders, [
            "alice",
            "Bob_Brown",
            "Zoë_Ådahl",
            "dave",
            "erin",
            "frank",
            "grace",
            "ivan",
            "empty",
          ]],
          [outCanvas, [
            "smithalice",
            "brownbob",
            "ådahlzoë",
            "davisdave",
            "evanserin",
            "hoppergrace",
          ]],
        ] as const
      ) {
        for (const key of keys) {
          const md = await Deno.readTextFile(join(dir, "feedback", `${key}.md`));
          assert.match(md, /^# Lab 2: the uppercase app over UDP and TCP: feedback for /);
          const json = JSON.parse(await Deno.readTextFile(join(dir, "results", `${key}.json`)));
          assert.deepEqual(json.tests.length, 15, `${key}: one test per check`);
          const sum = json.tests.reduce((n: number, t: { score: number }) => n + t.score, 0);
          assert.deepEqual(json.score, sum, `${key}: score`);
        }
      }

      // What the feedback says: the diff and hint, the build's errors, what was looked for.
      const bob = await Deno.readTextFile(join(outFolders, "feedback", "Bob_Brown.md"));
      assert.match(bob, /the reply differs at byte 1024 \(got 1024 bytes, want 1500\)/);
      assert.match(bob, /Hint: /);
      assert.match(bob, /UnicodeDecodeError/);
      assert(!bob.includes("/tmp/"), "paths are shown as submitted, not in the temporary copy");
      const erin = await Deno.readTextFile(join(outFolders, "feedback", "erin.md"));
      assert.match(erin, /It did not build[\s\S]*gcc [\s\S]*error:/);
      const frank = await Deno.readTextFile(join(outFolders, "feedback", "frank.md"));
      assert.match(
        frank,
        /No TCP server found \(looked for a \.py, \.java, \.c, \.js or \.ts file whose name has TCP and server in it[^)]*files submitted: notes\.txt, report\.pdf\)/,
      );
      const dave = await Deno.readTextFile(join(outFolders, "feedback", "dave.md"));
      if (python2Runs) assert.match(dave, /Python 2: python3 cannot compile it, python2 can/);
      else assert.match(dave, /no python2 to try/);
      if (javaBuilds) {
        const grace = await Deno.readTextFile(join(outFolders, "feedback", "grace.md"));
        assert.match(grace, /java -cp .* lab2\.TCPServer/);
        assert.match(grace, /Port 6789: read from the source/);
      }
      const bobCanvas = await Deno.readTextFile(join(outCanvas, "feedback", "brownbob.md"));
      assert.match(
        bobCanvas,
        /brownbob_1002_50021_TCPServer\.py: an earlier upload of TCPServer\.py/,
      );
      const daveCanvas = await Deno.readTextFile(join(outCanvas, "feedback", "davisdave.md"));
      assert.match(daveCanvas, /Canvas marked this submission late/);

      // The exports, read back.
      const canvasImport = parse(await Deno.readTextFile(join(outCanvas, "canvas_grades.csv")));
      assert.deepEqual(canvasImport[0], [
        "Student",
        "ID",
        "SIS User ID",
        "SIS Login ID",
        "Section",
        "Lab 2: the uppercase app over UDP and TCP",
      ]);
      assert.deepEqual(canvasImport[1], ["    Points Possible", "", "", "", "", "16"]);
      assert(
        canvasImport.some((r: string[]) =>
          r[0] === "smithalice" && r[1] === "1001" && r[5] === "16"
        ),
      );
      const moodle = readCsv(
        await Deno.readTextFile(join(outCanvas, "moodle_grading_worksheet.csv")),
      );
      const alice = moodle.find((r) => r["Full name"] === "smithalice")!;
      assert.deepEqual([alice.Grade, alice["Maximum Grade"], alice.Identifier], ["16", "16", ""]);

      // A second run grades nobody; --only regrades one student; --force all.
      const again = await grade(["--class", folders, "--out", outFolders, ...common]);
      assert.match(again.stderr, /9 student\(s\) unchanged since the last run/);
      assert.match(again.stderr, /Grading 0 of 9 student/);
      assert.deepEqual(
        readCsv(await Deno.readTextFile(join(outFolders, "gradebook.csv"))),
        gradebook,
      );
      const only = await grade([
        "--class",
        folders,
        "--out",
        outFolders,
        ...common,
        "--only",
        "zoë ådahl",
      ]);
      assert.deepEqual(only.code, 0, only.stderr);
      assert.match(only.stderr, /Grading 1 of 9 student/);
      assert.deepEqual(
        readCsv(await Deno.readTextFile(join(outFolders, "gradebook.csv"))),
        gradebook,
      );
    } finally {
      await removeDir(outFolders);
      await removeDir(outCanvas);
    }
  },
});

Deno.test({
  name:
    "class grading: a hostile student (an escaped child, a 64 MiB flood, a client that never exits) " +
    "costs only their own grade",
  permissions: PERMISSIONS,
  async fn() {
    const out = await tempDir();
    try {
      const dir = join(FIXTURES, "hostile");
      const { code, stderr } = await grade([
        "--class",
        dir,
        "--out",
        out,
        "--assignment",
        join(dir, "assignment.json"),
      ]);
      assert.deepEqual(code, 0, stderr);
      const [row] = readCsv(await Deno.readTextFile(join(out, "gradebook.csv")));
      assert.deepEqual(
        [row.student, row["tcp_server.basic"], row["tcp_client.basic"], row.status],
        [
          "mallory",
          "0",
          "0",
          "graded",
        ],
      );
      const md = await Deno.readTextFile(join(out, "feedback", "mallory.md"));
      assert.match(md, /cut: only its first 1048576 bytes were kept/);
      assert.match(md, /the client reached no server in 2 s and was killed/);
      const { stdout } = await new Deno.Command("pgrep", {
        args: ["-f", "sleep 4242.5"],
        stdout: "piped",
      }).output();
      const left = new TextDecoder().decode(stdout).trim().split("\n").filter(Boolean);
      for (const pid of left) Deno.kill(Number(pid), "SIGKILL"); // a failed test cleans up too
      // The process that left its group: gone with the student's namespace,
      // or, without one, killed as a process still running in the student's copy.
      assert.deepEqual(left, [], "the escaped child was killed");
    } finally {
      await removeDir(out);
    }
  },
});

Deno.test({
  name: "class grading: the assignment file picks the file, the command, the port and the points",
  permissions: PERMISSIONS,
  async fn() {
    const dir = await tempDir();
    try {
      // main.py would not be found by its name; it takes HOST PORT arguments.
      await sh(
        `mkdir -p "$1/class/kim" && cp "$2" "$1/class/kim/main.py" && cat > "$1/a.json" <<'EOF'
{
  "roles": ["tcp_server"],
  "checks": { "tcp_server": ["basic", "utf8"] },
  "points": { "tcp_server.utf8": 2.5 },
  "programs": { "tcp_server": { "files": ["MAIN.py"], "command": "python3 {file} '' 12345", "port": 12345 } }
}
EOF`,
        dir,
        join(ROOT, "tests", "fixtures", "good", "tcp_server.py"),
      );
      const run = await grade([
        "--class",
        join(dir, "class"),
        "--out",
        join(dir, "out"),
        "--assignment",
        join(dir, "a.json"),
      ]);
      assert.equal(run.code, 0, run.stderr);
      const [row] = readCsv(await Deno.readTextFile(join(dir, "out", "gradebook.csv")));
      assert.deepEqual(row, {
        student: "kim",
        id: "",
        "tcp_server.basic": "1",
        "tcp_server.utf8": "2.5",
        total: "3.5",
        max: "3.5",
        status: "graded",
        error: "",
      });
      const results = JSON.parse(await Deno.readTextFile(join(dir, "out", "results", "kim.json")));
      assert.deepEqual(results.tests.map((t: { max_score: number }) => t.max_score), [1, 2.5]);
      assert.equal(results.score, 3.5);
    } finally {
      await removeDir(dir);
    }
  },
});

Deno.test({
  name: "class grading: bad requests are one-line errors with exit code 2",
  permissions: PERMISSIONS,
  async fn() {
    const out = await tempDir();
    try {
      const noFolder = await grade(["--class", join(FIXTURES, "nonexistent"), "--out", out]);
      assert.deepEqual(noFolder.code, 2);
      assert.match(noFolder.stderr.trim(), /^error: .*nonexistent is not a folder of submissions$/);
      const noOut = await grade(["--class", FIXTURES]);
      assert.deepEqual(noOut.code, 2);
      assert.match(noOut.stderr.trim(), /^error: --class DIR and --out OUT are both needed/);
      const badJobs = await grade(["--class", FIXTURES, "--out", out, "--jobs", "0"]);
      assert.deepEqual(badJobs.code, 2);
      await sh(`printf '{"roles": ["web"]}' > "$1/bad.json"`, out);
      const badAssignment = await grade([
        "--class",
        join(FIXTURES, "folders"),
        "--out",
        out,
        "--assignment",
        join(out, "bad.json"),
      ]);
      assert.deepEqual(badAssignment.code, 2);
      assert.match(
        badAssignment.stderr.trim(),
        /^error: .*bad\.json: "roles" names an unknown role "web"/,
      );
      const unknown = await grade([
        "--class",
        join(FIXTURES, "folders"),
        "--out",
        out,
        "--only",
        "zed",
      ]);
      assert.deepEqual(unknown.code, 2);
      assert.match(unknown.stderr, /No student named "zed"/);
      for (const run of [noFolder, noOut, badJobs, badAssignment, unknown]) {
        assert(!run.stderr.includes("    at "), `no stack trace: ${run.stderr}`);
      }
    } finally {
      await removeDir(out);
    }
  },
});

Deno.test({
  name: "class grading: Moodle folders, Canvas resubmissions and late files, names with spaces",
  permissions: PERMISSIONS,
  async fn() {
    const dir = await tempDir();
    try {
      await sh(
        `cd "$1" &&
        mkdir -p "Zoë Ådahl_501_assignsubmission_file_/lab" "Zoë Ådahl_501_assignsubmission_onlinetext_" \
          "Li Wei_502_assignsubmission_file_" "__MACOSX" &&
        echo x > "Zoë Ådahl_501_assignsubmission_file_/lab/TCPServer.py" &&
        echo x > "Zoë Ådahl_501_assignsubmission_onlinetext_/onlinetext.html" &&
        echo x > "Li Wei_502_assignsubmission_file_/udp_client.c" &&
        echo x > "doejane_LATE_77_1_UDPServer.py" && echo x > "doejane_77_2_UDPServer-2.py" &&
        echo x > "doejane_77_3_UDPServer-1.py" && echo x > "stray.txt"`,
        dir,
      );
      const { students, ignored } = await findStudents(dir);
      const summary = students.map((
        s,
      ) => [s.name, s.id, s.layout, s.late, s.files.map((f) => f.name)]);
      assert.deepEqual(summary, [
        ["doejane", "77", "canvas", true, ["UDPServer.py"]],
        ["Li Wei", "502", "moodle", false, ["udp_client.c"]],
        ["Zoë Ådahl", "501", "moodle", false, ["lab/TCPServer.py", "onlinetext.html"]],
      ]);
      // The latest of three uploads of UDPServer.py is graded; the others are noted.
      assert.deepEqual(ignored, [
        "stray.txt: a file outside any student's folder, and not named as Canvas names files",
      ]);
      assert.deepEqual(students[0].notes.length, 2);
      assert.deepEqual(students[0].files[0].path, join(dir, "doejane_77_2_UDPServer-2.py"));
      assert.deepEqual(students.map((s) => s.key), ["doejane", "Li_Wei", "Zoë_Ådahl"]);
    } finally {
      await removeDir(dir);
    }
  },
});

Deno.test("class grading: roles from file names, ports from sources, safe names, assignments", () => {
  const names: [string, string | undefined][] = [
    ["TCPServer.py", "tcp_server"],
    ["tcp_server.c", "tcp_server"],
    ["UDPClient.java", "udp_client"],
    ["udpclient.py", "udp_client"],
    ["src/Lab2_TCP_Server.java", "tcp_server"],
    ["Server.py", "server"],
    ["notes.txt", undefined],
  ];
  for (const [name, role] of names) assert.deepEqual(roleFromName(name), role, name);
  assert.deepEqual(portFromSource("serverPort = 12000"), 12000);
  assert.deepEqual(portFromSource("new DatagramSocket(9876);"), 9876);
  assert.deepEqual(portFromSource("addr.sin_port = htons(5000);"), 5000);
  assert.deepEqual(portFromSource("#define PORT 8080"), 8080);
  assert.deepEqual(portFromSource("s.bind(('', 12001))"), 12001);
  assert.deepEqual(portFromSource("a = 12000\nb = 13000\nport = 1\nPORT = 2"), undefined);
  assert.deepEqual(safeName("José García / 2"), "José_García_2");
  assert.deepEqual(safeName("王小明"), "王小明");
  const assignment = parseAssignment({
    points: { default: 2, tcp_server: 3, "tcp_server.basic": 5 },
  }, "a");
  assert.deepEqual(assignment.points["tcp_server.basic"], 5);
  assert.deepEqual(assignment.points["tcp_server.utf8"], 3);
  assert.deepEqual(assignment.points["udp_client.basic"], 2);
});
