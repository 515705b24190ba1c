// Peer server: Node's `ws`, for benchmarks/bench_loop.py (the event loop of issue 15).
//
// The endpoints of benchmarks/peers/: /echo sends every message back unchanged, / sends
// every text message unchanged to every *other* connected client. Compression off (ws's
// default), messages up to 16 MiB, no pings. Prints "ready PORT" once it listens; exits 0
// on SIGTERM or SIGINT. `npm ci` in this folder installs ws (node_modules is not committed).
"use strict";

const http = require("http");
const { WebSocketServer, WebSocket } = require("ws");

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at === -1 ? fallback : args[at + 1];
};
const host = option("--host", "127.0.0.1");
const port = Number(option("--port", "0"));

const server = http.createServer((request, response) => {
  response.writeHead(426).end();
});
const options = { noServer: true, perMessageDeflate: false, maxPayload: 16 * 1024 * 1024 };
const echo = new WebSocketServer(options);
const chat = new WebSocketServer(options);

echo.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
});

chat.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      ws.close(1003, "binary messages are not supported");
      return;
    }
    for (const other of chat.clients) {
      if (other !== ws && other.readyState === WebSocket.OPEN) {
        other.send(data, { binary: false });
      }
    }
  });
});

server.on("upgrade", (request, socket, head) => {
  const path = new URL(request.url, "http://localhost").pathname;
  const endpoint = path === "/echo" ? echo : path === "/" ? chat : null;
  if (endpoint === null) {
    socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    return;
  }
  endpoint.handleUpgrade(request, socket, head, (ws) => endpoint.emit("connection", ws));
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}

server.listen(port, host, () => {
  console.log(`ready ${server.address().port}`);
});
