/**
 * Each student in a network namespace of their own, where the machine
 * allows it: then every student's programs get port 12000 at once, and
 * several students are graded at the same time.
 *
 * The namespace is made with `unshare`: a new network namespace (only `lo`,
 * brought up with `ip link set lo up`), and a new PID namespace with /proc
 * mounted afresh, so that when the student's grading ends, every process it
 * started ends with it, even one that forked and left its process group.
 * As root, `unshare` needs nothing more; an ordinary user adds
 * `--map-root-user` (a user namespace), which works where unprivileged user
 * namespaces are allowed (most Linux distributions; not in some containers).
 *
 * @module
 */

/** How students are kept apart. */
export interface Isolation {
  /** Whether each student gets a namespace of their own. */
  namespaces: boolean;
  /** Put before a command (argv) to run it in a fresh namespace; empty without. */
  wrap(argv: string[]): string[];
  /** One line for the output: what is used, or why not. */
  description: string;
}

const UNSHARE_FLAGS = ["--net", "--pid", "--fork", "--mount-proc", "--kill-child"];
/** Inside: loopback up, then the command (sh stays as the namespace's first process). */
const INSIDE = '"$0" link set lo up && "$@"';

/**
 * Finds out whether `unshare` can make a network and PID namespace here,
 * with loopback up, as this user; tries without a user namespace first
 * (root), then with one (an ordinary user).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const isolation = await probeIsolation();
 * assert.equal(typeof isolation.namespaces, "boolean"); // what the machine allows
 * assert.ok(isolation.description.length > 0);
 * ```
 */
export async function probeIsolation(): Promise<Isolation> {
  const none = noIsolation;
  if (Deno.build.os !== "linux") return none("not Linux");
  const ip = await findIp();
  if (ip === undefined) return none("no `ip` command (iproute2) to bring loopback up");
  let why = "";
  for (const extra of [[], ["--map-root-user"]]) {
    const prefix = ["unshare", ...extra, ...UNSHARE_FLAGS, "sh", "-c", INSIDE, ip];
    const test = [...prefix, "sh", "-c", "cat /proc/net/tcp > /dev/null && echo ok"];
    try {
      const { success, stdout, stderr } = await new Deno.Command(test[0], {
        args: test.slice(1),
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      if (success && new TextDecoder().decode(stdout).trim() === "ok") {
        const how = extra.length > 0
          ? "unshare --map-root-user --net --pid"
          : "unshare --net --pid";
        return {
          namespaces: true,
          wrap: (argv) => [...prefix, ...argv],
          description: `Each student in their own network namespace (${how}).`,
        };
      }
      why = new TextDecoder().decode(stderr).trim().split("\n").at(-1) || "unshare failed";
    } catch (error) {
      why = error instanceof Deno.errors.NotFound
        ? "no `unshare` command"
        : (error as Error).message;
      break;
    }
  }
  return none(why);
}

/**
 * No namespaces: every student's programs run on this machine's ports, so
 * one student at a time.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.equal(noIsolation("--no-namespaces").namespaces, false);
 * ```
 */
export function noIsolation(why: string): Isolation {
  return {
    namespaces: false,
    wrap: (argv) => argv,
    description: `No network namespaces (${why}): one student at a time, on this machine's ports.`,
  };
}

/** `ip`, on the PATH or where Debian and others put it (not always on an ordinary user's PATH). */
async function findIp(): Promise<string | undefined> {
  for (const path of ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]) {
    try {
      if ((await Deno.stat(path)).isFile) return path;
    } catch {
      // Not there.
    }
  }
  try {
    const { success, stdout } = await new Deno.Command("sh", {
      args: ["-c", "command -v ip"],
      stdout: "piped",
      stderr: "null",
    }).output();
    const path = new TextDecoder().decode(stdout).trim();
    return success && path ? path : undefined;
  } catch {
    return undefined;
  }
}
