/**
 * sse-batcher.js: the browser client for sse_batcher's `GET /events` stream.
 *
 * Plain ES module, no build step, no dependencies. It keeps a frontend's
 * single-event contract when the server starts batching: a handler written for
 * `JOB_STARTED` keeps receiving one call per job, whether the job arrived alone or
 * inside a `JOBS_BATCH_STARTED` batch event.
 *
 *     import { subscribe } from "/static/sse-batcher.js";
 *
 *     const sub = subscribe("/events", {
 *       types: ["JOB_STARTED", "JOB_COMPLETED"],   // optional server-side filter
 *       onStatus: (status) => console.log(status), // connecting | open | reconnecting | closed
 *       onReset: (info) => refetchEverything(),    // the server could not resume the cursor
 *     });
 *     sub.on("JOB_STARTED", (job, meta) => addRow(job.job_id));       // once per member
 *     sub.onBatch("JOB_COMPLETED", (jobs, meta) => renderAll(jobs));  // once per message
 *     // later: sub.close();
 *
 * API
 *
 * `subscribe(url, options) -> Subscription` connects at once and keeps the stream
 * alive until `close()`. `url` may be relative to the page. Options (all optional):
 *   - `types`: string[]; only these event types (the server adds their default
 *     batch types; list a rule's custom `batch_type` yourself).
 *   - `sources`: string[]; only events from these workers.
 *   - `channels`: string[]; channel patterns (`"user.42"`, `"user.42.*"`, `"*"`).
 *     Without it the server sends every channel the token allows; a pattern the
 *     token does not allow ends the subscription (status "closed", 403).
 *   - `token`: a string, or a function returning one (or a promise of one),
 *     called before every connection: sent as `Authorization: Bearer`. With a
 *     function, a 401 (e.g. an expired JWT) reconnects with a fresh token and
 *     resumes by id; with a string it closes the subscription.
 *   - `lastEventId`: string; resume after this id instead of starting live.
 *   - `onStatus(status, detail)`: "connecting" (first attempt), "open",
 *     "reconnecting" (detail: {attempt, delay, error}), "closed" (detail: {error}
 *     when the server refused the stream for good: 204, 400, 401, 403, 404, ...).
 *   - `onReset(info)`: the server could not serve the cursor (journal trimmed, or
 *     another database); `info` is the reset event's data, e.g. `{reason,
 *     last_event_id, oldest_id, continue}`. Refetch state.
 *   - `minDelay` (ms; default: the server's `retry:`, else 1000), `maxDelay` (ms,
 *     default 30000): reconnect backoff bounds; exponential with jitter.
 *   - `stallTimeout` (ms, default 45000; 0 disables): reconnect when nothing, not
 *     even a heartbeat comment, arrived for this long (a silently dead connection).
 *   - `fetch`: a fetch implementation (default `globalThis.fetch`).
 *
 * Subscription:
 *   - `on(type, fn)`: `fn(data, meta)` once per member of type `type`, in order.
 *     `meta` = `{id, type, source, ts, uid, batch}` (`ts`, `uid`: the member's own);
 *     `batch` is null for a single event,
 *     else `{type, count, index, first_ts, last_ts}`. Returns an unsubscribe function.
 *   - `onBatch(type, fn)`: `fn(items, meta)` once per message carrying members of
 *     `type` (a single event is a batch of one). `meta` = `{id, type, eventType,
 *     source, ts, count, batched, data, members}` (`members`: each member's `{ts, uid,
 *     data}`). Returns an unsubscribe function.
 *   - `onAny(fn)`: `fn(envelope, info)` for every message as it arrived, batches
 *     not split; `info` = `{batched, memberType, count}`. Returns an unsubscribe function.
 *   - `close()`: stop for good. `lastEventId`: the cursor (last durable id seen;
 *     a reset leaves it until the next durable id). `status`: the last status reported.
 *
 * Also exported: `batchTypeFor(type)` (the server's default batch name) and
 * `unpack(envelope)` -> `{batched, memberType, items, members}`, for envelopes read from
 * `GET /events/history`.
 *
 * Guarantees: handlers run in stream order; a message whose id was already
 * delivered is not delivered again (ids are remembered for the last 4096
 * messages), so the overlap around a reconnect never reaches handlers. An
 * exception in a handler is reported (`reportError`) and does not stop the others.
 *
 * Why fetch and not EventSource: EventSource only dispatches a named event (our
 * `event:` is the type) to listeners registered for that exact name, so batch
 * types chosen by server rules and `onAny` could never be received; and its own
 * retry loop (which gives up for good on some errors) would fight ours. This
 * parser follows the WHATWG event-stream rules:
 * https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
 */

const SEEN_LIMIT = 4096;
const STABLE_AFTER_MS = 5000;
// Answers that will not get better by retrying; everything else (5xx, 408, 425,
// 429, network errors, a stream that ended) is retried with backoff.
const FATAL_STATUS = new Set([204, 400, 401, 403, 404, 405, 410, 422]);

/**
 * The conventional batch type for a member type, mirroring the server's
 * `batch_type_for`: the first word in the plural, then `BATCH`: `JOB_STARTED` ->
 * `JOBS_BATCH_STARTED`, `BOX_MOVED` -> `BOXES_BATCH_MOVED`, `ENTRY_ADDED` ->
 * `ENTRIES_BATCH_ADDED`, `job_started` -> `jobs_batch_started`. Where a plural would
 * read back two ways, the type plus `_BATCH`: `PING` -> `PING_BATCH`, `JOBS_DONE` ->
 * `JOBS_DONE_BATCH`, `STATUS_CHANGED` -> `STATUS_CHANGED_BATCH`, `CACHE_CLEARED` ->
 * `CACHE_CLEARED_BATCH`.
 * @param {string} type
 * @returns {string}
 */
export function batchTypeFor(type) {
  const cut = type.indexOf("_");
  const batch = type !== type.toUpperCase() && type === type.toLowerCase() ? "batch" : "BATCH";
  if (cut > 0 && cut < type.length - 1) {
    const head = type.slice(0, cut);
    const upper = head.toUpperCase();
    if (!upper.endsWith("S") || upper.endsWith("SS")) {
      const plural = pluralOf(head);
      if (singularOf(plural) === head) return `${plural}_${batch}${type.slice(cut)}`;
    }
  }
  return `${type}_${batch}`;
}

const VOWELS = "AEIOUaeiou";

function lowerCase(word) {
  for (let i = word.length - 1; i >= 0; i--) {
    const c = word[i];
    if (c !== c.toUpperCase()) return true;
    if (c !== c.toLowerCase()) return false;
  }
  return false;
}

function pluralOf(word) {
  const suffix = (s) => (lowerCase(word) ? s.toLowerCase() : s);
  const upper = word.toUpperCase();
  if (word.length > 1 && upper.endsWith("Y") && !VOWELS.includes(word[word.length - 2])) {
    return word.slice(0, -1) + suffix("IES");
  }
  if (["X", "Z", "CH", "SH", "SS"].some((end) => upper.endsWith(end))) return word + suffix("ES");
  return word + suffix("S");
}

function singularOf(word) {
  const upper = word.toUpperCase();
  if (upper.endsWith("IES") && word.length > 3 && !VOWELS.includes(word[word.length - 4])) {
    return word.slice(0, -3) + (lowerCase(word) ? "y" : "Y");
  }
  if (["XES", "CHES", "SHES", "SSES", "ZZES"].some((end) => upper.endsWith(end))) {
    return word.slice(0, -2);
  }
  return word.slice(0, -1);
}

/**
 * What a message carries: its members and their type.
 *
 * A batch event is recognised by its data (`items` array plus `member_type`, or
 * plus `batch_count` under a `..._BATCH...` type). Its member type is
 * `data.member_type` when the server sent it, else one of `knownTypes` whose
 * conventional batch type matches, else the naming convention read backwards.
 * @param {{type: string, data: any}} envelope
 * @param {Iterable<string>} [knownTypes]
 * `items` are the members' data; `members` are `{ts, uid, data}`, each member's own
 * timestamp and uid (a batch's items carry them; a single event's are the envelope's).
 * @returns {{batched: boolean, memberType: string, items: any[], members: {ts: number, uid: (string|null), data: any}[]}}
 */
export function unpack(envelope, knownTypes = []) {
  const found = unpackType(envelope, knownTypes);
  if (!found.batched) {
    const single = { ts: envelope.ts, uid: null, data: envelope.data };
    return { ...found, items: [envelope.data], members: [single] };
  }
  const members = envelope.data.items.map((item) =>
    isMember(item) ? item : { ts: envelope.ts, uid: null, data: item },
  );
  return { ...found, items: members.map((m) => m.data), members };
}

// An item as the server writes it: {ts, uid, data}. Batches stored by older versions
// held the members' data alone.
function isMember(item) {
  if (item === null || typeof item !== "object" || Array.isArray(item)) return false;
  const keys = Object.keys(item);
  return keys.length === 3 && "ts" in item && "uid" in item && "data" in item;
}

function unpackType(envelope, knownTypes) {
  const { type, data } = envelope;
  const isBatch =
    data !== null &&
    typeof data === "object" &&
    Array.isArray(data.items) &&
    (typeof data.member_type === "string" ||
      (typeof data.batch_count === "number" && /(^|_)BATCH(_|$)/i.test(type)));
  if (!isBatch) return { batched: false, memberType: type };
  if (typeof data.member_type === "string") {
    return { batched: true, memberType: data.member_type };
  }
  for (const known of knownTypes) {
    if (batchTypeFor(known) === type) return { batched: true, memberType: known };
  }
  return { batched: true, memberType: memberTypeFromName(type) };
}

function memberTypeFromName(type) {
  // batchTypeFor read backwards: PLURALS_BATCH_REST -> SINGULAR_REST, TYPE_BATCH -> TYPE.
  const words = type.split("_");
  if (words.length >= 3 && words[1].toUpperCase() === "BATCH") {
    return [singularOf(words[0]), ...words.slice(2)].join("_");
  }
  if (words.length >= 2 && words[words.length - 1].toUpperCase() === "BATCH") {
    return words.slice(0, -1).join("_");
  }
  return type;
}

/**
 * Open the stream and keep it open (see the module header for the API).
 * @param {string} url
 * @param {object} [options]
 */
export function subscribe(url, options = {}) {
  const opts = {
    maxDelay: 30000,
    stallTimeout: 45000,
    ...options,
  };
  const doFetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
  const memberHandlers = new Map(); // type -> Set(fn)
  const batchHandlers = new Map(); // type -> Set(fn)
  const anyHandlers = new Set();
  const seen = new Set();
  const seenOrder = [];

  let lastEventId = opts.lastEventId ?? null;
  let status = null;
  let closed = false;
  let serverRetry = null;
  let controller = null;
  let wake = null; // resolves the current backoff sleep early
  const onOnline = () => wake?.();

  function report(next, detail = {}) {
    status = next;
    if (opts.onStatus) guard(() => opts.onStatus(next, detail));
  }

  function streamUrl() {
    const target = new URL(url, globalThis.location?.href);
    if (opts.types?.length) target.searchParams.set("types", opts.types.join(","));
    if (opts.sources?.length) target.searchParams.set("sources", opts.sources.join(","));
    target.searchParams.delete("channel");
    for (const pattern of opts.channels ?? []) target.searchParams.append("channel", pattern);
    // A query parameter, not the Last-Event-ID header: a custom header would make
    // every cross-origin reconnect pay for a CORS preflight.
    if (lastEventId !== null) target.searchParams.set("last_event_id", lastEventId);
    else target.searchParams.delete("last_event_id");
    return target.href;
  }

  function remember(id) {
    seen.add(id);
    seenOrder.push(id);
    if (seenOrder.length > SEEN_LIMIT) seen.delete(seenOrder.shift());
  }

  function dispatch(eventType, raw, sseId) {
    if (closed) return; // close() from a handler: nothing more, not even the rest of a chunk
    let envelope;
    try {
      envelope = JSON.parse(raw);
    } catch (error) {
      guard(() => {
        throw new Error(`sse-batcher: unparseable ${eventType} message: ${error.message}`);
      });
      return;
    }
    if (eventType === "reset") {
      // The reset's fields may come bare or inside an envelope's `data`.
      const info =
        envelope?.type === "reset" && envelope.data && typeof envelope.data === "object"
          ? envelope.data
          : (envelope ?? {});
      // Ids after a reset may come from another journal: forget the ones seen. The
      // cursor moves only if the server names where the stream continues; otherwise
      // the old one stays until the next durable id, so a reconnect before that gets
      // another reset (reported) rather than a silent gap.
      seen.clear();
      seenOrder.length = 0;
      if (typeof info.continue_from === "string") lastEventId = info.continue_from;
      if (opts.onReset) guard(() => opts.onReset(info));
      return;
    }
    if (envelope === null || typeof envelope !== "object" || !("data" in envelope)) return;
    const id = sseId ?? (typeof envelope.id === "string" ? envelope.id : null);
    if (id !== null) {
      if (seen.has(id)) return;
      remember(id);
      lastEventId = id;
    }
    if (typeof envelope.type !== "string") envelope.type = eventType;
    deliver(envelope, id);
  }

  function deliver(envelope, id) {
    const { batched, memberType, items, members } = unpack(envelope, [
      ...memberHandlers.keys(),
      ...batchHandlers.keys(),
    ]);
    const { source, ts, data } = envelope;
    // `closed` is checked before every call: a handler may close the subscription.
    for (const fn of [...anyHandlers]) {
      if (closed) return;
      guard(() => fn(envelope, { batched, memberType, count: items.length }));
    }
    const forBatch = batchHandlers.get(memberType);
    if (forBatch?.size) {
      const meta = {
        id,
        type: memberType,
        eventType: envelope.type,
        source,
        ts,
        count: items.length,
        batched,
        data,
        members,
      };
      for (const fn of [...forBatch]) if (!closed) guard(() => fn(items, meta));
    }
    const forMember = memberHandlers.get(memberType);
    if (forMember?.size) {
      items.forEach((item, index) => {
        const batch = batched
          ? {
              type: envelope.type,
              count: items.length,
              index,
              first_ts: data.first_ts,
              last_ts: data.last_ts,
            }
          : null;
        const { ts: memberTs, uid } = members[index];
        const meta = { id, type: memberType, source, ts: memberTs, uid, batch };
        for (const fn of [...forMember]) if (!closed) guard(() => fn(item, meta));
      });
    }
  }

  async function readStream(body, onActivity) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    let eventType = "";
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onActivity();
      buffer += value;
      // A CR at the end of a chunk may be half of a CRLF: keep it for the next one.
      const keepCR = buffer.endsWith("\r");
      const lines = (keepCR ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
      buffer = lines.pop() + (keepCR ? "\r" : "");
      for (const line of lines) {
        if (line === "") {
          if (data.length) dispatch(eventType || "message", data.join("\n"), id);
          data = [];
          eventType = "";
          id = null;
          continue;
        }
        if (line.startsWith(":")) continue; // comment: a heartbeat
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "data") data.push(fieldValue);
        else if (field === "event") eventType = fieldValue;
        else if (field === "id" && !fieldValue.includes("\0")) id = fieldValue || null;
        else if (field === "retry" && /^\d+$/.test(fieldValue)) serverRetry = Number(fieldValue);
      }
    }
  }

  function sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wake = null;
        resolve();
      }
      wake = done;
    });
  }

  async function connectOnce() {
    controller = new AbortController();
    const mine = controller;
    let stallTimer = null;
    const onActivity = () => {
      if (!opts.stallTimeout) return;
      clearTimeout(stallTimer);
      stallTimer = setTimeout(() => mine.abort(new Error("stream stalled")), opts.stallTimeout);
    };
    const outcome = { opened: false, openedAt: 0, retryAfter: 0, fatal: null, error: null };
    try {
      onActivity();
      // The token goes in a header (never in the URL, where logs and Referer would
      // keep it), fetched afresh for every connection so a short-lived JWT renews.
      const token = typeof opts.token === "function" ? await opts.token() : opts.token;
      const headers = { Accept: "text/event-stream" };
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await doFetch(streamUrl(), {
        headers,
        cache: "no-store",
        credentials: opts.credentials ?? "same-origin",
        signal: mine.signal,
      });
      const renewable = response.status === 401 && typeof opts.token === "function";
      if (FATAL_STATUS.has(response.status) && !renewable) {
        outcome.fatal = new Error(`GET /events answered ${response.status}`);
        outcome.fatal.status = response.status;
        await response.body?.cancel();
        return outcome;
      }
      const contentType = response.headers.get("content-type") ?? "";
      if (!response.ok || !contentType.startsWith("text/event-stream") || !response.body) {
        outcome.retryAfter = 1000 * (Number(response.headers.get("retry-after")) || 0);
        await response.body?.cancel();
        throw new Error(`GET /events answered ${response.status} ${contentType}`);
      }
      outcome.opened = true;
      outcome.openedAt = Date.now();
      report("open");
      await readStream(response.body, onActivity);
    } catch (error) {
      outcome.error = mine.signal.aborted && mine.signal.reason ? mine.signal.reason : error;
    } finally {
      clearTimeout(stallTimer);
    }
    return outcome;
  }

  async function run() {
    let attempt = 0;
    report("connecting");
    while (!closed) {
      const outcome = await connectOnce();
      if (closed) break;
      if (outcome.fatal) {
        closed = true;
        report("closed", { error: outcome.fatal });
        break;
      }
      if (outcome.opened && Date.now() - outcome.openedAt >= STABLE_AFTER_MS) attempt = 0;
      attempt += 1;
      const base = opts.minDelay ?? serverRetry ?? 1000;
      const ceiling = Math.min(opts.maxDelay, base * 2 ** Math.min(attempt - 1, 16));
      // "Equal jitter": at least half the step, so a crowd of clients spreads out
      // after a server restart without anyone retrying in a tight loop.
      const delay = Math.max(outcome.retryAfter, ceiling / 2 + Math.random() * (ceiling / 2));
      report("reconnecting", { attempt, delay, error: outcome.error });
      await sleep(delay);
    }
  }

  globalThis.addEventListener?.("online", onOnline);
  run().catch((error) => guard(() => {
    throw error;
  }));

  function add(map, type, fn) {
    if (!map.has(type)) map.set(type, new Set());
    map.get(type).add(fn);
    return () => map.get(type)?.delete(fn);
  }

  return {
    on: (type, fn) => add(memberHandlers, type, fn),
    onBatch: (type, fn) => add(batchHandlers, type, fn),
    onAny(fn) {
      anyHandlers.add(fn);
      return () => anyHandlers.delete(fn);
    },
    close() {
      if (closed && status === "closed") return;
      closed = true;
      globalThis.removeEventListener?.("online", onOnline);
      controller?.abort(new Error("closed"));
      wake?.();
      report("closed", {});
    },
    get lastEventId() {
      return lastEventId;
    },
    get status() {
      return status;
    },
  };
}

function guard(fn) {
  try {
    fn();
  } catch (error) {
    if (typeof globalThis.reportError === "function") globalThis.reportError(error);
    else console.error(error);
  }
}
