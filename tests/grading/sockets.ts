/**
 * The kernel's socket tables: which sockets a program under test has bound,
 * and who holds a port, read without sending the program a single byte.
 *
 * Why not just connect? A readiness probe is a client the student never
 * expected: the textbook's Java TCPServer throws on a connection that closes
 * without a line, some C servers die on a read of 0 bytes, and a UDP server
 * that serves one datagram would serve the probe instead of the first check.
 * A printed line is no proof either: one real server prints its ready line
 * before it calls listen(). The tables say exactly when the socket exists.
 *
 * On Linux the tables are /proc/net/{tcp,tcp6,udp,udp6}, and each process's
 * sockets are the `socket:[INODE]` links in /proc/PID/fd. Deno refuses to
 * read /proc without --allow-all, so a small `sh` script reads them (the kit
 * has --allow-run). Elsewhere {@linkcode programSockets} resolves to
 * undefined and the runner falls back to probing.
 *
 * @module
 */

import { sleep } from "./net.ts";

/** A socket from the kernel's tables. */
export interface SocketEntry {
  /** Which table it comes from. */
  transport: "tcp" | "udp";
  /** The local address, e.g. "127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1". */
  address: string;
  /** The local port. */
  port: number;
  /** "listen" (TCP), "bound" (UDP, not connected), "time_wait", or another TCP state. */
  state: string;
  /** The socket's inode (0 for connections no process holds, like TIME_WAIT). */
  inode: number;
}

/** A process that holds a socket. */
export interface SocketOwner {
  /** Its process id. */
  pid: number;
  /** Its command line, arguments separated by spaces. */
  command: string;
}

const TABLES = ["tcp", "tcp6", "udp", "udp6"].map((name) => `/proc/net/${name}`);

/** TCP states as the kernel numbers them (include/net/tcp_states.h). */
const TCP_STATES: Record<string, string> = {
  "01": "established",
  "02": "syn_sent",
  "03": "syn_recv",
  "04": "fin_wait1",
  "05": "fin_wait2",
  "06": "time_wait",
  "07": "close",
  "08": "close_wait",
  "09": "last_ack",
  "0A": "listen",
  "0B": "closing",
};

/**
 * What every script starts with: no tables, exit 3 (the caller then probes
 * instead); `$files`, the tables this machine has (no IPv6, no tcp6); and
 * `port_sockets PORT`, which prints "FILE LOCAL_ADDRESS STATE INODE" for
 * every socket on PORT (4 hex digits, upper case).
 */
const PRELUDE = `
[ -r /proc/net/tcp ] || exit 3
files=
for f in ${TABLES.join(" ")}; do [ -r "$f" ] && files="$files $f"; done
port_sockets() {
  awk -v p=":$1" 'FNR > 1 && substr($2, length($2) - 4) == p { print FILENAME, $2, $4, $10 }' $files
}
`;

/**
 * Prints the table lines of every socket held by a process of session $1.
 * A process's session is field 6 of /proc/PID/stat, read after the command
 * name's closing parenthesis (the name itself may hold spaces and
 * parentheses).
 */
const PROGRAM_SOCKETS_SCRIPT = `
sid=$1; shift
inodes=$(
  for d in /proc/[0-9]*; do
    { read -r stat < "$d/stat"; } 2>/dev/null || continue
    set -- \${stat##*") "}
    [ "$4" = "$sid" ] && ls -l "$d/fd" 2>/dev/null
  done | sed -n 's/.*socket:\\[\\([0-9]*\\)\\].*/\\1/p'
)
[ -n "$inodes" ] || exit 0
awk -v list="$inodes" '
  BEGIN { n = split(list, a); for (i = 1; i <= n; i++) want[a[i]] = 1 }
  FNR > 1 && ($10 in want) { print FILENAME, $2, $4, $10 }' $files
`;

/**
 * Prints the table lines of every socket on port $1, then "owner INODE PID
 * COMMAND" for each process that holds one.
 */
const PORT_HOLDERS_SCRIPT = `
lines=$(port_sockets "$1")
[ -n "$lines" ] || exit 0
echo "$lines"
echo "$lines" | while read -r file address state inode; do
  [ "$inode" = 0 ] && continue
  for fd in $(find /proc/[0-9]*/fd -lname "socket:\\[$inode\\]" 2>/dev/null | head -n 3); do
    pid=\${fd#/proc/}; pid=\${pid%%/*}
    echo "owner $inode $pid $(tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null)"
  done
done
`;

/** Prints the table lines of every socket on port $1. */
const PORT_SOCKETS_SCRIPT = `port_sockets "$1"`;

/** Runs a script after {@linkcode PRELUDE} with `sh`; undefined if it fails (or exits 3). */
async function runScript(script: string, args: string[]): Promise<string | undefined> {
  if (Deno.build.os !== "linux") return undefined;
  try {
    const { success, stdout } = await new Deno.Command("sh", {
      args: ["-c", `${PRELUDE}\n${script}`, "sh", ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    return success ? new TextDecoder().decode(stdout) : undefined;
  } catch {
    return undefined; // no sh, or no --allow-run
  }
}

/**
 * The sockets held by the processes of session `sessionId` (a program under
 * test runs as `setsid sh -c TEMPLATE`, so its session id is the shell's
 * pid), or undefined where the tables cannot be read.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * import { ProgramProcess } from "./process.ts";
 *
 * await using program = ProgramProcess.spawn({ command: "sleep 30" });
 * const sockets = await programSockets(program.pid);
 * // undefined outside Linux; else the sockets of the program's group: none here.
 * assert.ok(sockets === undefined || sockets.length === 0);
 * ```
 */
export async function programSockets(sessionId: number): Promise<SocketEntry[] | undefined> {
  const out = await runScript(PROGRAM_SOCKETS_SCRIPT, [String(sessionId)]);
  if (out === undefined) return undefined;
  return out.split("\n").map(parseEntry).filter((entry) => entry !== undefined);
}

/**
 * Every socket of `transport` on `port`, whoever holds it, or undefined
 * where the tables cannot be read. Cheaper than {@linkcode programSockets}:
 * one look at the tables, no look at any process.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const sockets = await portSockets("tcp", listener.addr.port);
 * // undefined outside Linux (no socket tables to read)
 * assert.ok(sockets === undefined || sockets.some((s) => s.state === "listen"));
 * listener.close();
 * ```
 */
export async function portSockets(
  transport: "tcp" | "udp",
  port: number,
): Promise<SocketEntry[] | undefined> {
  const out = await runScript(PORT_SOCKETS_SCRIPT, [hexPort(port)]);
  if (out === undefined) return undefined;
  return out.split("\n").map(parseEntry).filter((e) => e !== undefined && e.transport === transport)
    .map((e) => e!);
}

/**
 * Prints the receive queue (hex) of each TCP connection from local port $1
 * to remote port $2: the bytes that arrived and the program has not read.
 */
const UNREAD_SCRIPT = `
for f in $files; do
  case $f in *tcp*) awk -v l=":$1" -v r=":$2" 'FNR > 1 && substr($2, length($2) - 4) == l &&
    substr($3, length($3) - 4) == r { split($5, q, ":"); print q[2] }' "$f" ;; esac
done
`;

/** Where the bytes go: the reading program's port, and the writer's port at the other end. */
export interface ConnectionPorts {
  /** The local port of the reader's socket (a server's port, or a client's source port). */
  readerPort: number;
  /** The port at the writer's end. */
  writerPort: number;
}

/**
 * How many bytes the reader of a loopback TCP connection has received and
 * not read yet, or undefined where the tables cannot be read or the
 * connection is not there.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const server = await listener.accept();
 * await client.write(new Uint8Array(5)); // the server reads nothing yet
 * const ports = { readerPort: listener.addr.port, writerPort: client.localAddr.port };
 * const unread = await unreadBytes(ports);
 * assert.ok(unread === undefined || unread === 5); // undefined outside Linux
 * client.close();
 * server.close();
 * listener.close();
 * ```
 */
export async function unreadBytes(ports: ConnectionPorts): Promise<number | undefined> {
  const out = await runScript(UNREAD_SCRIPT, [
    hexPort(ports.readerPort),
    hexPort(ports.writerPort),
  ]);
  const queue = out?.trim().split("\n")[0];
  return queue ? parseInt(queue, 16) : undefined;
}

/**
 * Waits until the reader has read everything sent to it so far, for at most
 * `ms` (default 1000; at once where the tables cannot be read). A check
 * that delivers a message in pieces waits so after the first piece: a
 * program that takes one recv() for the whole message then reads that
 * piece alone, however late it is scheduled on a loaded machine, instead
 * of finding every piece already joined in its socket.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const server = await listener.accept();
 * await client.write(new Uint8Array([1]));
 * const read = server.read(new Uint8Array(16));
 * await waitUntilRead({ readerPort: listener.addr.port, writerPort: client.localAddr.port });
 * assert.equal(await read, 1);
 * client.close();
 * server.close();
 * listener.close();
 * ```
 */
export async function waitUntilRead(ports: ConnectionPorts, ms = 1000): Promise<void> {
  const stopAt = performance.now() + ms;
  for (;;) {
    const unread = await unreadBytes(ports);
    if (unread === undefined || unread === 0 || performance.now() >= stopAt) return;
    await sleep(5);
  }
}

/** A port as the tables print it: 12000 -> "2EE0". */
function hexPort(port: number): string {
  return port.toString(16).toUpperCase().padStart(4, "0");
}

/**
 * Every socket on `port` of either transport's tables for `transport`, with
 * the processes holding them, or undefined where the tables cannot be read.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const holders = await portHolders("tcp", listener.addr.port);
 * // undefined outside Linux; else this process holds the port
 * assert.ok(holders === undefined || holders.owners.some((owner) => owner.pid === Deno.pid));
 * listener.close();
 * ```
 */
export async function portHolders(
  transport: "tcp" | "udp",
  port: number,
): Promise<{ entries: SocketEntry[]; owners: SocketOwner[] } | undefined> {
  const out = await runScript(PORT_HOLDERS_SCRIPT, [hexPort(port)]);
  if (out === undefined) return undefined;
  const entries: SocketEntry[] = [];
  const owners = new Map<number, SocketOwner>();
  const inodes = new Set<number>();
  for (const line of out.split("\n")) {
    const owner = /^owner (\d+) (\d+) ?(.*)$/.exec(line);
    if (owner) {
      if (inodes.has(Number(owner[1]))) {
        owners.set(Number(owner[2]), { pid: Number(owner[2]), command: owner[3].trim() });
      }
      continue;
    }
    const entry = parseEntry(line);
    if (entry?.transport === transport) {
      entries.push(entry);
      inodes.add(entry.inode);
    }
  }
  return { entries, owners: [...owners.values()] };
}

/** "/proc/net/tcp 0100007F:2EE0 0A 12345" -> an entry. */
function parseEntry(line: string): SocketEntry | undefined {
  const match = /^\/proc\/net\/(tcp|udp)6? ([0-9A-Fa-f]+):([0-9A-Fa-f]{4}) ([0-9A-Fa-f]{2}) (\d+)$/
    .exec(line.trim());
  if (!match) return undefined;
  const [, transport, hexAddress, hexPort, st, inode] = match;
  const state = transport === "udp"
    ? (st === "07" ? "bound" : "connected")
    : TCP_STATES[st.toUpperCase()] ?? st;
  return {
    transport: transport as "tcp" | "udp",
    address: decodeAddress(hexAddress),
    port: parseInt(hexPort, 16),
    state,
    inode: Number(inode),
  };
}

/**
 * The kernel prints addresses as 32-bit words in host byte order (little
 * endian on x86 and ARM): 0100007F is 127.0.0.1.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(decodeAddress("0100007F"), "127.0.0.1");
 * assert.equal(decodeAddress("00000000000000000000000001000000"), "::1");
 * ```
 */
export function decodeAddress(hex: string): string {
  const bytes: number[] = [];
  for (let word = 0; word < hex.length; word += 8) {
    for (let i = 6; i >= 0; i -= 2) bytes.push(parseInt(hex.slice(word + i, word + i + 2), 16));
  }
  if (bytes.length === 4) return bytes.join(".");
  const mapped = bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff &&
    bytes[11] === 0xff;
  if (mapped) return `::ffff:${bytes.slice(12).join(".")}`;
  const groups = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  // Shorten the longest run of zero groups to "::".
  let best = { at: -1, length: 0 };
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > best.length) best = { at: i, length: j - i };
    i = j === i ? i + 1 : j;
  }
  if (best.length < 2) return groups.join(":");
  return `${groups.slice(0, best.at).join(":")}::${groups.slice(best.at + best.length).join(":")}`;
}

/**
 * The loopback address to reach a socket bound at `address`, or undefined if
 * it is bound to an address the kit must not talk to (not loopback).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(loopbackFor("0.0.0.0"), "127.0.0.1");
 * assert.equal(loopbackFor("::"), "::1");
 * assert.equal(loopbackFor("192.168.1.20"), undefined);
 * ```
 */
export function loopbackFor(address: string): string | undefined {
  if (address === "0.0.0.0") return "127.0.0.1";
  if (address.startsWith("127.")) return address;
  if (address === "::" || address === "::1") return "::1";
  if (address.startsWith("::ffff:")) return loopbackFor(address.slice(7));
  return undefined;
}

/**
 * "python3 other.py (pid 1234)", for messages.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 *
 * assert.equal(describeOwners([{ pid: 7, command: "nc -l 12000" }]), "nc -l 12000 (pid 7)");
 * ```
 */
export function describeOwners(owners: SocketOwner[]): string {
  return owners.map((o) => `${o.command || "a process"} (pid ${o.pid})`).join(", ");
}
