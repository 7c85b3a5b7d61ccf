// The better-sse peer for `make bench PEERS=1`: one Channel, the same routes as
// `sse-batcher serve`. POST /events takes one event object, a JSON array or
// {"events": [...]}; each event is broadcast as one SSE message (event = type,
// id = a counter, data = the JSON envelope {id, type, source, ts, data}).
// GET /events subscribes; GET /stats counts the sessions; GET /health is readiness.
// Usage: node better_sse_server.mjs PORT [HEARTBEAT_SECONDS]
import http from "node:http";
import { createChannel, createSession } from "better-sse";

const port = Number(process.argv[2]);
const keepAlive = Number(process.argv[3] ?? 15) * 1000;
const channel = createChannel();
let nextId = 0;

function publish(entry) {
  nextId += 1;
  const id = String(nextId);
  const envelope = {
    id,
    type: entry.type,
    source: entry.source,
    ts: entry.ts ?? Date.now() / 1000,
    data: entry.data ?? {},
  };
  channel.broadcast(envelope, entry.type, { eventId: id });
}

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text),
  });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/health") return json(res, 200, { status: "ok" });
  if (path === "/stats") return json(res, 200, { subscribers: channel.sessionCount });
  if (path !== "/events") return json(res, 404, { error: "not found" });
  if (req.method === "GET") {
    createSession(req, res, { keepAlive }).then((session) => channel.register(session));
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString());
    } catch {
      return json(res, 400, { error: "invalid JSON" });
    }
    const entries = Array.isArray(body) ? body : (body.events ?? [body]);
    for (const entry of entries) publish(entry);
    json(res, 202, { accepted: entries.length });
  });
});
server.keepAliveTimeout = 0; // the bench's publisher keeps one connection for the run
server.listen(port, "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
