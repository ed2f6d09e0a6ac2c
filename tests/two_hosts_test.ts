/**
 * The textbook's two-host exercise, for real. Two network namespaces joined
 * by a virtual Ethernet cable (a veth pair) are two hosts: A (10.12.0.1 and
 * fd12::1) and B (10.12.0.2 and fd12::2). Those addresses exist only inside
 * the namespaces, so nothing else on the machine or the network sees this
 * traffic. Each server runs on A, each client on B, through `nsenter`.
 *
 * What they show, over TCP and over UDP:
 * - a server started with the default host (loopback) cannot be reached from
 *   B at A's address, though A itself reaches it, and its startup line said so;
 * - with `--host 0.0.0.0` it serves B at A's IPv4 address (and not at the
 *   IPv6 one), with `--host ::` at both, and its startup line says it serves
 *   other hosts;
 * - the clients reach it with `--host ADDRESS`.
 *
 * The namespaces come from `unshare -n` as root, and from `unshare -rn` (a
 * user namespace in which the user is root) as an ordinary user where the
 * system allows it; host B's namespace is made inside host A's, and the
 * cable's far end is moved into it by process id. No named namespaces
 * (`ip netns add`): nothing is left behind when the processes die, and two
 * runs at once do not collide. Where none of this works, the tests skip with
 * a `[skipped]` line that says why.
 *
 * @module
 */
import assert from "node:assert/strict";
import { expectedText } from "./grading/compare.ts";
import { ProgramProcess, shellQuote } from "./grading/process.ts";
import { Program, SUBPROCESS } from "./helpers.ts";

/** Host A (the servers): its addresses on the cable. */
const A = { v4: "10.12.0.1", v6: "fd12::1" };
/** Host B (the clients). */
const B = { v4: "10.12.0.2", v6: "fd12::2" };

/**
 * Builds the two hosts, run with `sh -c` inside a new network namespace
 * (host A). Prints `hosts ready: A=PID B=PID` and then holds both namespaces
 * for at most 5 minutes (should the test die without ending them); with the
 * argument `probe` it tears them down at once.
 * `nodad` skips IPv6 duplicate address detection, which would keep the
 * addresses unusable ("tentative") for a second or two.
 */
const BUILD_HOSTS = `
set -eu
ip link set lo up
unshare -n sleep 300 &   # host B: a process in a network namespace of its own
b=$!
here=$(readlink /proc/$$/ns/net)
tries=0
while [ "$(readlink /proc/$b/ns/net)" = "$here" ]; do   # until unshare has made it
  tries=$((tries + 1))
  if [ $tries -gt 500 ]; then echo "host B's namespace did not appear within 5 s" >&2; exit 1; fi
  sleep 0.01
done
ip link add vethA type veth peer name vethB
ip link set vethB netns "$b"
ip addr add ${A.v4}/24 dev vethA
ip addr add ${A.v6}/64 dev vethA nodad
ip link set vethA up
nsenter -t "$b" -n sh -c '
  set -e
  ip link set lo up
  ip addr add ${B.v4}/24 dev vethB
  ip addr add ${B.v6}/64 dev vethB nodad
  ip link set vethB up'
if [ "\${1:-}" = probe ]; then kill "$b"; exit 0; fi
echo "hosts ready: A=$$ B=$b"
exec sleep 300
`;

/** One way to make the namespaces, and how to enter them from outside. */
interface Method {
  /** The unshare flags for host A. */
  unshare: string[];
  /** The nsenter flags that enter a host made this way (before -t PID). */
  enter: string[];
}

const AS_ROOT: Method = { unshare: ["-n"], enter: ["-n"] };
const IN_USER_NAMESPACE: Method = {
  unshare: ["-rn"],
  enter: ["-U", "-n", "--preserve-credentials"],
};

/**
 * Tries to build (and at once tear down) the two hosts each way; resolves to
 * the first way that works, or to why none does.
 */
async function findMethod(): Promise<Method | string> {
  // Root first: an ordinary user's `unshare -n` fails at once, and root's
  // `unshare -rn` is there for a root without the rights to make namespaces.
  const methods = [AS_ROOT, IN_USER_NAMESPACE];
  const failures: string[] = [];
  for (const method of methods) {
    const command = ["unshare", ...method.unshare, "sh", "-c", BUILD_HOSTS, "two-hosts", "probe"];
    try {
      const { success, stderr } = await new Deno.Command(command[0], {
        args: command.slice(1),
        stdin: "null",
        stdout: "null",
        stderr: "piped",
        signal: AbortSignal.timeout(10_000),
      }).output();
      if (success) return method;
      const why = new TextDecoder().decode(stderr).trim().split("\n").at(-1);
      failures.push(`unshare ${method.unshare.join(" ")}: ${why || "failed"}`);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return "unshare (util-linux) was not found";
      if (error instanceof Deno.errors.NotCapable) return "the test needs --allow-run";
      failures.push(`unshare ${method.unshare.join(" ")}: ${(error as Error).message}`);
    }
  }
  return failures.join("; ");
}

const method = await findMethod();
if (typeof method === "string") {
  console.log(
    "[skipped] two-host tests: two network namespaces joined by a veth pair could not be " +
      `made here (they need root, or unprivileged user namespaces, and ip from iproute2): ${method}`,
  );
}

/** Hosts A and B while they exist: programs run on them, and disposal ends both. */
class TwoHosts implements AsyncDisposable {
  private constructor(
    private readonly holder: ProgramProcess,
    private readonly pids: { A: number; B: number },
    private readonly method: Method,
  ) {}

  /** Builds both hosts and waits (at most 5 s) until they are ready. */
  static async build(method: Method): Promise<TwoHosts> {
    const command = ["unshare", ...method.unshare, "sh", "-c", BUILD_HOSTS, "two-hosts"];
    // exec: unshare becomes the group leader; killing the group ends A's and B's holders.
    const holder = ProgramProcess.spawn({ command: `exec ${command.map(shellQuote).join(" ")}` });
    const ready = /hosts ready: A=(\d+) B=(\d+)/;
    await holder.waitUntil(() => ready.test(holder.stdoutText()), 5000);
    const match = holder.stdoutText().match(ready);
    if (!match) {
      await holder.stop();
      throw new Error(
        `The two hosts were not ready within 5 s (the holder ${holder.describeExit()}):\n` +
          holder.stderrText(),
      );
    }
    return new TwoHosts(holder, { A: Number(match[1]), B: Number(match[2]) }, method);
  }

  /** Starts one of this project's programs on `host`, from the project folder. */
  run(host: "A" | "B", script: string, args: string[]): Program {
    const prefix = ["nsenter", "-t", String(this.pids[host]), ...this.method.enter];
    return Program.start(script, args, { prefix });
  }

  async [Symbol.asyncDispose]() {
    await this.holder.stop();
  }
}

/** Waits for a server's ready line and resolves to the next: who can reach it. */
async function whoCanReach(server: Program): Promise<string> {
  await server.readyPort();
  return (await server.waitForLine(/^(Only this machine|Serving other hosts)/)).input!;
}

/** What one transport's programs are called and print. */
interface Transport {
  name: "tcp" | "udp";
  server: string;
  client: string;
  /** Client arguments for an address that must fail: give up soon. */
  failFast: string[];
  /** The client's error when nothing serves the address. */
  noServer: RegExp;
  /** The client's output line for a reply. */
  printed: (sentence: string) => string;
  /** The startup line of a server that serves this machine only. */
  loopbackLine: RegExp;
}

const TRANSPORTS: Transport[] = [
  {
    name: "tcp",
    server: "tcp_server.ts",
    client: "tcp_client.ts",
    failFast: ["--timeout", "2"], // a refusal comes at once
    noServer: /^error: Connection refused by /,
    printed: (sentence) => `From Server: ${expectedText(sentence)}`,
    loopbackLine: /^Only this machine can connect \(loopback\)/,
  },
  {
    name: "udp",
    server: "udp_server.ts",
    client: "udp_client.ts",
    // Nothing answers a datagram sent to an address no socket has: only silence tells.
    failFast: ["--timeout", "0.5", "--tries", "1"],
    noServer: /^error: No reply from /,
    printed: (sentence) => expectedText(sentence),
    loopbackLine: /^Only this machine can reach it \(loopback\)/,
  },
];

/** One transport's clients on the two hosts, and what they must print. */
class Clients {
  constructor(private readonly hosts: TwoHosts, private readonly transport: Transport) {}

  /** Runs the client on `host` to the server at `address`; asserts it printed the reply. */
  async reach(host: "A" | "B", address: string) {
    const { name, client, printed } = this.transport;
    const sentence = `hello from ${host} to ${address}`;
    const args = ["--host", address, sentence];
    const { code, stdout, stderr } = await this.hosts.run(host, client, args).finish(5000);
    const where = `${name} client on host ${host} with --host ${address}`;
    assert.equal(code, 0, `${where}: exit code, stderr:\n${stderr}`);
    assert.equal(stdout.trim(), printed(sentence), `${where}: its output`);
  }

  /** Runs the client on B to the server at `address`; asserts it got no reply, and said why. */
  async cannotReach(address: string) {
    const { name, client, failFast, noServer } = this.transport;
    const args = ["--host", address, ...failFast, "hello"];
    const { code, stdout, stderr } = await this.hosts.run("B", client, args).finish(5000);
    const where = `${name} client on host B with --host ${address}`;
    assert.notEqual(code, 0, `${where} must fail, but printed:\n${stdout}`);
    assert.equal(stdout.trim(), "", `${where}: no reply`);
    assert.match(stderr, noServer, `${where}: its error`);
  }
}

for (const transport of TRANSPORTS) {
  const { name, server: serverScript } = transport;

  Deno.test({
    name: `two hosts (${name}): the default server serves its own host only; ` +
      "--host 0.0.0.0 and --host :: serve the other host at the server's address",
    ignore: typeof method === "string",
    permissions: SUBPROCESS,
    fn: async (t) => {
      await using hosts = await TwoHosts.build(method as Method);
      const clients = new Clients(hosts, transport);

      await t.step("default host: loopback only, and it says so", async () => {
        await using server = hosts.run("A", serverScript, []);
        assert.match(await whoCanReach(server), transport.loopbackLine);
        await clients.reach("A", "localhost"); // it does serve its own host
        await clients.cannotReach(A.v4);
        await clients.cannotReach(A.v6);
      });

      await t.step("--host 0.0.0.0: the other host at the IPv4 address", async () => {
        await using server = hosts.run("A", serverScript, ["--host", "0.0.0.0"]);
        assert.match(await whoCanReach(server), /^Serving other hosts too \(--host 0\.0\.0\.0\)/);
        await clients.reach("B", A.v4);
        await clients.cannotReach(A.v6); // 0.0.0.0 is every IPv4 address, and IPv4 only
      });

      await t.step("--host ::: the other host at both addresses", async () => {
        await using server = hosts.run("A", serverScript, ["--host", "::"]);
        assert.match(await whoCanReach(server), /^Serving other hosts too \(--host ::\)/);
        await clients.reach("B", A.v6);
        await clients.reach("B", A.v4); // :: takes IPv4 too here (dual stack)
      });
    },
  });
}
