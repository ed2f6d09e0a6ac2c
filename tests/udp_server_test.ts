/**
 * udp_server.ts: tested in-process through startUdpServer() and as a real
 * subprocess. Every reply is compared byte for byte with expectedReply().
 */
import assert from "node:assert/strict";
import {
  countS,
  LineWriter,
  LOG_LINES_PER_SECOND,
  LOG_QUEUE_LINES,
  LOOP_BUDGET,
  refusalReason,
  SIGNAL_REPEAT_MS,
  signalAction,
  startUdpServer,
} from "../udp_server.ts";
import {
  assertBytes,
  expectedReply,
  expectOneLineError,
  NET,
  NO_NET_ERROR,
  Program,
  reserveFixedPort,
  ROOT,
  servedCount,
  SUBPROCESS,
  udpExchange,
  utf8,
  waitUntil,
  withDeadline,
  withServer,
} from "./helpers.ts";
import { portBecomesFree } from "./grading/net.ts";

function figures(line: string) {
  console.log(`[figures] ${line}`);
}

/** Sends `data` from a socket bound to `from` and resolves to the reply, or undefined. */
async function exchangeFrom(
  from: { hostname: string; port: number },
  port: number,
  data: Uint8Array,
  ms = 2000,
) {
  // `from` may be an address this test has just closed: a receive() still
  // pending on that socket keeps it open until the runtime has cancelled it.
  await portBecomesFree("udp", from.port, { ms: 2000, hostnames: [from.hostname] });
  const socket = Deno.listenDatagram({ transport: "udp", ...from });
  const receiving = socket.receive();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await socket.send(data, { transport: "udp", hostname: "127.0.0.1", port });
    const late = new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), ms));
    return (await Promise.race([receiving, late]))?.[0];
  } finally {
    clearTimeout(timer);
    socket.close();
    await receiving.catch(() => {});
  }
}

/** Sends one datagram and checks the exact reply and that it came from the server. */
async function checkReply(port: number, data: Uint8Array, hostname = "127.0.0.1") {
  const reply = await udpExchange({ hostname, port, data });
  assert.ok(reply, `no reply to a ${data.length}-byte datagram`);
  assert.equal(reply.from.port, port);
  assertBytes(reply.data, expectedReply(data));
  return reply.data;
}

// The golden test: the one place that pins the service itself, with a
// literal reply. Every other test derives its expectation from expectedReply().
Deno.test({
  name: "udp server: ASCII, multibyte and ß -> SS come back uppercased",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const reply = await checkReply(port, utf8("hello, ä € 😀 ß!"));
      assert.equal(new TextDecoder().decode(reply), "HELLO, Ä € 😀 SS!");
    }),
});

Deno.test("udp server: countS counts the letter s in either case, and nothing else", () => {
  assert.equal(countS("She sells sea shells"), "6");
  assert.equal(countS("SOS s ß ſ"), "3");
  assert.equal(countS(""), "0");
});

Deno.test({
  name: "udp server: count-s answers each datagram with its count of s and S",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, { service: "count-s" }, async (port) => {
      const count = async (data: Uint8Array) => {
        const reply = await udpExchange({ port, data });
        assert.ok(reply, `no reply to a ${data.length}-byte datagram`);
        assertBytes(reply.data, expectedReply(data, "count-s"));
        return new TextDecoder().decode(reply.data);
      };
      assert.equal(await count(utf8("She sells sea shells, straße")), "7"); // the golden count
      assert.equal(await count(utf8("ß ſ 😀")), "0"); // other letters
      assert.equal(await count(new Uint8Array(0)), "0");
      await count(new Uint8Array([0x73, 0xff, 0xc3, 0x53])); // invalid bytes are U+FFFD
      assert.equal(await count(utf8("s".repeat(65507))), "65507"); // the largest datagram
    }),
});

Deno.test({
  name: "udp server: invalid bytes become U+FFFD and the server lives on",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      // expectedReply() decodes each invalid byte as U+FFFD, as the server must.
      await checkReply(port, new Uint8Array([0xff, 0x61, 0xc3]));
      await checkReply(port, utf8("still here"));
    }),
});

Deno.test({
  name: "udp server: an empty datagram gets an empty reply",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const reply = await checkReply(port, new Uint8Array(0));
      assert.equal(reply.length, 0);
    }),
});

Deno.test({
  name: "udp server: a 65507-byte datagram (largest over IPv4) is received whole",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const data = utf8("abcdefghij".repeat(6551).slice(0, 65507));
      assert.equal(data.length, 65507);
      await checkReply(port, data);
    }),
});

Deno.test({
  name: "udp server: a 65527-byte datagram (largest over IPv6) is received whole",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port) => {
      const data = utf8("z".repeat(65527));
      await checkReply(port, data, "::1");
    }),
});

Deno.test({
  name: "udp server: a reply too big for one datagram is logged and dropped, then the next served",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port, log) => {
      // 32000 x ΐ: 64000 bytes in, 192000 bytes out (service-specific: it
      // needs a request that fits a datagram and a reply that does not).
      const data = utf8("\u0390".repeat(32000));
      const size = expectedReply(data).length;
      assert.ok(data.length <= 65507 && size > 65507, `${data.length} bytes in, ${size} out`);
      const reply = await udpExchange({ port, data, ms: 300 });
      assert.equal(reply, undefined);
      const counts = `${data.length} bytes in, ${size} bytes out do not fit`;
      assert.match(
        log.join("\n"),
        new RegExp(`Dropped the reply to 127\\.0\\.0\\.1:\\d+: ${counts}`),
      );
      await checkReply(port, utf8("next"));
    }),
});

Deno.test({
  name: "udp server: one log line per exchange with address and byte counts",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, {}, async (port, log) => {
      const data = utf8("ß");
      await checkReply(port, data);
      assert.equal(log.length, 1);
      const counts = `${data.length} bytes in, ${expectedReply(data).length} bytes out`;
      assert.match(log[0], new RegExp(`^Served 127\\.0\\.0\\.1:\\d+: ${counts}$`));
    }),
});

Deno.test({
  name: "udp server: localhost binds both 127.0.0.1 and ::1 on one port",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, { hostname: "localhost" }, async (port) => {
      await checkReply(port, utf8("v4"), "127.0.0.1");
      await checkReply(port, utf8("v6"), "::1");
    }),
});

// --- as a subprocess ------------------------------------------------------

Deno.test({
  name: "udp server (subprocess): ready line, replies, SIGTERM exits 0 with a goodbye",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("udp_server.ts", ["--port", "0"]);
    const ready = await server.waitForLine(/^The server is ready to receive on (.+)$/);
    assert.match(ready[1], /^127\.0\.0\.1:(\d+) and \[::1\]:\1$/);
    const port = await server.readyPort();
    const data = utf8("hello from a subprocess test");
    await checkReply(port, data);
    const counts = `${data.length} bytes in, ${expectedReply(data).length} bytes out`;
    await server.waitForLine(new RegExp(`^Served 127\\.0\\.0\\.1:\\d+: ${counts}$`));
    server.kill("SIGTERM");
    const { code, stdout } = await server.finish();
    assert.equal(code, 0);
    assert.match(stdout, /The server has shut down\.$/);
  },
});

Deno.test({
  name: "udp server (subprocess): without --unstable-net it names the flag, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    // --no-config: as if the file had been copied out of the project folder.
    await expectOneLineError("udp_server.ts", ["--port", "0"], {
      code: 2,
      pattern: /^error: UDP needs the --unstable-net flag/,
      flags: ["--no-config", "--allow-net"],
    });
  },
});

Deno.test({
  name: "udp server (subprocess): without --allow-net it says which flag to add, exit 2",
  permissions: SUBPROCESS,
  fn: async () => {
    await expectOneLineError("udp_server.ts", ["--port", "0"], {
      code: 2,
      pattern: NO_NET_ERROR,
      flags: [],
    });
  },
});

for (
  const [args, pattern] of [
    [["--port", "70000"], /--port must be a whole number from 0 to 65535, not "70000"/],
    [["--service", "lower"], /--service must be upper or count-s, not "lower"/],
    [["--port", "abc"], /--port must be a whole number from 0 to 65535, not "abc"/],
    [["--loud"], /Unknown option "--loud"/],
  ] as const
) {
  Deno.test({
    name: `udp server (subprocess): ${args.join(" ")} is a usage error, exit 2`,
    permissions: SUBPROCESS,
    fn: async () => {
      await expectOneLineError("udp_server.ts", [...args], { code: 2, pattern });
    },
  });
}

Deno.test({
  name: "udp server (subprocess): a port in use is a one-line error, exit 1",
  permissions: SUBPROCESS,
  fn: async () => {
    const taken = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    try {
      const port = String((taken.addr as Deno.NetAddr).port);
      const { code, stderr } = await Program.start("udp_server.ts", [
        "--host",
        "127.0.0.1",
        "--port",
        port,
      ]).finish();
      assert.equal(code, 1);
      assert.equal(
        stderr.trim(),
        `error: Address 127.0.0.1:${port} is already in use: stop the other server or choose another --port`,
      );
    } finally {
      taken.close();
    }
  },
});

// --- hostile input: loops ("Loop DoS", CVE-2024-2169) ------------------------

/** Binds a UDP socket, or returns undefined if the address is taken. */
function tryListen(hostname: string, port: number): Deno.DatagramConn | undefined {
  try {
    return Deno.listenDatagram({ transport: "udp", hostname, port });
  } catch (error) {
    if (error instanceof Deno.errors.AddrInUse) return undefined;
    throw error;
  }
}

/**
 * Plays another server on `socket`: sends `first` to the server at
 * 127.0.0.1:`server`, then answers every datagram that comes back with
 * `transform(datagram)`, until `ms` pass, `max` datagrams came, or `until()`
 * holds (looked at with every datagram and at least every 50 ms). Resolves
 * to how many datagrams the server sent. Without a loop defence the exchange
 * never ends by itself: only these bounds end it.
 */
async function bounce(socket: Deno.DatagramConn, options: {
  server: number;
  first: Uint8Array[];
  transform: (data: Uint8Array) => Uint8Array;
  ms?: number;
  max?: number;
  until?: () => boolean;
}): Promise<number> {
  const { server, first, transform, ms = 400, max = 20_000, until = () => false } = options;
  const to = { transport: "udp" as const, hostname: "127.0.0.1", port: server };
  const stopAt = performance.now() + ms;
  let received = 0;
  let pending: Promise<[Uint8Array, Deno.Addr]> | undefined;
  try {
    for (const data of first) await socket.send(data, to);
    while (received < max && !until()) {
      const left = stopAt - performance.now();
      if (left <= 0) break;
      pending ??= socket.receive();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const quiet = new Promise<undefined>((r) =>
        timer = setTimeout(() => r(undefined), Math.min(left, 50))
      );
      const result = await Promise.race([pending, quiet]);
      clearTimeout(timer);
      if (result === undefined) continue; // quiet for 50 ms: look at the bounds again
      pending = undefined;
      received++;
      await socket.send(transform(result[0]), result[1]);
    }
  } finally {
    socket.close();
    await pending?.catch(() => {});
  }
  return received;
}

Deno.test({
  name: "udp server: refusalReason refuses its own port and ports below 1024, nothing else",
  fn: () => {
    const from = (hostname: string, port: number) => ({
      transport: "udp" as const,
      hostname,
      port,
    });
    assert.match(refusalReason(from("127.0.0.1", 12000), 12000)!, /this server's own port/);
    assert.match(refusalReason(from("10.0.0.9", 12000), 12000)!, /this server's own port/);
    assert.match(refusalReason(from("::1", 12000), 12000)!, /this server's own port/);
    for (const port of [0, 7, 19, 53, 123, 1023]) {
      assert.match(refusalReason(from("127.0.0.2", port), 12000)!, /belongs to a service/);
    }
    for (const port of [1024, 11999, 12001, 32768, 60999, 65535]) {
      assert.equal(refusalReason(from("127.0.0.2", port), 12000), undefined);
    }
  },
});

Deno.test({
  name: "udp server: datagrams from its own port on another address (a second server) get no reply",
  permissions: NET,
  fn: async () => {
    for (let attempt = 1;; attempt++) {
      let tookPlace = false;
      let served: string[] = []; // the log, read after shutdown: its last summary
      await withServer(startUdpServer, { hostname: "127.0.0.1" }, async (port, log) => {
        // Another uppercase server, on 127.0.0.2 and the same port as ours.
        const other = tryListen("127.0.0.2", port);
        if (!other) return; // taken: try another port
        tookPlace = true;
        const first = Array.from({ length: 50 }, (_, i) => utf8(`hello ${i}`));
        const received = await bounce(other, { server: port, first, transform: expectedReply });
        figures(`same-port loop: ${received} datagrams from our server in 0.4 s (50 sent)`);
        assert.equal(received, 0, "our server answered a server on its own port");
        served = log;
      });
      if (!tookPlace && attempt < 5) continue;
      assert.ok(tookPlace, "127.0.0.2 had no free port like ours in 5 tries");
      // 50 refusals: a few lines, then one summary line (written at shutdown).
      const refused = served.filter((line) => line.startsWith("Did not answer 127.0.0.2:"));
      assert.ok(refused.length >= 1 && refused.length <= LOG_LINES_PER_SECOND, served.join("\n"));
      assert.match(
        refused[0],
        /: it comes from this server's own port \(forged, or another server/,
      );
      assert.match(served.join("\n"), /^\.\.\. and \d+ more datagrams not answered/m);
      return;
    }
  },
});

Deno.test({
  name: "udp server: a loop with an echo server on another port ends after LOOP_BUDGET replies",
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, { hostname: "127.0.0.1" }, async (port, log) => {
      // An echo server on 127.0.0.3, kicked off with three replies of the
      // service: three loops at once, every datagram in them a fixed point of
      // the service (uppercasing uppercase text changes nothing).
      // A reserved port, not an ephemeral one: the test binds it again below,
      // and an ephemeral port could meanwhile go to another test's socket.
      using reserved = await reserveFixedPort();
      const echoPort = reserved.port;
      const echo = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.3", port: echoPort });
      const first = ["loop 1", "loop 2", "loop 3"].map((text) => expectedReply(utf8(text)));
      for (const data of first) assertBytes(expectedReply(data), data, "the reply to a reply");
      // Until 0.4 s after the server says it stopped (it must stay stopped),
      // within 3.4 s: on a loaded machine the loop can take longer than usual
      // to pass LOOP_BUDGET in one second.
      const stoppedLines = () =>
        log.filter((line) => line.startsWith(`Stopped answering 127.0.0.3:${echoPort}`));
      let stoppedAt: number | undefined;
      const started = performance.now();
      const received = await bounce(echo, {
        server: port,
        first,
        transform: (d) => d,
        ms: 3400,
        until: () => {
          if (stoppedAt === undefined && stoppedLines().length > 0) stoppedAt = performance.now();
          return stoppedAt !== undefined && performance.now() - stoppedAt >= 400;
        },
      });
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      figures(`loop with an echo server: ${received} datagrams from our server in ${seconds} s`);
      // One window of LOOP_BUDGET, or two if the loops straddle a window edge.
      assert.ok(received <= 2 * LOOP_BUDGET, `${received} replies in a loop`);
      const stopped = stoppedLines();
      assert.ok(stopped.length >= 1 && stopped.length <= 2, log.join("\n"));
      assert.match(stopped[0], /over 100 datagrams in 1 s that uppercasing does not change/);
      // Ordinary clients, and lowercase text from that very address, are still served.
      await checkReply(port, utf8("an ordinary client"));
      const from = { hostname: "127.0.0.3", port: echoPort };
      const lower = utf8("lower");
      assert.notDeepEqual(expectedReply(lower), lower, "the service changes this text");
      const again = await exchangeFrom(from, port, lower);
      assert.ok(again, "no reply to lowercase text from the echo server's address");
      assertBytes(again, expectedReply(lower));
    }),
});

/** Whether this process may send IPv4 datagrams with a made-up source (root). */
const canForge = await (async () => {
  try {
    const probe =
      "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)";
    const { success } = await new Deno.Command("python3", {
      args: ["-c", probe],
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false; // no python3, or no --allow-run
  }
})();
if (!canForge) {
  console.log("[skipped] forged-source tests: they need python3 and root (raw sockets)");
}

/** Sends one datagram with a forged source address, through a raw socket (root). */
async function forge(from: [string, number], to: [string, number], text: string) {
  const script = `
import socket, struct, sys
src, sport, dst, dport, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5].encode()
udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(ip + udp, (dst, 0))
`;
  const args = ["-c", script, from[0], String(from[1]), to[0], String(to[1]), text];
  const { success, stderr } = await new Deno.Command("python3", { args, stdout: "null" }).output();
  assert.ok(success, new TextDecoder().decode(stderr));
}

/** Runs `body` with two in-process servers, A on 127.0.0.1 and B on `bHost` (port as asked). */
async function withTwoServers(
  bHost: string,
  bPort: (aPort: number) => number,
  body: (a: { port: number; log: string[] }, b: { port: number; log: string[] }) => Promise<void>,
) {
  for (let attempt = 1;; attempt++) {
    try {
      await withServer(startUdpServer, { hostname: "127.0.0.1" }, (aPort, aLog) =>
        withServer(
          startUdpServer,
          { hostname: bHost, port: bPort(aPort) },
          (port, log) => body({ port: aPort, log: aLog }, { port, log }),
        ));
      return;
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse) || attempt === 5) throw error;
    }
  }
}

Deno.test({
  name: "udp server (forged, root): a datagram from its own address and port gets no reply",
  ignore: !canForge,
  permissions: { net: true, run: true },
  fn: () =>
    withServer(startUdpServer, { hostname: "127.0.0.1" }, async (port, log) => {
      await forge(["127.0.0.1", port], ["127.0.0.1", port], "hello");
      const refused = new RegExp(`^Did not answer 127\\.0\\.0\\.1:${port}: it comes from this`);
      await waitUntil(() => log.some((l) => refused.test(l)), 2000, () => log.join("\n"));
      await new Promise((r) => setTimeout(r, 200)); // a loop would show by now
      assert.equal(servedCount(log), 0, log.join("\n"));
    }),
});

Deno.test({
  name: "udp server (forged, root): two of our servers on the same port: the loop never starts",
  ignore: !canForge,
  permissions: { net: true, run: true },
  fn: () =>
    withTwoServers("127.0.0.2", (aPort) => aPort, async (a, b) => {
      await forge(["127.0.0.2", b.port], ["127.0.0.1", a.port], "hello");
      const refused = new RegExp(`^Did not answer 127\\.0\\.0\\.2:${b.port}: it comes from this`);
      await waitUntil(() => a.log.some((l) => refused.test(l)), 2000, () => a.log.join("\n"));
      await new Promise((r) => setTimeout(r, 200));
      figures(`forged same-port loop: ${servedCount(a.log) + servedCount(b.log)} datagrams`);
      assert.equal(servedCount(a.log) + servedCount(b.log), 0);
    }),
});

Deno.test({
  name: "udp server (forged, root): two of our servers on different ports: the loop ends",
  ignore: !canForge,
  permissions: { net: true, run: true },
  fn: async () => {
    const logs: string[][] = [];
    await withTwoServers("127.0.0.1", () => 0, async (a, b) => {
      await forge(["127.0.0.1", b.port], ["127.0.0.1", a.port], "hello");
      const stopped = () => [...a.log, ...b.log].some((l) => l.startsWith("Stopped answering"));
      await waitUntil(stopped, 2000, () => [...a.log, ...b.log].join("\n"));
      await new Promise((r) => setTimeout(r, 200)); // the loop would go on meanwhile
      logs.push(a.log, b.log);
    });
    // Counted after shutdown, which writes the last summary lines.
    const total = servedCount(logs[0]) + servedCount(logs[1]);
    figures(`forged loop between two servers on two ports: ${total} datagrams in all`);
    assert.ok(total <= 4 * LOOP_BUDGET + 1, `${total} datagrams`);
  },
});

/** Whether this process may bind a port below 1024 (root, or a lowered limit). */
const lowPortSocket = (() => {
  try {
    return Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.2", port: 7 });
  } catch {
    return undefined;
  }
})();
lowPortSocket?.close();
if (!lowPortSocket) {
  console.log("[skipped] port-7 test: binding a port below 1024 needs root here");
}

Deno.test({
  name: "udp server: a datagram from a port below 1024 (echo, port 7) gets no reply",
  ignore: lowPortSocket === undefined,
  permissions: NET,
  fn: () =>
    withServer(startUdpServer, { hostname: "127.0.0.1" }, async (port, log) => {
      const echo = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.2", port: 7 });
      const received = await bounce(echo, {
        server: port,
        first: [utf8("hello")],
        transform: (d) => d,
        ms: 200,
      });
      assert.equal(received, 0);
      assert.match(log.join("\n"), /^Did not answer 127\.0\.0\.2:7: port 7 belongs to a service/m);
    }),
});

// --- hostile input: log floods and a stuck output --------------------------------

Deno.test({
  name: "udp server: a flood is logged as a few lines per second and a summary, all counted",
  permissions: NET,
  fn: async () => {
    let log: string[] = []; // read after shutdown, which writes the last summary
    let answered = 0;
    const sent = 20 * 50;
    await withServer(startUdpServer, { hostname: "127.0.0.1" }, async (port, serverLog) => {
      log = serverLog;
      await Promise.all(Array.from({ length: 20 }, async (_, s) => {
        const socket = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
        let receiving: Promise<[Uint8Array, Deno.Addr]> | undefined;
        try {
          for (let i = 0; i < 50; i++) {
            await socket.send(utf8(`flood ${s}.${i}`), {
              transport: "udp",
              hostname: "127.0.0.1",
              port,
            });
          }
          // Replies until all came or 300 ms pass without one.
          for (let got = 0; got < 50; got++) {
            receiving ??= socket.receive();
            let timer: ReturnType<typeof setTimeout> | undefined;
            const quiet = new Promise<undefined>((r) =>
              timer = setTimeout(() => r(undefined), 300)
            );
            const result = await Promise.race([receiving, quiet]);
            clearTimeout(timer);
            if (result === undefined) break;
            receiving = undefined;
            answered++;
          }
        } finally {
          socket.close();
          await receiving?.catch(() => {});
        }
      }));
    });
    const verbatim = log.filter((line) => line.startsWith("Served ")).length;
    const summaries = log.filter((line) => /^\.\.\. and \d+ more datagrams served in/.test(line));
    figures(
      `log flood: ${sent} datagrams sent, ${answered} answered, ${log.length} log lines ` +
        `(${verbatim} verbatim, ${summaries.length} summaries)`,
    );
    assert.ok(answered > 2 * LOG_LINES_PER_SECOND, `only ${answered} answered`);
    // At most LOG_LINES_PER_SECOND a second; each second past it has one summary.
    assert.ok(verbatim <= LOG_LINES_PER_SECOND * (summaries.length + 1), log.join("\n"));
    assert.ok(summaries.length >= 1, log.join("\n"));
    assert.ok(log.length <= 5 * (LOG_LINES_PER_SECOND + 1), `${log.length} lines`);
    // Nothing is lost from the count: every reply is a line or in a summary.
    const counted = servedCount(log);
    assert.ok(counted >= answered && counted <= sent, `${counted} counted, ${answered} answered`);
  },
});

Deno.test({
  name: "udp server: LineWriter never waits; past LOG_QUEUE_LINES it drops and counts",
  fn: async () => {
    const written: string[] = [];
    let release: () => void = () => {};
    const stuck = new Promise<void>((resolve) => release = resolve);
    const output = {
      async write(bytes: Uint8Array) {
        await stuck; // like a pipe nobody reads, until release()
        written.push(new TextDecoder().decode(bytes));
        return bytes.length;
      },
    };
    const out = new LineWriter(output);
    const total = LOG_QUEUE_LINES + 500;
    for (let i = 1; i <= total; i++) out.line(`line ${i}`); // returns at once: no await
    assert.equal(await out.flush(50), false, "flush gives up on a stuck output");
    release();
    assert.equal(await out.flush(1000), true);
    const lines = written.join("").split("\n").slice(0, -1);
    // Line 1 was being written; lines 2 to 1001 waited; the rest were dropped.
    assert.equal(lines.length, 1 + LOG_QUEUE_LINES + 1);
    assert.equal(lines[0], "line 1");
    assert.equal(lines[LOG_QUEUE_LINES], `line ${LOG_QUEUE_LINES + 1}`);
    assert.equal(
      lines.at(-1),
      `(${total - 1 - LOG_QUEUE_LINES} log lines dropped: the output could not keep up)`,
    );
    out.line("after");
    assert.equal(await out.flush(1000), true);
    assert.equal(written.at(-1), "after\n");
  },
});

/**
 * The UDP server as a subprocess whose stdout is a pipe this test does not
 * read, filled to the brim (64 KiB), as when nobody reads a server's output
 * for a while. Linux only: it fills the pipe through /proc/PID/fd/1.
 */
class StuckServer implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly port: number;
  #stderr: Promise<string>;
  #stdout: Promise<string> | undefined;

  private constructor(child: Deno.ChildProcess, port: number) {
    this.child = child;
    this.port = port;
    this.#stderr = new Response(child.stderr).text();
  }

  static async start(): Promise<StuckServer> {
    using reserved = await reserveFixedPort();
    const env = Deno.env.toObject();
    delete env.RUST_BACKTRACE;
    env.NO_COLOR = "1";
    const port = reserved.port;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--allow-net", `${ROOT}udp_server.ts`, "--host", "127.0.0.1"]
        .concat(["--port", String(port)]),
      cwd: ROOT,
      clearEnv: true,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const server = new StuckServer(child, port);
    try {
      // Its ready line is not read: ready is when it answers.
      await waitFor(async () => !!await udpExchange({ port, data: utf8("ready?"), ms: 100 }));
      await server.#fill();
    } catch (error) {
      await server[Symbol.asyncDispose]();
      throw error;
    }
    return server;
  }

  /** Fills the stdout pipe: dd writes without blocking until the pipe is full. */
  async #fill() {
    const { stderr } = await new Deno.Command("dd", {
      args: ["if=/dev/zero", `of=/proc/${this.child.pid}/fd/1`, "bs=65536", "count=2"]
        .concat(["oflag=nonblock"]),
      stdout: "null",
    }).output();
    const why = new TextDecoder().decode(stderr);
    assert.match(why, /Resource temporarily unavailable/, `dd did not fill the pipe: ${why}`);
  }

  /** Starts reading stdout; resolves to its lines (past the filling) at exit. */
  drain(): Promise<string[]> {
    this.#stdout ??= new Response(this.child.stdout).text();
    return this.#stdout.then((text) => text.replaceAll("\0", "").split("\n").filter(Boolean));
  }

  /** Waits for the exit within `ms`; resolves to the exit code. */
  async exitCode(ms = 5000): Promise<number> {
    return (await withDeadline(this.child.status, ms, "the server to exit")).code;
  }

  async stderr(): Promise<string> {
    return await this.#stderr;
  }

  async [Symbol.asyncDispose]() {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await this.child.status;
    if (this.#stdout === undefined) await this.child.stdout.cancel();
    else await this.#stdout;
    await this.#stderr;
  }
}

/** Resolves once `condition()` resolves to true, trying every 20 ms for `ms`. */
async function waitFor(condition: () => Promise<boolean>, ms = 5000) {
  const stopAt = performance.now() + ms;
  while (!await condition()) {
    if (performance.now() > stopAt) throw new Error(`Deadline: waited ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const onLinux = Deno.build.os === "linux";

Deno.test({
  name: "udp server (subprocess): with stdout a full pipe nobody reads, clients are still served",
  ignore: !onLinux,
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = await StuckServer.start();
    // Every datagram now adds a log line the server cannot write.
    for (let i = 0; i < 5; i++) {
      const started = performance.now();
      await checkReply(server.port, utf8(`good client ${i}`));
      const ms = performance.now() - started;
      assert.ok(ms < 2000, `served after ${ms} ms`);
    }
    server.child.kill("SIGTERM");
    const lines = await server.drain(); // someone reads at last
    assert.equal(await server.exitCode(), 0, await server.stderr());
    assert.equal(lines.at(-1), "The server has shut down.");
    assert.ok(lines.some((line) => /^Served 127\.0\.0\.1:\d+: 13 bytes in/.test(line)));
  },
});

// --- signals ---------------------------------------------------------------------

Deno.test({
  name: "udp server: signalAction: a repeat within 200 ms is the same signal; later, 128 + n",
  fn: () => {
    assert.equal(SIGNAL_REPEAT_MS, 200);
    for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      assert.equal(signalAction(signal, undefined), "shut down");
      assert.equal(signalAction(signal, 0), "ignore");
      assert.equal(signalAction(signal, 199), "ignore");
    }
    assert.equal(signalAction("SIGINT", 200), 130);
    assert.equal(signalAction("SIGTERM", 200), 143);
    assert.equal(signalAction("SIGHUP", 5000), 129);
  },
});

Deno.test({
  name: "udp server (subprocess): SIGHUP (terminal closed) shuts down gracefully, exit 0",
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = Program.start("udp_server.ts", ["--port", "0"]);
    const port = await server.readyPort();
    await checkReply(port, utf8("before the hangup"));
    server.kill("SIGHUP");
    const { code, stdout } = await server.finish();
    assert.equal(code, 0);
    assert.match(stdout, /^Shutting down/m);
    assert.match(stdout, /The server has shut down\.$/);
  },
});

for (const [signal, code] of [["SIGTERM", 143], ["SIGINT", 130]] as const) {
  Deno.test({
    name:
      `udp server (subprocess): a second ${signal} 300 ms into the shutdown quits, exit ${code}`,
    ignore: !onLinux,
    permissions: SUBPROCESS,
    fn: async () => {
      // The full stdout holds the shutdown at its last step, writing the goodbye.
      await using server = await StuckServer.start();
      server.child.kill(signal);
      await new Promise((r) => setTimeout(r, 300));
      server.child.kill(signal);
      assert.equal(await server.exitCode(3000), code);
    },
  });
}

Deno.test({
  name: "udp server (subprocess): two SIGINTs 50 ms apart (Ctrl-C under deno task) are one",
  ignore: !onLinux,
  permissions: SUBPROCESS,
  fn: async () => {
    await using server = await StuckServer.start(); // holds the shutdown, as above
    server.child.kill("SIGINT");
    await new Promise((r) => setTimeout(r, 50));
    server.child.kill("SIGINT");
    await new Promise((r) => setTimeout(r, 150)); // the second one is handled by now
    const lines = await server.drain();
    assert.equal(await server.exitCode(), 0);
    assert.equal(lines.at(-1), "The server has shut down.");
  },
});

// --- permissions -------------------------------------------------------------------

Deno.test({
  name: "udp server (subprocess): a grant without ::1 names [::1]:PORT and the grant to give",
  permissions: SUBPROCESS,
  fn: async () => {
    using reserved = await reserveFixedPort();
    const p = reserved.port;
    const line = await expectOneLineError("udp_server.ts", ["--port", String(p)], {
      code: 2,
      pattern: new RegExp(
        `^error: Network access to \\[::1\\]:${p} was not granted: grant the ` +
          "hosts without a port, as in --allow-net='127\\.0\\.0\\.1,\\[::1\\]'",
      ),
      flags: [`--allow-net=127.0.0.1:${p}`],
    });
    assert.doesNotMatch(line, /run again with the --allow-net flag/);
  },
});

Deno.test({
  name: "udp server (subprocess): a grant with the port cannot reply; the log says what to grant",
  permissions: SUBPROCESS,
  fn: async () => {
    using reserved = await reserveFixedPort();
    const p = String(reserved.port);
    await using server = Program.start("udp_server.ts", ["--host", "127.0.0.1", "--port", p], {
      flags: [`--allow-net=127.0.0.1:${p}`],
    });
    const port = await server.readyPort();
    assert.equal(await udpExchange({ port, data: utf8("hi"), ms: 300 }), undefined);
    await server.waitForLine(
      /^Could not reply to 127\.0\.0\.1:(\d+): the --allow-net grant does not include 127\.0\.0\.1:\1 \(replies go to each client's own port: grant hosts without a port, as in --allow-net='127\.0\.0\.1,\[::1\]'\)$/,
    );
    server.kill("SIGTERM");
    assert.equal((await server.finish()).code, 0);
  },
});
