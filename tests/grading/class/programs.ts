/**
 * Finds each role's program among a student's files, and builds it in the
 * student's temporary copy: by file name (TCPServer.py, tcp_server.c,
 * UDPClient.java, udpclient.py..., case-insensitive; where a name says
 * "server" or "client" but not which transport, by what the source uses),
 * its language by extension.
 *
 * - Python: python3 if it compiles the file; else python2 where it exists
 *   and compiles it (the feedback says which ran).
 * - Java: `javac -d` into a build folder (with the other .java files of its
 *   folder if it needs them), run as `java -cp BUILD package.Class`.
 * - C: gcc. JavaScript and TypeScript: deno (a .js file that uses
 *   `require()` runs as CommonJS).
 *
 * A program without `{port}` uses its role's fixed port: the one the
 * assignment file gives, else the one its source hard-codes (when it names
 * exactly one), else 12000.
 *
 * @module
 */
import { basename, dirname, extname, join } from "node:path";
import { type Role, ROLE_LABEL } from "../config.ts";
import { ProgramProcess, shellQuote } from "../process.ts";
import { type Assignment, matchesPattern } from "./assignment.ts";

/** The languages the kit builds and runs. */
export type Language = "python" | "java" | "c" | "javascript" | "typescript";

const EXTENSIONS: Record<string, Language> = {
  ".py": "python",
  ".java": "java",
  ".c": "c",
  ".js": "javascript",
  ".mjs": "javascript",
  ".cjs": "javascript",
  ".ts": "typescript",
  ".mts": "typescript",
};

/** When two files could be a role's program, the first language here wins. */
const PREFERENCE: Language[] = ["python", "java", "c", "javascript", "typescript"];

/** Seconds a build step may take. */
const BUILD_SECONDS = 60;
/** Characters of a compiler's output kept for the feedback. */
const BUILD_OUTPUT_CHARS = 8000;

/** The port a program uses when nothing says otherwise: the textbook's. */
export const TEXTBOOK_PORT = 12000;

/** Which interpreters and compilers this machine has. */
export interface Toolchain {
  /** The python3 to run Python 3 programs with, if any. */
  python3?: string;
  /** A python2 that runs (not a shim without its version), if any. */
  python2?: string;
  /** The Java compiler, if any. */
  javac?: string;
  /** The Java launcher, if any. */
  java?: string;
  /** The C compiler, if any. */
  gcc?: string;
  /** This Deno, for JavaScript and TypeScript programs. */
  deno: string;
}

/** One role's program, ready to run, or why there is none. */
export interface RoleProgram {
  /** The role this program plays. */
  role: Role;
  /** "ready" to run; "missing" (no file found); "failed" (it did not build). */
  state: "ready" | "missing" | "failed";
  /** The program's file, as named in the submission. */
  file?: string;
  /** "Python 3", "Python 2 (python3 cannot compile it)", "Java", "C (gcc)"... */
  language?: string;
  /** The command template, run in the temporary copy. */
  template?: string;
  /** Its fixed port (used when the template has no {port}). */
  port: number;
  /** Why it is missing, or the build's output. */
  problem?: string;
  /** Things worth saying in the feedback: where the port came from, files not graded. */
  notes: string[];
}

/**
 * Looks up the interpreters and compilers on the PATH.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const tools = await findToolchain();
 * assert.equal(tools.deno, Deno.execPath()); // javac, gcc, python2... where installed
 * ```
 */
export async function findToolchain(): Promise<Toolchain> {
  const [python3, python2, javac, java, gcc] = await Promise.all([
    findPython(3),
    findPython(2),
    which("javac"),
    which("java"),
    which("gcc"),
  ]);
  const tools: Toolchain = { deno: Deno.execPath() };
  if (python3) tools.python3 = python3;
  if (python2) tools.python2 = python2;
  if (javac) tools.javac = javac;
  if (java) tools.java = java;
  if (gcc) tools.gcc = gcc;
  return tools;
}

/**
 * The command of a Python of that major version that really runs:
 * `python3`; `python2` or `python2.7`, else the full path of one installed
 * by pyenv (whose `python2` shim on the PATH fails unless that version is
 * selected).
 */
async function findPython(major: 2 | 3): Promise<string | undefined> {
  const check = `import sys; sys.exit(0 if sys.version_info[0] == ${major} else 1)`;
  const candidates = major === 3 ? ["python3"] : ["python2", "python2.7"];
  const pyenv = await run("sh", ["-c", "pyenv root 2>/dev/null"]);
  if (major === 2 && pyenv.ok && pyenv.out.trim()) {
    const versions = `${pyenv.out.trim()}/versions`;
    try {
      for await (const entry of Deno.readDir(versions)) {
        if (entry.name.startsWith("2.")) candidates.push(`${versions}/${entry.name}/bin/python2`);
      }
    } catch {
      // No versions folder.
    }
  }
  for (const candidate of candidates) {
    if ((await run(candidate, ["-c", check])).ok) return candidate;
  }
  return undefined;
}

async function run(program: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const { success, stdout } = await new Deno.Command(program, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    return { ok: success, out: new TextDecoder().decode(stdout) };
  } catch {
    return { ok: false, out: "" };
  }
}

async function which(name: string): Promise<string | undefined> {
  const { ok, out } = await run("sh", ["-c", 'command -v "$1"', "sh", name]);
  return ok && out.trim() ? out.trim() : undefined;
}

/** The role a file name says, if any: "TCPServer.py" -> tcp_server. */
export function roleFromName(name: string): Role | "server" | "client" | undefined {
  const words = basename(name, extname(name)).toLowerCase().replace(/[^a-z]/g, "");
  const side = /serv/.test(words) ? "server" : /client|cli/.test(words) ? "client" : undefined;
  if (side === undefined) return undefined;
  const tcp = words.includes("tcp");
  const udp = words.includes("udp");
  if (tcp === udp) return side; // neither (or both): the source decides
  return `${tcp ? "tcp" : "udp"}_${side}`;
}

/** "tcp" or "udp", from what the source uses, if it says clearly. */
function transportFromSource(source: string): "tcp" | "udp" | undefined {
  const udp =
    /SOCK_DGRAM|DatagramSocket|DatagramPacket|createSocket\(\s*['"]udp|listenDatagram|node:dgram|['"]dgram['"]/
      .test(source);
  const tcp =
    /SOCK_STREAM|ServerSocket|new\s+Socket\s*\(|create_server|create_connection|net\.createServer|net\.connect|Deno\.listen\(|Deno\.connect\(|['"](node:)?net['"]/
      .test(source);
  if (udp === tcp) return undefined;
  return udp ? "udp" : "tcp";
}

/**
 * The port a program hard-codes, when its source names exactly one:
 * `serverPort = 12000`, `PORT = 5000`, `new ServerSocket(6789)`,
 * `htons(9000)`, `#define PORT 8080`, `bind(('', 12000))`,
 * `(serverName, 12000)`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(portFromSource("serverPort = 6789\n"), 6789);
 * assert.deepEqual(portFromSource("ServerSocket s = new ServerSocket(5000);"), 5000);
 * assert.deepEqual(portFromSource("port = int(sys.argv[1])"), undefined);
 * ```
 */
export function portFromSource(source: string): number | undefined {
  const patterns = [
    /\b\w*port\w*\s*(?::\s*\w+\s*)?[:=]\s*(\d{2,5})\b/gi,
    /#define\s+\w*PORT\w*\s+(\d{2,5})\b/gi,
    /\b(?:ServerSocket|DatagramSocket)\s*\(\s*(\d{2,5})\s*[,)]/g,
    /\bhtons\s*\(\s*(\d{2,5})\s*\)/g,
    /\(\s*\(\s*(?:['"][^'"\n]*['"]|\w+)\s*,\s*(\d{2,5})\s*\)\s*\)/g,
    /\bport\s*:\s*(\d{2,5})\b/gi,
  ];
  const ports = new Set<number>();
  for (const pattern of patterns) {
    for (const match of source.matchAll(pattern)) {
      const port = Number(match[1]);
      if (port >= 1 && port <= 65535) ports.add(port);
    }
  }
  return ports.size === 1 ? [...ports][0] : undefined;
}

/** "a .py, .java, .c, .js or .ts file whose name has TCP and server in it (TCPServer.py, tcp_server.c)". */
function lookedFor(role: Role): string {
  const [transport, side] = role.split("_");
  const upper = transport.toUpperCase();
  const camel = `${upper}${side[0].toUpperCase()}${side.slice(1)}`;
  return `looked for a .py, .java, .c, .js or .ts file whose name has ${upper} and ${side} in it, ` +
    `like ${camel}.py, ${role}.c or ${camel.toLowerCase()}.java`;
}

/**
 * Picks each graded role's program among `names` (paths relative to the
 * student's copy), reading sources from `dir` where a name leaves the
 * transport open.
 */
export async function pickPrograms(
  names: string[],
  dir: string,
  assignment: Assignment,
): Promise<Map<Role, { file?: string; notes: string[] }>> {
  const candidates = new Map<Role, { file: string; how?: string }[]>();
  const add = (role: Role, file: string, how?: string) => {
    const list = candidates.get(role) ?? [];
    list.push({ file, how });
    candidates.set(role, list);
  };
  const programs = names.filter((name) => EXTENSIONS[extname(name).toLowerCase()] !== undefined);
  for (const name of programs) {
    const role = roleFromName(name);
    if (role === undefined) continue;
    if (role === "server" || role === "client") {
      const source = await Deno.readTextFile(join(dir, name)).catch(() => "");
      const transport = transportFromSource(source);
      if (transport) {
        add(
          `${transport}_${role}`,
          name,
          `its name says ${role}, its source uses ${transport.toUpperCase()}`,
        );
      }
      continue;
    }
    add(role, name);
  }

  const picked = new Map<Role, { file?: string; notes: string[] }>();
  for (const role of assignment.roles) {
    const notes: string[] = [];
    const patterns = assignment.programs[role]?.files;
    if (patterns) {
      const file = patterns.map((p) => names.find((name) => matchesPattern(name, p)))
        .find((f) => f !== undefined);
      picked.set(role, { file, notes });
      continue;
    }
    const list = (candidates.get(role) ?? []).sort((a, b) =>
      rank(a.file) - rank(b.file) || a.file.length - b.file.length || a.file.localeCompare(b.file)
    );
    const [first, ...others] = list;
    if (first?.how) {
      notes.push(`${first.file} was taken for the ${ROLE_LABEL[role]}: ${first.how}.`);
    }
    if (others.length > 0) {
      notes.push(
        `Also found ${others.map((o) => o.file).join(", ")}; graded ${first.file} only.`,
      );
    }
    picked.set(role, { file: first?.file, notes });
  }
  return picked;
}

function rank(file: string): number {
  return PREFERENCE.indexOf(EXTENSIONS[extname(file).toLowerCase()]);
}

/** Options for {@linkcode prepareProgram}. */
export interface PrepareOptions {
  /** The role the program plays. */
  role: Role;
  /** The program's file relative to `dir`, or undefined if none was found. */
  file: string | undefined;
  /** The student's temporary copy. */
  dir: string;
  /** Every file of the submission, for the "looked for" message. */
  names: string[];
  /** The assignment (commands and ports it overrides). */
  assignment: Assignment;
  /** The interpreters and compilers found. */
  tools: Toolchain;
  /** Where to add what the student should know (which Python ran it, say). */
  notes: string[];
}

/**
 * Builds one role's program in the student's copy and returns how to run it.
 * Never throws for the student's mistakes: a failed build is a result.
 */
export async function prepareProgram(options: PrepareOptions): Promise<RoleProgram> {
  const { role, file, dir, names, assignment, tools, notes } = options;
  const override = assignment.programs[role] ?? {};
  if (file === undefined) {
    const given = names.length === 0
      ? "the submission has no files"
      : `files submitted: ${names.slice(0, 12).join(", ")}${names.length > 12 ? ", ..." : ""}`;
    const how = override.files
      ? `looked for a file matching ${override.files.join(" or ")}, as the assignment file says`
      : lookedFor(role);
    return {
      role,
      state: "missing",
      port: override.port ?? TEXTBOOK_PORT,
      problem: `no ${ROLE_LABEL[role]} found (${how}; ${given})`,
      notes,
    };
  }

  const source = await Deno.readTextFile(join(dir, file)).catch(() => "");
  let port = override.port;
  if (port === undefined) {
    const hardCoded = portFromSource(source);
    if (hardCoded !== undefined && hardCoded !== TEXTBOOK_PORT) {
      notes.push(`Port ${hardCoded}: read from the source (it hard-codes it).`);
    }
    port = hardCoded ?? TEXTBOOK_PORT;
  }
  const build = join(".build", role);
  await Deno.mkdir(join(dir, build), { recursive: true });
  const values = { file: shellQuote(file), build: shellQuote(build), class: "" };
  const result = (fields: Partial<RoleProgram>): RoleProgram => ({
    role,
    state: "ready",
    file,
    port: port!,
    notes,
    ...fields,
  });

  if (override.build) {
    const built = await runBuild(fill(override.build, values), dir);
    if (!built.ok) {
      return result({ state: "failed", language: "custom build", problem: built.output });
    }
  }
  const language = EXTENSIONS[extname(file).toLowerCase()];
  if (override.command) {
    values.class = language === "java" ? javaClass(file, source) : "";
    if (language === "java" && !override.build) {
      const built = await buildJava(file, dir, build, tools);
      if (!built.ok) return result({ state: "failed", language: "Java", problem: built.output });
    }
    return result({ language: "custom command", template: fill(override.command, values) });
  }

  switch (language) {
    case "python":
      return await preparePython(file, dir, tools, result);
    case "java": {
      if (!tools.javac || !tools.java) {
        return result({
          state: "failed",
          language: "Java",
          problem: "this machine has no javac or java to build and run Java programs",
        });
      }
      const built = override.build
        ? { ok: true, output: "" }
        : await buildJava(file, dir, build, tools);
      if (!built.ok) return result({ state: "failed", language: "Java", problem: built.output });
      const template = `java -cp ${shellQuote(build)} ${shellQuote(javaClass(file, source))}`;
      return result({ language: "Java", template });
    }
    case "c": {
      if (!tools.gcc) {
        return result({
          state: "failed",
          language: "C",
          problem: "this machine has no gcc to build C programs",
        });
      }
      const program = `${build}/program`;
      if (!override.build) {
        const built = await runBuild(
          `gcc -O1 -pthread -o ${shellQuote(program)} ${shellQuote(file)} -lm`,
          dir,
        );
        if (!built.ok) {
          return result({ state: "failed", language: "C (gcc)", problem: built.output });
        }
      }
      return result({ language: "C (gcc)", template: `./${shellQuote(program)}` });
    }
    case "javascript":
    case "typescript": {
      let script = file;
      if (
        language === "javascript" && /\brequire\s*\(/.test(source) && !/^\s*import\s/m.test(source)
      ) {
        // Node's CommonJS: Deno runs it as such under a .cjs name.
        script = join(build, basename(file, extname(file)) + ".cjs");
        await Deno.copyFile(join(dir, file), join(dir, script));
      }
      const template = `${shellQuote(tools.deno)} run --no-prompt --no-config --no-lock ` +
        `--unstable-net --allow-net --allow-read --allow-env ${shellQuote(script)}`;
      return result({
        language: language === "javascript" ? "JavaScript (Deno)" : "TypeScript (Deno)",
        template,
      });
    }
  }
  return result({ state: "failed", problem: `${file}: not a language the kit runs` });
}

type Result = (fields: Partial<RoleProgram>) => RoleProgram;

/** Python 3 if it compiles the file, else Python 2 where it exists and does. */
async function preparePython(file: string, dir: string, tools: Toolchain, result: Result) {
  const compile = (python: string) =>
    runBuild(
      `${shellQuote(python)} -c ${
        shellQuote("import sys; compile(open(sys.argv[1], 'rb').read(), sys.argv[1], 'exec')")
      } ${shellQuote(file)}`,
      dir,
    );
  if (!tools.python3 && !tools.python2) {
    return result({
      state: "failed",
      language: "Python",
      problem: "this machine has no python3 or python2",
    });
  }
  const three = tools.python3 ? await compile(tools.python3) : undefined;
  if (three?.ok) {
    return result({
      language: "Python 3",
      template: `${shellQuote(tools.python3!)} ${shellQuote(file)}`,
    });
  }
  if (tools.python2) {
    const two = await compile(tools.python2);
    if (two.ok) {
      return result({
        language: tools.python3 ? "Python 2: python3 cannot compile it, python2 can" : "Python 2",
        template: `${shellQuote(tools.python2)} ${shellQuote(file)}`,
      });
    }
  }
  const why = three?.output ?? "";
  const tried = tools.python2
    ? "Neither python3 nor python2 can compile it."
    : "python3 cannot compile it, and this machine has no python2 to try (Python 2 code?).";
  return result({ state: "failed", language: "Python", problem: `${tried}\n${why}`.trim() });
}

/** javac into `build`: the file alone, else with the other .java files of its folder. */
async function buildJava(file: string, dir: string, build: string, tools: Toolchain) {
  if (!tools.javac) return { ok: false, output: "this machine has no javac" };
  const javac = `javac -encoding UTF-8 -nowarn -d ${shellQuote(build)}`;
  const alone = await runBuild(`${javac} ${shellQuote(file)}`, dir);
  if (alone.ok) return alone;
  const folder = dirname(file);
  const siblings = [];
  for await (const entry of Deno.readDir(join(dir, folder))) {
    if (entry.isFile && entry.name.toLowerCase().endsWith(".java")) {
      siblings.push(join(folder, entry.name));
    }
  }
  if (siblings.length < 2) return alone;
  const together = await runBuild(`${javac} ${siblings.map(shellQuote).join(" ")}`, dir);
  return together.ok ? together : alone;
}

/** The class to run: the file's name, with the package its source declares. */
function javaClass(file: string, source: string): string {
  const name = basename(file, extname(file));
  const pkg = /^\s*package\s+([\w.]+)\s*;/m.exec(source)?.[1];
  return pkg ? `${pkg}.${name}` : name;
}

/** Runs a build command in `dir` with a deadline; its output is kept for the feedback, cut to a bound. */
async function runBuild(command: string, dir: string): Promise<{ ok: boolean; output: string }> {
  const program = ProgramProcess.spawn({ command, cwd: dir });
  try {
    const done = await program.waitUntil(() => !program.running, BUILD_SECONDS * 1000);
    if (!done) {
      return {
        ok: false,
        output: `${command}\nthe build took longer than ${BUILD_SECONDS} s and was stopped`,
      };
    }
    await program.drain(1000);
    const ok = program.exitedCleanly;
    let output = (program.stdoutText() + program.stderrText()).trim();
    if (output.length > BUILD_OUTPUT_CHARS) {
      output = `${
        output.slice(0, BUILD_OUTPUT_CHARS)
      }\n... (cut: ${output.length} characters in all)`;
    }
    return {
      ok,
      output: ok
        ? output
        : `$ ${command}\n${output || `(no output; it ${program.describeExit()})`}`,
    };
  } finally {
    await program.stop();
  }
}

function fill(template: string, values: Record<string, string>): string {
  return template.replace(/\{(file|build|class)\}/g, (_, key) => values[key]);
}
