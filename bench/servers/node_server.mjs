// The uppercase service on Node's `net` and `dgram`: the benchmark's Node reference.
//
//   node node_server.mjs tcp|udp [PORT]
//
// Binds 127.0.0.1 (port 0: any free port) and prints the same ready line as
// the Deno servers. TCP: every chunk is decoded with a streaming UTF-8
// decoder, uppercased and written back; at the client's half-close the server
// ends its side too. UDP: one uppercased datagram back per datagram.
import dgram from "node:dgram";
import net from "node:net";
import process from "node:process";
import { StringDecoder } from "node:string_decoder";

const [transport, portText = "0"] = process.argv.slice(2);
const port = Number(portText);

function ready(address) {
  console.log(`The server is ready to receive on 127.0.0.1:${address.port}`);
}

if (transport === "tcp") {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    const decoder = new StringDecoder("utf8");
    socket.on("data", (chunk) => socket.write(decoder.write(chunk).toUpperCase()));
    socket.on("end", () => socket.end(decoder.end().toUpperCase()));
    socket.on("error", () => socket.destroy());
  });
  server.maxConnections = 100000;
  server.listen({ host: "127.0.0.1", port, backlog: 4096 }, () => ready(server.address()));
} else if (transport === "udp") {
  const socket = dgram.createSocket("udp4");
  socket.on("message", (message, client) => {
    const reply = Buffer.from(message.toString("utf8").toUpperCase());
    socket.send(reply, client.port, client.address);
  });
  socket.on("error", (error) => console.error(`udp error: ${error.message}`));
  socket.bind(port, "127.0.0.1", () => ready(socket.address()));
} else {
  console.error("usage: node node_server.mjs tcp|udp [PORT]");
  process.exit(2);
}
