"""The uppercase service on Python's asyncio: the benchmark's asyncio reference.

    python3 py_asyncio_server.py tcp|udp [PORT]

Binds 127.0.0.1 (port 0: any free port) and prints the same ready line as the
Deno servers. Uses asyncio's Protocol callbacks (its fastest stdlib API) and an
incremental UTF-8 decoder, so a character split across reads stays whole.
"""
import asyncio
import codecs
import sys


class UppercaseTcp(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def data_received(self, data):
        self.transport.write(self.decoder.decode(data).upper().encode())

    def eof_received(self):
        # The client half-closed: flush the decoder; returning None closes.
        self.transport.write(self.decoder.decode(b"", final=True).upper().encode())


class UppercaseUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        reply = data.decode("utf-8", "replace").upper().encode()
        self.transport.sendto(reply, addr)


async def main(transport, port):
    loop = asyncio.get_running_loop()
    if transport == "tcp":
        server = await loop.create_server(UppercaseTcp, "127.0.0.1", port, backlog=4096)
        bound = server.sockets[0].getsockname()[1]
    else:
        udp, _ = await loop.create_datagram_endpoint(UppercaseUdp, local_addr=("127.0.0.1", port))
        bound = udp.get_extra_info("sockname")[1]
    print(f"The server is ready to receive on 127.0.0.1:{bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("tcp", "udp"):
        sys.exit("usage: python3 py_asyncio_server.py tcp|udp [PORT]")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
