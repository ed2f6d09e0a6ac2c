/**
 * The docs check (`deno task docs`): runs every shell command shown in the
 * project's documents, in bash and in zsh, and compares the output where
 * the document shows it. A document whose commands have gone stale fails.
 *
 * What it reads, in README.md, docs/*.md and bench/README.md:
 *
 * - Every ```sh block is run, one command line at a time (lines ending in
 *   `\` continue), from a copy of the project, as a reader would type them.
 *   Lines that only set state (`export X=...`, `cd DIR`, `X=...`) are
 *   repeated before every later command of the block.
 * - A trailing comment says what to expect: `# prints: TEXT` (TEXT appears
 *   in the output; `...` matches anything), `exits N` (the exit code; 0
 *   otherwise), "type hello, Enter, then Ctrl-D" (stdin gets `hello` and a
 *   newline, then ends), "Ctrl-C to quit" (the command is stopped with
 *   SIGINT once the expected output appeared).
 * - A server (a command that runs `*_server.ts` or a `*-server` task) is
 *   started in the background; the block waits for its ready line, runs
 *   the rest, then stops it with SIGINT (Ctrl-C) and checks that it said
 *   `The server has shut down.` and exited 0.
 * - An HTML comment right before a block changes that:
 *   `<!-- check: skip: REASON -->` does not run it (every shell block in
 *   another language, powershell say, needs one too);
 *   `<!-- check: needs: javac, python2 -->` runs it only where those exist;
 *   `<!-- check: servers: tcp, udp -->` starts this project's servers first
 *   (for commands that talk to the servers a reader already started);
 *   `<!-- check: output -->` before a text block: each of its lines (but
 *   `...`) appears, in order, in the output of the last command before it.
 *
 * The commands run in a network namespace of their own where the system
 * allows one (`unshare -rn`), so the documents' port 12000 is free however
 * many servers run on this machine; elsewhere, only when 12000 is free.
 *
 * ```sh
 * deno task docs                 # every document, bash and zsh
 * deno task docs README.md       # one document
 * deno task docs --shell=zsh     # one shell
 * ```
 *
 * @module
 */
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ProgramProcess, shellQuote } from "./grading/process.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DOCUMENTS = ["README.md", "docs", "bench/README.md"];
const SHELL_LANGUAGES = new Set([
  "sh",
  "bash",
  "zsh",
  "shell",
  "console",
  "powershell",
  "ps1",
  "cmd",
]);
const SERVER = /\bdeno run\b.*\b(?:tcp|udp)_server\.ts\b|\btask (?:tcp|udp)-server\b/;
/** A server's ready line: the textbook's, or "Listening at" in the session mode (seed 001). */
const READY = /^(?:The server is ready to receive|Listening at )/m;
const GOODBYE = "The server has shut down.";
/** A command's limit; the grading examples are the slowest (about 30 s). */
const COMMAND_MS = 120_000;
const READY_MS = 30_000;

/** One fenced block and what the comments before it say. */
export interface Block {
  /** The document, relative to the project. */
  file: string;
  /** The line of the opening fence (1-based). */
  line: number;
  /** The fence's language: sh, text, json... */
  language: string;
  /** The lines between the fences. */
  lines: string[];
  /** Why the block is not run (`<!-- check: skip: REASON -->`). */
  skip?: string;
  /** Tools the block needs (`<!-- check: needs: javac -->`). */
  needs: string[];
  /** A text block marked `<!-- check: output -->`. */
  output: boolean;
  /** This project's servers to start first (`<!-- check: servers: tcp, udp -->`). */
  servers: string[];
}

/** One command of a block, with what its comment expects. */
export interface Command {
  /** Its line in the document. */
  line: number;
  /** The command, continuation lines joined, without the comment. */
  text: string;
  /** Texts the output must show (`# prints: TEXT`). */
  prints: string[];
  /** The exit code expected (`exits N`; 0 otherwise). */
  exits: number;
  /** Whether a reader types `hello` and Enter (then Ctrl-D or Ctrl-C). */
  typed: boolean;
  /** Whether the reader stops it with Ctrl-C. */
  ctrlC: boolean;
  /** Whether it starts one of this project's servers (run in the background). */
  server: boolean;
  /** Whether it only sets state (`export`, `cd`, `X=...`), repeated before later commands. */
  state: boolean;
}

/**
 * Finds the fenced blocks of a Markdown text, with the `check:` directives
 * in the HTML comments just before each.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const fence = "`".repeat(3);
 * const text = `<!-- check: skip: slow -->\n\n${fence}sh\nls\n${fence}\n`;
 * const [block] = parseBlocks("x.md", text);
 * assert.equal(block.skip, "slow");
 * assert.deepEqual(block.lines, ["ls"]);
 * ```
 */
export function parseBlocks(file: string, text: string): Block[] {
  const blocks: Block[] = [];
  const lines = text.split("\n");
  const none = () => ({ needs: [] as string[], servers: [] as string[], output: false });
  let pending: { skip?: string; needs: string[]; servers: string[]; output: boolean } = none();
  for (let i = 0; i < lines.length; i++) {
    const directive = lines[i].match(
      /^<!--\s*check:\s*(skip|needs|servers|output)\s*:?\s*(.*?)\s*-->$/,
    );
    if (directive) {
      const [, kind, value] = directive;
      if (kind === "skip") pending.skip = value || "no reason given";
      if (kind === "needs") pending.needs.push(...value.split(/[\s,]+/).filter(Boolean));
      if (kind === "servers") pending.servers.push(...value.split(/[\s,]+/).filter(Boolean));
      if (kind === "output") pending.output = true;
      continue;
    }
    const fence = lines[i].match(/^(`{3,})\s*([\w-]*)/);
    if (!fence) {
      if (lines[i].trim() !== "") pending = none();
      continue;
    }
    const body: string[] = [];
    let j = i + 1;
    while (j < lines.length && !lines[j].startsWith(fence[1])) body.push(lines[j++]);
    blocks.push({ file, line: i + 1, language: fence[2], lines: body, ...pending });
    pending = none();
    i = j;
  }
  return blocks;
}

/**
 * Splits a block into commands: continuation lines joined, comment-only
 * lines dropped, each trailing comment read for what it expects.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const [command] = parseCommands(["nc -u localhost 12000  # prints: HELLO; Ctrl-C to quit"], 1);
 * assert.equal(command.text, "nc -u localhost 12000");
 * assert.deepEqual(command.prints, ["HELLO"]);
 * assert.equal(command.ctrlC, true);
 * ```
 */
export function parseCommands(lines: string[], firstLine: number): Command[] {
  const commands: Command[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = firstLine + i;
    let text = lines[i];
    while (text.endsWith("\\") && i + 1 < lines.length) text = text.slice(0, -1) + lines[++i];
    const [code, comment] = splitComment(text);
    if (code.trim() === "") {
      // A comment on a line of its own expects output of the command before it.
      const last = commands.at(-1);
      const prints = comment.match(/prints: (.*)$/);
      if (last && prints) last.prints.push(prints[1].trim());
      continue;
    }
    const prints = comment.match(/prints: (.*?)(?:; Ctrl-C to quit)?$/);
    commands.push({
      line,
      text: code.trim(),
      prints: prints ? [prints[1].trim()] : [],
      exits: Number(comment.match(/\bexits (\d+)/)?.[1] ?? 0),
      typed: /Ctrl-D/.test(comment) || /Ctrl-C to quit/.test(comment),
      ctrlC: /Ctrl-C to quit/.test(comment),
      server: SERVER.test(code) && !/--help/.test(code) && !/\bexits [1-9]/.test(comment),
      state: /^(export |cd |[A-Za-z_][A-Za-z0-9_]*=\S*$)/.test(code.trim()),
    });
  }
  return commands;
}

/** Splits `code  # comment` at the first `#` outside quotes that starts a word. */
function splitComment(text: string): [string, string] {
  let quote = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === quote) quote = "";
    } else if (c === "'" || c === '"') {
      quote = c;
    } else if (c === "#" && (i === 0 || /\s/.test(text[i - 1]))) {
      return [text.slice(0, i), text.slice(i + 1).trim()];
    }
  }
  return [text, ""];
}

/** Whether `expected` (with `...` matching anything) appears in `output`. */
function shows(output: string, expected: string): boolean {
  const pattern = expected.split("...").map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join("[\\s\\S]*?");
  return new RegExp(pattern).test(output);
}

/** Whether the lines of `shown` appear in `output` in order (`...` lines skipped). */
function showsInOrder(output: string, shown: string[]): string | undefined {
  let from = 0;
  for (const line of shown) {
    const wanted = line.trimEnd();
    if (wanted.trim() === "" || wanted.trim() === "...") continue;
    const rest = output.slice(from);
    const pattern = wanted.split("...").map((part) =>
      part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(
        /\\\(\d+\\\.\d s\\\)/g,
        "\\(\\d+\\.\\d s\\)",
      )
    ).join(".*?");
    const match = new RegExp(pattern).exec(rest);
    if (!match) return wanted;
    from += match.index + match[0].length;
  }
  return undefined;
}

/** The outcome of one block in one shell. */
interface Outcome {
  failures: string[];
  ran: number;
}

/** Runs one block's commands in `shell`, in the project copy. */
async function runBlock(
  block: Block,
  shell: string,
  project: string,
): Promise<Outcome & { lastOutput: string }> {
  const started = block.servers.map((transport) => `deno run --allow-net ${transport}_server.ts`);
  const commands = [
    ...parseCommands(started, block.line),
    ...parseCommands(block.lines, block.line + 1),
  ];
  const failures: string[] = [];
  const servers: { command: Command; program: ProgramProcess }[] = [];
  const state: string[] = [];
  let lastOutput = "";
  const where = (command: Command) => `${block.file}:${command.line} (${shell}): ${command.text}`;
  const spawn = (command: Command) =>
    ProgramProcess.spawn({
      command: `exec ${shell} -c ${shellQuote([...state, command.text].join("\n"))}`,
      cwd: project,
      input: command.typed ? new TextEncoder().encode("hello\n") : undefined,
    });
  try {
    for (const command of commands) {
      if (command.server) {
        const program = spawn(command);
        servers.push({ command, program });
        const ready = await program.waitUntil(() => READY.test(program.stdoutText()), READY_MS);
        if (!ready) {
          failures.push(
            `${
              where(command)
            }\n  the server did not print its ready line: ${program.describeExit()}\n${
              indent(program.outputTail())
            }`,
          );
          break;
        }
        continue;
      }
      const program = spawn(command);
      const output = () => program.stdoutText() + program.stderrText();
      if (command.ctrlC) {
        await program.waitUntil(() => command.prints.every((text) => shows(output(), text)), 5000);
        if (program.running) Deno.kill(-program.pid, "SIGINT");
      }
      await program.waitUntil(() => false, COMMAND_MS);
      if (program.running) {
        failures.push(`${where(command)}\n  still running after ${COMMAND_MS / 1000} s`);
      }
      const status = await program.stop();
      await program.drain(1000);
      lastOutput = output();
      const missing = command.prints.filter((text) => !shows(lastOutput, text));
      const wrongExit = !command.ctrlC && status.code !== command.exits;
      if (missing.length > 0 || wrongExit) {
        const why = [
          ...missing.map((text) => `  the output does not show: ${text}`),
          ...(wrongExit ? [`  exit code ${status.code}, the document says ${command.exits}`] : []),
        ];
        failures.push(`${where(command)}\n${why.join("\n")}\n${indent(program.outputTail())}`);
      }
      if (command.state) state.push(command.text);
    }
  } finally {
    for (const { command, program } of servers) {
      if (program.running) Deno.kill(-program.pid, "SIGINT");
      const stopped = await program.waitUntil(() => !program.running, 12_000);
      await program.stop();
      await program.drain(1000);
      const output = program.stdoutText() + program.stderrText();
      const missing = command.prints.filter((text) => !shows(output, text));
      if (missing.length > 0) {
        failures.push(
          `${where(command)}\n${
            missing.map((text) => `  the output does not show: ${text}`).join("\n")
          }\n${indent(program.outputTail())}`,
        );
      }
      if (!stopped || !output.includes(GOODBYE)) {
        failures.push(
          `${
            where(command)
          }\n  Ctrl-C did not shut the server down gracefully: it ${program.describeExit()}\n${
            indent(program.outputTail())
          }`,
        );
      }
    }
  }
  return { failures, ran: commands.length, lastOutput };
}

function indent(text: string): string {
  return text.trimEnd().replace(/^/gm, "    ");
}

async function exists(command: string): Promise<boolean> {
  const { success } = await new Deno.Command("sh", {
    args: ["-c", `command -v ${shellQuote(command)}`],
    stdout: "null",
    stderr: "null",
  }).output();
  return success;
}

/**
 * Whether `tool` is installed and works: on the PATH, and not a stub that
 * says "command not found" (a pyenv shim for a Python it does not have).
 * Some tools (nc) have no --version: only that message counts against them.
 */
async function works(tool: string): Promise<boolean> {
  if (!(await exists(tool))) return false;
  const { stdout, stderr } = await new Deno.Command("sh", {
    args: ["-c", `${shellQuote(tool)} --version`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const said = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  return !said.includes("command not found");
}

/** The documents to check: the arguments, or every document of the project. */
async function documents(args: string[]): Promise<string[]> {
  const found: string[] = [];
  for (const entry of args.length > 0 ? args : DOCUMENTS) {
    const path = resolve(ROOT, entry);
    const info = await Deno.stat(path);
    if (info.isDirectory) {
      for await (const child of Deno.readDir(path)) {
        if (child.name.endsWith(".md")) found.push(join(path, child.name));
      }
    } else {
      found.push(path);
    }
  }
  return found.sort();
}

/** Copies the project's files (tracked and new, not ignored) to `into`. */
async function copyProject(into: string) {
  const git = await new Deno.Command("git", {
    args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "null",
  }).output();
  // Not a git checkout (a copy made by this check, say): every file but the ignored folders.
  const files = git.success
    ? new TextDecoder().decode(git.stdout).split("\0").filter(Boolean)
    : await walk(ROOT);
  for (const file of files) {
    try {
      await Deno.mkdir(dirname(join(into, file)), { recursive: true });
      await Deno.copyFile(join(ROOT, file), join(into, file));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error; // deleted, not yet committed
    }
  }
}

/** Every file under `root`, relative, but in .git, node_modules and the ignored outputs. */
async function walk(root: string, under = ""): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(join(root, under))) {
    const path = join(under, entry.name);
    if (entry.isDirectory) {
      if ([".git", "node_modules", ".tmp", "grades", "build", "submissions"].includes(entry.name)) {
        continue;
      }
      files.push(...await walk(root, path));
    } else if (entry.isFile) {
      files.push(path);
    }
  }
  return files;
}

/**
 * Runs the check once per shell, each in a network namespace of its own
 * (so that both can use port 12000 at the same time), when not already in
 * one and the system allows it. Resolves to the worst exit code, or to
 * undefined to run here, on this machine's loopback.
 */
async function inOwnNetworks(shells: string[], args: string[]): Promise<number | undefined> {
  if (Deno.env.get("DOCS_CHECK_NETNS") === "1") return undefined;
  const probe = await new Deno.Command("unshare", {
    args: ["-rn", "sh", "-c", "ip link set lo up"],
    stdout: "null",
    stderr: "null",
  }).output().catch(() => undefined);
  if (!probe?.success) {
    console.log("No network namespaces here (unshare -rn): running on this machine's loopback.");
    return undefined;
  }
  // The npm packages the grading kit uses are fetched now: there is no network in there.
  await new Deno.Command(Deno.execPath(), {
    args: ["cache", "--quiet", "tests/grading/grade.ts"],
    cwd: ROOT,
  }).output();
  const runs = shells.map((shell) =>
    new Deno.Command("unshare", {
      args: [
        "-rn",
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
        Deno.execPath(),
        "run",
        "--allow-all",
        fileURLToPath(import.meta.url),
        `--shell=${shell}`,
        ...args,
      ],
      env: { DOCS_CHECK_NETNS: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output()
  );
  let worst = 0;
  for (const run of runs) {
    // Each shell's report whole, one after the other.
    const { code, stdout, stderr } = await run;
    await Deno.stdout.write(stdout);
    await Deno.stderr.write(stderr);
    worst = Math.max(worst, code);
  }
  return worst;
}

async function main(argv: string[]): Promise<number> {
  const chosen = argv.find((arg) => arg.startsWith("--shell="))?.slice("--shell=".length);
  const args = argv.filter((arg) => !arg.startsWith("--shell="));
  const shells = [];
  for (const shell of chosen ? [chosen] : ["bash", "zsh"]) {
    if (await exists(shell)) shells.push(shell);
    else console.log(`${shell} is not installed: its runs are skipped.`);
  }
  const code = await inOwnNetworks(shells, args);
  if (code !== undefined) return code;

  // The children find the real deno binary first (not a wrapper), and its cache.
  const temp = await Deno.makeTempDir({ prefix: "docs_check_" });
  const bin = join(temp, "bin");
  await Deno.mkdir(bin);
  await Deno.symlink(Deno.execPath(), join(bin, "deno"));
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json"],
    stdout: "piped",
  })
    .output();
  Deno.env.set("DENO_DIR", JSON.parse(new TextDecoder().decode(info.stdout)).denoDir);
  Deno.env.set("PATH", `${bin}:${Deno.env.get("PATH")}`);
  const home = join(temp, "home");
  await Deno.mkdir(home);
  Deno.env.set("HOME", home);
  // INIT_CWD: `deno task docs` set it to this folder, and a `deno task` inside would keep it.
  for (
    const name of [
      "TCP_SERVER",
      "TCP_CLIENT",
      "UDP_SERVER",
      "UDP_CLIENT",
      "GRADE_ROLES",
      "INIT_CWD",
    ]
  ) {
    Deno.env.delete(name);
  }

  const failures: string[] = [];
  let ran = 0;
  const skipped: string[] = [];
  try {
    for (const path of await documents(args)) {
      const name = relative(ROOT, path);
      const blocks = parseBlocks(name, await Deno.readTextFile(path));
      for (const shell of shells) {
        // A fresh copy per document and shell: the commands may write files.
        const project = join(temp, `project_${shell}_${name.replaceAll("/", "_")}`);
        await copyProject(project);
        let lastOutput = "";
        for (const block of blocks) {
          const at = `${name}:${block.line}`;
          if (block.output) {
            const missing = showsInOrder(lastOutput, block.lines);
            if (missing !== undefined) {
              failures.push(
                `${at} (${shell}): the output shown is not what the command printed; this line is missing:\n    ${missing}\n  the output was:\n${
                  indent(lastOutput.slice(-3000))
                }`,
              );
            }
            continue;
          }
          if (!SHELL_LANGUAGES.has(block.language)) continue;
          if (block.skip !== undefined) {
            if (shell === shells[0]) skipped.push(`${at}: ${block.skip}`);
            continue;
          }
          if (block.language !== "sh") {
            failures.push(
              `${at}: a ${block.language} block needs <!-- check: skip: REASON --> (only sh blocks are run)`,
            );
            continue;
          }
          const missingTools = [];
          for (const tool of block.needs) if (!(await works(tool))) missingTools.push(tool);
          if (missingTools.length > 0) {
            if (shell === shells[0]) skipped.push(`${at}: needs ${missingTools.join(", ")}`);
            continue;
          }
          const outcome = await runBlock(block, shell, project);
          ran += outcome.ran;
          lastOutput = outcome.lastOutput;
          failures.push(...outcome.failures);
          console.log(
            `${
              outcome.failures.length === 0 ? "ok  " : "FAIL"
            } ${at} (${shell}, ${outcome.ran} commands)`,
          );
        }
      }
    }
  } finally {
    await Deno.remove(temp, { recursive: true }).catch(() => {});
  }
  for (const skip of skipped) console.log(`skipped ${skip}`);
  for (const failure of failures) console.log(`\n${failure}`);
  console.log(
    `\n${ran} commands run, ${skipped.length} blocks skipped (with the reasons above), ${failures.length} failed.`,
  );
  return failures.length === 0 ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
