/**
 * Runs a program under test from a shell command line, in its own process
 * group, so that the program and everything it starts die together.
 *
 * `setsid sh -c COMMAND` makes the shell the leader of a new session and
 * process group; `kill -KILL -PGID` (here `Deno.kill(-pid)`) then reaches the
 * shell, the program and any child it started. Output is collected (up to
 * 1 MiB per stream), and every wait has a deadline.
 *
 * @module
 */

/** Bytes kept per output stream; a program that prints more is cut. */
const OUTPUT_CAP = 1024 * 1024;

/** Signals a program dies of, by number, as the shell reports them (128 + n), with why. */
const SHELL_SIGNALS: Record<number, string> = {
  2: "SIGINT",
  6: "SIGABRT (abort(), a failed assertion or a double free)",
  9: "SIGKILL",
  11: "SIGSEGV (a segmentation fault: a bad pointer or an index out of bounds)",
  13: "SIGPIPE (it wrote to a connection the other side had closed; ignore SIGPIPE or send " +
    "with MSG_NOSIGNAL)",
  15: "SIGTERM",
};

/** Every group still running, killed if the process exits early. */
const LIVE_GROUPS = new Set<ProgramProcess>();
globalThis.addEventListener("unload", () => {
  for (const program of LIVE_GROUPS) program.kill();
});

/** Options for {@linkcode ProgramProcess.spawn}. */
export interface SpawnOptions {
  /** A shell command line, run with `sh -c`. */
  command: string;
  /** Working folder; default the current one. */
  cwd?: string;
  /** Bytes written to stdin, which is then closed; default no stdin (end of file at once). */
  input?: Uint8Array;
  /**
   * Called with every chunk of output as it arrives, before the cap, and
   * with `null` at the end of each stream: for a caller that follows the
   * output live (the tests split it into lines).
   */
  onOutput?: (stream: "stdout" | "stderr", chunk: Uint8Array | null) => void;
}

/** Environment for programs under test: unbuffered UTF-8 Python, no colours, no backtraces. */
function childEnv(): Record<string, string> {
  const env: Record<string, string> = {
    NO_COLOR: "1",
    RUST_BACKTRACE: "0",
    PYTHONUNBUFFERED: "1",
    PYTHONDONTWRITEBYTECODE: "1",
  };
  // Python on a pipe may pick ASCII for stdout; the checks compare UTF-8 bytes.
  if (Deno.env.get("PYTHONIOENCODING") === undefined) env.PYTHONIOENCODING = "utf-8";
  // Without a locale, Java 17 (and C's mbstowcs) take text to be ASCII; the
  // programs were written on machines where it is UTF-8.
  if (!Deno.env.get("LANG") && !Deno.env.get("LC_ALL")) env.LANG = "C.UTF-8";
  return env;
}

/** One output stream, collected as bytes up to the cap. */
class Collected {
  #parts: Uint8Array[] = [];
  length = 0;
  truncated = false;
  /** Bytes read past the cap, and not kept. */
  dropped = 0;

  push(chunk: Uint8Array) {
    const room = OUTPUT_CAP - this.length;
    if (room <= 0) {
      this.truncated = true;
      this.dropped += chunk.length;
      return;
    }
    const kept = chunk.length > room ? chunk.slice(0, room) : chunk;
    this.dropped += chunk.length - kept.length;
    this.truncated ||= kept.length < chunk.length;
    this.#parts.push(kept);
    this.length += kept.length;
  }

  bytes(): Uint8Array {
    if (this.#parts.length !== 1) {
      const all = new Uint8Array(this.length);
      let offset = 0;
      for (const part of this.#parts) {
        all.set(part, offset);
        offset += part.length;
      }
      this.#parts = [all];
    }
    return this.#parts[0] ?? new Uint8Array(0);
  }

  text(): string {
    return new TextDecoder().decode(this.bytes());
  }
}

/**
 * A program under test, running in its own process group.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * await using program = ProgramProcess.spawn({ command: "echo ready; sleep 30" });
 * assert.ok(await program.waitUntil(() => program.stdoutText().includes("ready"), 5000));
 * assert.ok(program.running);
 * await program.stop(); // kills the shell and its sleep
 * assert.equal(program.describeExit(), "was killed by SIGKILL");
 * ```
 */
export class ProgramProcess implements AsyncDisposable {
  /** The command line as run. */
  readonly command: string;
  /** Process id of the group leader (the shell), which is also the group id. */
  readonly pid: number;
  /** Resolves with the leader's status once it has exited. */
  readonly exited: Promise<Deno.CommandStatus>;
  #child: Deno.ChildProcess;
  #ownGroup: boolean;
  #stdout = new Collected();
  #stderr = new Collected();
  #readers: ReadableStreamDefaultReader<Uint8Array>[] = [];
  #pumps: Promise<void>;
  #status: Deno.CommandStatus | undefined;
  #changed = Promise.withResolvers<void>();
  #stopped = false;

  private constructor(
    command: string,
    child: Deno.ChildProcess,
    { ownGroup, onOutput }: { ownGroup: boolean; onOutput?: SpawnOptions["onOutput"] },
  ) {
    this.command = command;
    this.#child = child;
    this.#ownGroup = ownGroup;
    this.pid = child.pid;
    LIVE_GROUPS.add(this);
    const follow = (stream: "stdout" | "stderr") =>
      onOutput && ((chunk: Uint8Array | null) => onOutput(stream, chunk));
    this.#pumps = Promise.all([
      this.#pump(child.stdout, this.#stdout, follow("stdout")),
      this.#pump(child.stderr, this.#stderr, follow("stderr")),
    ]).then(() => {});
    this.exited = child.status.then((status) => {
      this.#status = status;
      this.#notify();
      return status;
    });
  }

  /**
   * Starts `command` with `sh -c` in a new process group (through `setsid`;
   * without it, in Deno's group, and only the shell can be killed).
   */
  static spawn(options: SpawnOptions): ProgramProcess {
    const { command, cwd, input, onOutput } = options;
    const spawnWith = (program: string, args: string[]) =>
      new Deno.Command(program, {
        args,
        cwd,
        env: childEnv(),
        stdin: input === undefined ? "null" : "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    let child: Deno.ChildProcess;
    let ownGroup = true;
    try {
      child = spawnWith("setsid", ["sh", "-c", command]);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      child = spawnWith("sh", ["-c", command]);
      ownGroup = false;
    }
    const program = new ProgramProcess(command, child, { ownGroup, onOutput });
    if (input !== undefined) program.#feed(input);
    return program;
  }

  async #feed(input: Uint8Array) {
    const writer = this.#child.stdin.getWriter();
    try {
      await writer.write(input);
      await writer.close();
    } catch {
      // The program exited (or closed stdin) before reading everything.
    }
  }

  async #pump(
    stream: ReadableStream<Uint8Array>,
    into: Collected,
    follow?: (chunk: Uint8Array | null) => void,
  ) {
    const reader = stream.getReader();
    this.#readers.push(reader);
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        follow?.(value);
        into.push(value);
        this.#notify();
      }
    } catch {
      // Cancelled by stop(): a process outside the group kept the pipe open.
    } finally {
      follow?.(null);
      this.#notify();
    }
  }

  #notify() {
    this.#changed.resolve();
    this.#changed = Promise.withResolvers<void>();
  }

  /** Whether the leader is still running. */
  get running(): boolean {
    return this.#status === undefined;
  }

  /** The leader's exit status, once it has exited. */
  get status(): Deno.CommandStatus | undefined {
    return this.#status;
  }

  /** Whether the leader has exited by itself with code 0 (not by a signal). */
  get exitedCleanly(): boolean {
    return this.#status?.code === 0 && !this.#status.signal;
  }

  /** Everything printed on stdout so far, as bytes. */
  stdoutBytes(): Uint8Array {
    return this.#stdout.bytes();
  }

  /** Everything printed on stdout so far, as text (invalid UTF-8 shown as U+FFFD). */
  stdoutText(): string {
    return this.#stdout.text();
  }

  /** Everything printed on stderr so far, as text. */
  stderrText(): string {
    return this.#stderr.text();
  }

  /**
   * Resolves to true as soon as `condition()` holds, or to its last value
   * once the program has exited or `ms` have passed. The condition is
   * checked again whenever output arrives or the program exits.
   */
  async waitUntil(condition: () => boolean, ms: number): Promise<boolean> {
    const deadline = performance.now() + ms;
    for (;;) {
      if (condition()) return true;
      const left = deadline - performance.now();
      if (left <= 0 || !this.running) return condition();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#changed.promise,
        new Promise((resolve) => timer = setTimeout(resolve, left)),
      ]);
      clearTimeout(timer);
    }
  }

  /**
   * Sends `signal` (default SIGKILL) to the whole process group (or to the
   * shell alone, without setsid). A command line that starts with `exec`
   * makes the program itself the leader, and the only member of the group.
   */
  kill(signal: Deno.Signal = "SIGKILL") {
    try {
      if (this.#ownGroup) Deno.kill(-this.pid, signal);
      else this.#child.kill(signal);
    } catch {
      // The group is already gone.
    }
  }

  /**
   * Kills the group if it is still running, reaps the leader and collects
   * the rest of the output (at most 2 s: a process that left the group may
   * keep the pipes open).
   */
  async stop(): Promise<Deno.CommandStatus> {
    if (!this.#stopped) {
      this.#stopped = true;
      this.kill();
      await this.exited;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const drained = await Promise.race([
        this.#pumps.then(() => true),
        new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), 2000)),
      ]);
      clearTimeout(timer);
      if (!drained) {
        await Promise.all(this.#readers.map((reader) => reader.cancel().catch(() => {})));
        await this.#pumps;
      }
      LIVE_GROUPS.delete(this);
    }
    return await this.exited;
  }

  /** Waits up to `ms` for the output pipes to close after the leader exited. */
  async drain(ms: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#pumps,
      new Promise((resolve) => timer = setTimeout(resolve, ms)),
    ]);
    clearTimeout(timer);
  }

  /**
   * "exited with code 1", "was killed by SIGKILL" or "is still running". The
   * shell reports a program killed by a signal as code 128 + its number:
   * that is said too ("exited with code 141: killed by SIGPIPE, ...").
   */
  describeExit(): string {
    const status = this.#status;
    if (status === undefined) return "is still running";
    if (status.signal) return `was killed by ${status.signal}`;
    const signal = SHELL_SIGNALS[status.code - 128];
    return `exited with code ${status.code}` + (signal ? `: killed by ${signal}` : "");
  }

  /** The last part of stdout and stderr, for failure messages. */
  outputTail(max = 1200): string {
    const tail = (text: string) => {
      const trimmed = text.trimEnd();
      return trimmed.length > max ? `...${trimmed.slice(-max)}` : trimmed;
    };
    const stdout = tail(this.stdoutText());
    const stderr = tail(this.stderrText());
    // A program that floods its output is cut at the cap: say so.
    const cut = (stream: Collected) =>
      stream.truncated
        ? ` (cut: only its first ${OUTPUT_CAP} bytes were kept, ${stream.dropped} more were not)`
        : "";
    return `--- its stdout${cut(this.#stdout)}${stdout ? `\n${stdout}` : " (empty)"}\n` +
      `--- its stderr${cut(this.#stderr)}${stderr ? `\n${stderr}` : " (empty)"}`;
  }

  /** Kills the group and reaps it. */
  async [Symbol.asyncDispose]() {
    await this.stop();
  }
}

/**
 * Quotes a string for `sh`: `it's` becomes `'it'\''s'`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(shellQuote("/path with spaces/deno"), "'/path with spaces/deno'");
 * assert.equal(shellQuote("it's"), "'it'\\''s'");
 * assert.equal(shellQuote("plain.py"), "plain.py");
 * ```
 */
export function shellQuote(text: string): string {
  if (/^[\w@%+=:,./-]+$/.test(text)) return text;
  return `'${text.replaceAll("'", `'\\''`)}'`;
}
