// A ground-truth SSE server for comparing load generators (benchmarks/bench_peers.py).
//
// Why a separate Node.js program: the clients under test (burstbench, `vllm bench serve`,
// AIPerf) are all Python/aiohttp; a server written with burstbench's own code could share
// its bugs or its event-loop habits. This one uses nothing but Node's `http` module and
// records, per request, when it read the request and when it wrote each chunk, so every
// client's timings can be checked against what really happened on the wire.
//
// Clock: times are `process.hrtime.bigint()`, which libuv reads from CLOCK_MONOTONIC on
// Linux, the same clock as Python's `time.perf_counter()` / `time.monotonic()`. The
// Python side does not take that on faith: GET /clock answers the server's clock, and
// the caller brackets the call with its own reads to bound the offset (bench_peers.py
// prints offset and its uncertainty).
//
// OpenAI-compatible enough for the three clients: GET /v1/models, POST /v1/completions
// and /v1/chat/completions (streaming or not; `stream_options.include_usage` adds the
// usage chunk vLLM sends), `max_tokens` / `max_completion_tokens` honoured exactly
// (there is no EOS, so `ignore_eos` changes nothing), anything else 404.
//
// Timing: the first token is written --ttft ms after the request was read, then one
// token every --itl ms, on absolute deadlines (recv + ttft + k * itl) so one late timer
// does not shift the rest. With --itl 0 tokens go out as fast as the client reads them:
// each write that the socket cannot take waits for 'drain', and streams take turns
// (setImmediate) so one stream does not starve the others.
//
// Log: one JSON line per request, written to --log when the server gets SIGTERM or
// SIGINT: {"tag", "path", "recv_ns", "writes_ns": [...], "tokens", "status"}. The tag is
// the request's x-request-id header (vLLM and AIPerf send one), else the `tag:WORD` in
// its prompt (burstbench sends trace prompts as given), else the server's own serial.
//
//   node benchmarks/truth_server.mjs --port 0 --ttft 50 --itl 20 --log /tmp/truth.jsonl
//   -> prints {"url": "http://127.0.0.1:PORT", "pid": N} on stdout when listening

import http from "node:http";
import fs from "node:fs";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    ttft: { type: "string", default: "0" }, // ms from request read to the first token
    itl: { type: "string", default: "0" }, // ms between tokens (0: as fast as the client reads)
    tokens: { type: "string", default: "16" }, // answer length when the request names none
    "max-tokens": { type: "string", default: "100000" }, // bound on any asked length
    "max-records": { type: "string", default: "2000000" }, // bound on logged requests
    model: { type: "string", default: "truth" },
    word: { type: "string", default: " the" }, // text of every token
    log: { type: "string" },
  },
});

const num = (name, lo, hi) => {
  const v = Number(opt[name]);
  if (!Number.isFinite(v) || v < lo || v > hi) {
    process.stderr.write(`truth_server: --${name} ${opt[name]}: give a number in [${lo}, ${hi}]\n`);
    process.exit(2);
  }
  return v;
};
const TTFT_NS = BigInt(Math.round(num("ttft", 0, 3.6e6) * 1e6));
const ITL_NS = BigInt(Math.round(num("itl", 0, 3.6e6) * 1e6));
const DEFAULT_TOKENS = num("tokens", 1, 1e7);
const MAX_TOKENS = num("max-tokens", 1, 1e7);
const MAX_RECORDS = num("max-records", 0, 1e8);
const MAX_BODY = 8 << 20; // bytes; a bigger request body is refused (413)
const MODEL = opt.model;
const WORD = opt.word;

const now = () => process.hrtime.bigint();
const records = [];
let dropped = 0;
let serial = 0;

// Never before t: Node's timers run on libuv's loop time, cached in whole milliseconds at the
// start of a loop turn, so a setTimeout can fire up to ~1 ms early by CLOCK_MONOTONIC (seen:
// a write 0.55 ms before its deadline). The rest is waited out in loop turns (setImmediate).
const sleepUntil = async (t) => {
  for (;;) {
    const ms = Number(t - now()) / 1e6;
    if (ms <= 0) return;
    await new Promise((resolve) => (ms < 1 ? setImmediate(resolve) : setTimeout(resolve, ms)));
  }
};

// wait until the socket takes more, or the client went away (then 'drain' never comes)
const drained = (res) =>
  new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });

function tagOf(req, body) {
  const h = req.headers["x-request-id"];
  if (typeof h === "string" && h) return h.slice(0, 200);
  let text = typeof body.prompt === "string" ? body.prompt : "";
  if (!text && Array.isArray(body.messages)) {
    for (const m of body.messages) {
      if (typeof m?.content === "string") text += m.content + " ";
      else if (Array.isArray(m?.content)) for (const p of m.content) if (typeof p?.text === "string") text += p.text + " ";
    }
  }
  const m = /tag:(\S{1,200})/.exec(text);
  return m ? m[1] : `s${serial}`;
}

function promptTokens(body) {
  const count = (s) => (typeof s === "string" ? s.split(/\s+/).filter(Boolean).length : 0);
  if (body.prompt !== undefined) return Array.isArray(body.prompt) ? body.prompt.length : count(body.prompt);
  let n = 0;
  for (const m of body.messages ?? []) n += typeof m?.content === "string" ? count(m.content) : 0;
  return n;
}

function chunk(chat, id, created, text, finish, first) {
  const choice = chat
    ? { index: 0, delta: first ? { role: "assistant", content: text } : { content: text }, logprobs: null, finish_reason: finish }
    : { index: 0, text, logprobs: null, finish_reason: finish };
  const obj = chat ? "chat.completion.chunk" : "text_completion";
  return `data: ${JSON.stringify({ id, object: obj, created, model: MODEL, choices: [choice] })}\n\n`;
}

async function answer(req, res, recv, path, body) {
  const chat = path === "/v1/chat/completions";
  const asked = body.max_completion_tokens ?? body.max_tokens ?? DEFAULT_TOKENS;
  if (!Number.isInteger(asked) || asked < 1 || asked > MAX_TOKENS) {
    res.writeHead(400, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { message: `max_tokens must be an integer in [1, ${MAX_TOKENS}]`, type: "BadRequestError" } }));
    return;
  }
  serial += 1;
  const rec = { tag: tagOf(req, body), path, recv_ns: Number(recv), writes_ns: [], tokens: asked, status: "ok" };
  if (records.length < MAX_RECORDS) records.push(rec);
  else dropped += 1;
  const id = `${chat ? "chatcmpl" : "cmpl"}-${serial}`;
  const created = Math.floor(Date.now() / 1000);
  const usage = { prompt_tokens: promptTokens(body), completion_tokens: asked, total_tokens: promptTokens(body) + asked };
  let closed = false;
  res.on("close", () => {
    if (!res.writableFinished) {
      closed = true;
      rec.status = "closed";
    }
  });

  if (!body.stream) {
    await sleepUntil(recv + TTFT_NS + ITL_NS * BigInt(asked - 1));
    const text = WORD.repeat(asked);
    const choice = chat
      ? { index: 0, message: { role: "assistant", content: text }, finish_reason: "length" }
      : { index: 0, text, logprobs: null, finish_reason: "length" };
    const obj = chat ? "chat.completion" : "text_completion";
    rec.writes_ns.push(Number(now()));
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ id, object: obj, created, model: MODEL, choices: [choice], usage }));
    return;
  }

  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  res.flushHeaders();
  // The server's own cost per token bounds experiment A (tokens as fast as the client
  // reads): an answer's middle chunks are all the same bytes, so they are built once, and a
  // token already due is written without awaiting a timer. Server CPU per token in A
  // (64 streams, burstbench as the client, 4 runs each, interleaved): median 5.5 us before,
  // 3.3 us after; its CPU share fell from 85-94% to 68-77% while the client read more.
  const mid = asked > 2 ? chunk(chat, id, created, WORD, null, false) : "";
  for (let k = 0; k < asked && !closed; k++) {
    const due = recv + TTFT_NS + ITL_NS * BigInt(k);
    if (due > now()) {
      await sleepUntil(due);
      if (closed) break;
    }
    const last = k === asked - 1;
    const data = k === 0 || last ? chunk(chat, id, created, WORD, last ? "length" : null, k === 0) : mid;
    rec.writes_ns.push(Number(now()));
    if (!res.write(data)) await drained(res);
  }
  if (closed) return;
  let tail = "";
  if (body.stream_options?.include_usage) {
    tail += `data: ${JSON.stringify({ id, object: chat ? "chat.completion.chunk" : "text_completion", created, model: MODEL, choices: [], usage })}\n\n`;
  }
  res.end(tail + "data: [DONE]\n\n");
}

function json(res, status, obj) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(obj));
}

const server = http.createServer((req, res) => {
  const recv = now();
  const path = (req.url ?? "/").split("?")[0];
  if (req.method === "GET" && path === "/clock") {
    // read the clock as late as possible, right before answering
    return json(res, 200, { mono_ns: now().toString(), wall_ns: (BigInt(Date.now()) * 1000000n).toString() });
  }
  if (req.method === "GET" && (path === "/health" || path === "/v1/health")) return json(res, 200, { ok: true });
  if (req.method === "GET" && path === "/v1/models") {
    return json(res, 200, { object: "list", data: [{ id: MODEL, object: "model", created: 0, owned_by: "truth_server", max_model_len: 1 << 20 }] });
  }
  if (req.method !== "POST" || (path !== "/v1/completions" && path !== "/v1/chat/completions")) {
    return json(res, 404, { error: { message: `no route ${req.method} ${path}`, type: "NotFoundError" } });
  }
  const parts = [];
  let size = 0;
  req.on("data", (b) => {
    size += b.length;
    if (size <= MAX_BODY) parts.push(b);
  });
  req.on("end", () => {
    if (size > MAX_BODY) return json(res, 413, { error: { message: `request body over ${MAX_BODY} bytes`, type: "BadRequestError" } });
    let body;
    try {
      body = JSON.parse(Buffer.concat(parts).toString("utf8"));
    } catch {
      return json(res, 400, { error: { message: "request body is not JSON", type: "BadRequestError" } });
    }
    if (body === null || typeof body !== "object") return json(res, 400, { error: { message: "request body must be a JSON object", type: "BadRequestError" } });
    answer(req, res, recv, path, body).catch((e) => {
      process.stderr.write(`truth_server: ${e?.stack ?? e}\n`);
      res.destroy();
    });
  });
});
server.keepAliveTimeout = 600_000;
server.headersTimeout = 0;
server.requestTimeout = 0;
server.maxHeadersCount = 200;

function finish() {
  server.close();
  if (opt.log) {
    const lines = records.map((r) => JSON.stringify(r));
    if (dropped) lines.push(JSON.stringify({ dropped }));
    fs.writeFileSync(opt.log, lines.length ? lines.join("\n") + "\n" : "");
  }
  process.exit(0);
}
process.on("SIGTERM", finish);
process.on("SIGINT", finish);

server.listen(Number(num("port", 0, 65535)), opt.host, () => {
  const { port } = server.address();
  process.stdout.write(JSON.stringify({ url: `http://${opt.host}:${port}`, pid: process.pid }) + "\n");
});
