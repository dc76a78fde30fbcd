#!/usr/bin/env node
"use strict";
/*
 * End-to-end self-check of the Azurite harness: starts the pinned Azurite with
 * snapback-azurite-ext.js on a free 127.0.0.1 port and a temp dir, drives it
 * over HTTP with Shared Key auth (node built-ins only), prints one line per
 * check and "N passed, M failed", then stops Azurite.
 *
 *   node tests/azurite/selfcheck.js
 */

const http = require("http");
const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawn } = require("child_process");

const HERE = __dirname;
const ACCOUNT = "premium";
const KEY = Buffer.from("snapback-selfcheck-premium-key-0123456789").toString("base64");
const OTHER = "backup";
const OTHER_KEY = Buffer.from("snapback-selfcheck-backup-key-0123456789").toString("base64");
const API_VERSION = "2025-11-05";
const MiB = 1024 * 1024;

let port;
let passed = 0;
let failed = 0;

// ------------------------------------------------------------ Azurite ------

function startAzurite() {
  const location = fs.mkdtempSync(path.join(os.tmpdir(), "snapback-selfcheck-"));
  const child = spawn(process.execPath, [
    "--require", path.join(HERE, "snapback-azurite-ext.js"),
    path.join(HERE, "node_modules", "azurite", "dist", "src", "blob", "main.js"),
    "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", location,
    "--disableTelemetry", "--skipApiVersionCheck",
  ], {
    env: {
      ...process.env,
      AZURITE_ACCOUNTS: `${ACCOUNT}:${KEY};${OTHER}:${OTHER_KEY}`,
      SNAPBACK_HARNESS_PARENT_PID: String(process.pid),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => { stderr += d; });
  const ready = new Promise((resolve, reject) => {
    let stdout = "";
    const timer = setTimeout(() => reject(new Error(`Azurite did not start in 30 s\n${stderr}`)), 30000);
    child.stdout.on("data", (d) => {
      stdout += d;
      const m = /successfully listens on http:\/\/127\.0\.0\.1:(\d+)/.exec(stdout);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`Azurite exited (${code})\n${stderr}`)); });
  });
  const stop = () => {
    child.kill("SIGKILL");
    fs.rmSync(location, { recursive: true, force: true });
  };
  return { ready, stop };
}

// ---------------------------------------------------------- Shared Key ------

function sign(method, urlPath, query, headers, account, key) {
  const h = {};
  for (const [k, v] of Object.entries(headers)) h[k.toLowerCase()] = String(v);
  const len = h["content-length"] && h["content-length"] !== "0" ? h["content-length"] : "";
  const canonHeaders = Object.keys(h).filter((k) => k.startsWith("x-ms-")).sort()
    .map((k) => `${k}:${h[k].trim()}\n`).join("");
  const canonQuery = Object.keys(query).map((k) => [k.toLowerCase(), query[k]]).sort((a, b) => (a[0] < b[0] ? -1 : 1))
    .map(([k, v]) => `\n${k}:${v}`).join("");
  const stringToSign = [method, h["content-encoding"] || "", h["content-language"] || "", len,
    h["content-md5"] || "", h["content-type"] || "", "", h["if-modified-since"] || "", h["if-match"] || "",
    h["if-none-match"] || "", h["if-unmodified-since"] || "", h["range"] || ""].join("\n") + "\n" +
    canonHeaders + `/${account}${urlPath}` + canonQuery;
  const sig = crypto.createHmac("sha256", Buffer.from(key, "base64")).update(stringToSign, "utf8").digest("base64");
  return `SharedKey ${account}:${sig}`;
}

/** Signed request against /<account><p>; resolves {status, headers, body}. */
function az(method, p, { query = {}, headers = {}, body, account = ACCOUNT, key = KEY } = {}) {
  const buf = body === undefined ? Buffer.alloc(0) : Buffer.from(body);
  const urlPath = `/${account}${p}`;
  const hdrs = { "x-ms-date": new Date().toUTCString(), "x-ms-version": API_VERSION, "Content-Length": buf.length, ...headers };
  hdrs.Authorization = sign(method, urlPath, query, hdrs, account, key);
  const qs = new URLSearchParams(query).toString();
  return raw(method, urlPath + (qs ? `?${qs}` : ""), hdrs, buf);
}

function raw(method, pathAndQuery, headers = {}, body = Buffer.alloc(0)) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path: pathAndQuery, headers, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

// -------------------------------------------------------------- helpers -----

const CRC64_NVME_POLY = 0x9a6c9329ac4bc9b5n; // 0xAD93D23594C93659 reflected
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = BigInt(n);
  for (let k = 0; k < 8; k++) c = c & 1n ? (c >> 1n) ^ CRC64_NVME_POLY : c >> 1n;
  return c;
});
function crc64(buf) {
  let crc = 0xffffffffffffffffn;
  for (const b of buf) crc = CRC_TABLE[Number((crc ^ BigInt(b)) & 0xffn)] ^ (crc >> 8n);
  return crc ^ 0xffffffffffffffffn;
}
function crc64Header(buf) {
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(crc64(buf));
  return out.toString("base64");
}

const fill = (ch, n) => Buffer.alloc(n, ch);

function putPage(blob, start, data, headers = {}, account = {}) {
  return az("PUT", blob, {
    ...account,
    query: { comp: "page" },
    headers: { "x-ms-page-write": "update", "x-ms-range": `bytes=${start}-${start + data.length - 1}`, ...headers },
    body: data,
  });
}

function clearPage(blob, start, end) {
  return az("PUT", blob, { query: { comp: "page" }, headers: { "x-ms-page-write": "clear", "x-ms-range": `bytes=${start}-${end}` } });
}

/** Parses a <PageList> body into [["P"|"C", start, end]...] in document order, plus NextMarker. */
function parsePageList(xml) {
  const items = [];
  const re = /<(PageRange|ClearRange)><Start>(\d+)<\/Start><End>(\d+)<\/End><\/\1>/g;
  let m;
  while ((m = re.exec(xml))) items.push([m[1] === "PageRange" ? "P" : "C", Number(m[2]), Number(m[3])]);
  const nm = /<NextMarker>([^<]*)<\/NextMarker>|<NextMarker\s*\/>/.exec(xml);
  return { items, nextMarker: nm ? nm[1] || "" : undefined };
}

async function listPages(blob, query = {}, headers = {}) {
  const res = await az("GET", blob, { query: { comp: "pagelist", ...query }, headers });
  return { ...res, ...parsePageList(res.body) };
}

async function listAllPaged(blob, query, maxresults) {
  const all = [];
  let marker;
  let calls = 0;
  do {
    const res = await listPages(blob, { ...query, maxresults: String(maxresults), ...(marker ? { marker } : {}) });
    if (res.status !== 200) throw new Error(`page ${calls}: ${res.status} ${res.body}`);
    all.push(...res.items);
    marker = res.nextMarker;
    calls++;
  } while (marker && calls < 100);
  return { all, calls };
}

const errorCode = (res) => res.headers["x-ms-error-code"] || (/<Code>([^<]*)<\/Code>/.exec(res.body) || [])[1];
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function check(name, fn) {
  try {
    const detail = await fn();
    passed++;
    console.log(`ok   ${name}${detail ? ` (${detail})` : ""}`);
  } catch (err) {
    failed++;
    console.log(`FAIL ${name}: ${err.message}`);
  }
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

function expectStatus(res, status, code) {
  expect(res.status === status && (code === undefined || errorCode(res) === code),
    `expected ${status}${code ? ` ${code}` : ""}, got ${res.status} ${errorCode(res) || ""} ${res.body.slice(0, 300)}`);
}

// --------------------------------------------------------------- checks -----

async function run() {
  const C = "/selfcheck";
  const DISK = `${C}/disk`;
  let s1, s2;

  await check("harness version route", async () => {
    const res = await raw("GET", "/__harness/version");
    const v = JSON.parse(res.body);
    expect(res.status === 200 && v.azurite === "3.37.0" && v.extension, `got ${res.status} ${res.body}`);
    return res.body;
  });

  await check("wrong account key is rejected (403)", async () => {
    const res = await az("PUT", C, { query: { restype: "container" }, key: OTHER_KEY });
    expectStatus(res, 403);
  });

  await check("create container + 64 KiB page blob", async () => {
    expectStatus(await az("PUT", C, { query: { restype: "container" } }), 201);
    expectStatus(await az("PUT", DISK, { headers: { "x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": String(64 * 1024) } }), 201);
  });

  await check("put pages, snapshot S1, more writes + clear, snapshot S2", async () => {
    expectStatus(await putPage(DISK, 0, fill("A", 4096)), 201);
    expectStatus(await putPage(DISK, 8192, fill("B", 4096)), 201);
    const r1 = await az("PUT", DISK, { query: { comp: "snapshot" } });
    expectStatus(r1, 201);
    s1 = r1.headers["x-ms-snapshot"];
    expectStatus(await putPage(DISK, 0, fill("A", 512)), 201); // same bytes: still a change
    expectStatus(await putPage(DISK, 2048, fill("C", 1024)), 201);
    expectStatus(await putPage(DISK, 16384, fill("D", 512)), 201);
    expectStatus(await clearPage(DISK, 8192, 8703), 201);
    const r2 = await az("PUT", DISK, { query: { comp: "snapshot" } });
    expectStatus(r2, 201);
    s2 = r2.headers["x-ms-snapshot"];
    expect(s1 && s2, "no x-ms-snapshot header");
    return `S1=${s1} S2=${s2}`;
  });

  const EXPECTED_DIFF = [["P", 0, 511], ["P", 2048, 3071], ["C", 8192, 8703], ["P", 16384, 16895]];

  await check("diff S2 vs S1 = interleaved PageRange/ClearRange", async () => {
    const res = await listPages(DISK, { snapshot: s2, prevsnapshot: s1 });
    expectStatus(res, 200);
    expect(same(res.items, EXPECTED_DIFF), `got ${JSON.stringify(res.items)}; body ${res.body}`);
    expect(res.headers["x-ms-blob-content-length"] === String(64 * 1024), `x-ms-blob-content-length=${res.headers["x-ms-blob-content-length"]}`);
    expect(res.nextMarker === "", `NextMarker should be empty, got ${res.nextMarker}`);
    return JSON.stringify(res.items);
  });

  await check("diff base vs S1 equals diff S2 vs S1; S2 vs S2 is empty", async () => {
    const base = await listPages(DISK, { prevsnapshot: s1 });
    expect(same(base.items, EXPECTED_DIFF), `base vs S1: ${JSON.stringify(base.items)}`);
    const none = await listPages(DISK, { snapshot: s2, prevsnapshot: s2 });
    expect(none.status === 200 && none.items.length === 0, `S2 vs S2: ${none.status} ${JSON.stringify(none.items)}`);
  });

  await check("full page list of S1 and of the base blob", async () => {
    const r1 = await listPages(DISK, { snapshot: s1 });
    expect(same(r1.items, [["P", 0, 4095], ["P", 8192, 12287]]), `S1: ${JSON.stringify(r1.items)}`);
    const rb = await listPages(DISK);
    expect(same(rb.items, [["P", 0, 4095], ["P", 8704, 12287], ["P", 16384, 16895]]), `base: ${JSON.stringify(rb.items)}`);
  });

  await check("diff with maxresults=1 paginates; concatenation = unpaginated", async () => {
    const { all, calls } = await listAllPaged(DISK, { snapshot: s2, prevsnapshot: s1 }, 1);
    expect(calls === EXPECTED_DIFF.length && same(all, EXPECTED_DIFF), `${calls} calls: ${JSON.stringify(all)}`);
    return `${calls} pages`;
  });

  await check("full list with maxresults=2 paginates; concatenation = unpaginated", async () => {
    const full = (await listPages(DISK)).items;
    const { all, calls } = await listAllPaged(DISK, {}, 2);
    expect(calls === 2 && same(all, full), `${calls} calls: ${JSON.stringify(all)}`);
  });

  await check("x-ms-range restricts (and clips) the diff", async () => {
    const res = await listPages(DISK, { snapshot: s2, prevsnapshot: s1 }, { "x-ms-range": "bytes=2560-8703" });
    expect(same(res.items, [["P", 2560, 3071], ["C", 8192, 8703]]), `got ${JSON.stringify(res.items)}`);
    const paged = await listAllPaged(DISK, { snapshot: s2, prevsnapshot: s1 }, 1); // sanity: unaffected
    expect(paged.all.length === 4, "range leaked into later requests");
  });

  const BIG = `${C}/big`;
  await check("Put Page of 4 MiB + 512 rejected with 413 RequestBodyTooLarge; 4 MiB accepted", async () => {
    expectStatus(await az("PUT", BIG, { headers: { "x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": String(8 * MiB) } }), 201);
    expectStatus(await putPage(BIG, 0, fill("x", 4 * MiB + 512)), 413, "RequestBodyTooLarge");
    expectStatus(await putPage(BIG, 0, fill("y", 4 * MiB)), 201);
  });

  await check("misaligned Put Page range rejected with 416 InvalidPageRange", async () => {
    const res = await az("PUT", BIG, {
      query: { comp: "page" }, headers: { "x-ms-page-write": "update", "x-ms-range": "bytes=100-611" }, body: fill("z", 512),
    });
    expectStatus(res, 416, "InvalidPageRange");
  });

  await check("wrong Content-MD5 rejected with 400 Md5Mismatch", async () => {
    const wrong = crypto.createHash("md5").update("something else").digest("base64");
    expectStatus(await putPage(DISK, 0, fill("m", 512), { "Content-MD5": wrong }), 400, "Md5Mismatch");
  });

  await check("correct Content-MD5 accepted", async () => {
    const data = fill("m", 512);
    const md5 = crypto.createHash("md5").update(data).digest("base64");
    expectStatus(await putPage(`${C}/big`, 512 * 1024 * 8, data, { "Content-MD5": md5 }), 201);
  });

  await check("CRC-64/NVME check value of \"123456789\" (self-test of this script)", async () => {
    expect(crc64(Buffer.from("123456789")) === 0xae8b14860a799888n, "bad CRC64 implementation");
  });

  await check("correct x-ms-content-crc64 accepted and echoed", async () => {
    const data = Buffer.from(crypto.randomBytes(1024));
    const crc = crc64Header(data);
    const res = await putPage(BIG, 4 * MiB, data, { "x-ms-content-crc64": crc });
    expectStatus(res, 201);
    expect(res.headers["x-ms-content-crc64"] === crc, `echo ${res.headers["x-ms-content-crc64"]} != ${crc}`);
  });

  await check("wrong x-ms-content-crc64 rejected with 400 Crc64Mismatch", async () => {
    const data = fill("q", 512);
    expectStatus(await putPage(BIG, 0, data, { "x-ms-content-crc64": crc64Header(fill("r", 512)) }), 400, "Crc64Mismatch");
  });

  await check("Copy Blob reports pending, then success after 2 polls", async () => {
    const copy = await az("PUT", `${C}/copy`, { headers: { "x-ms-copy-source": `http://127.0.0.1:${port}/${ACCOUNT}${DISK}` } });
    expectStatus(copy, 202);
    expect(copy.headers["x-ms-copy-status"] === "pending", `copy response status ${copy.headers["x-ms-copy-status"]}`);
    const p1 = await az("HEAD", `${C}/copy`);
    const p2 = await az("GET", `${C}/copy`);
    const p3 = await az("HEAD", `${C}/copy`);
    const seen = [p1, p2, p3].map((r) => `${r.headers["x-ms-copy-status"]}(${r.headers["x-ms-copy-progress"]})`);
    expect(p1.headers["x-ms-copy-status"] === "pending" && p2.headers["x-ms-copy-status"] === "pending" &&
      p3.headers["x-ms-copy-status"] === "success", `polls: ${seen.join(", ")}`);
    expect(/^\d+\/65536$/.test(p1.headers["x-ms-copy-progress"] || ""), `progress ${p1.headers["x-ms-copy-progress"]}`);
    return seen.join(" -> ");
  });

  await check("a write to a Copy Blob destination (other account) leaves the source snapshot's pages, bytes and diffs alone", async () => {
    const SRC = "/selfcheck-copysrc";
    expectStatus(await az("PUT", SRC, { query: { restype: "container" }, headers: { "x-ms-blob-public-access": "blob" } }), 201);
    expectStatus(await az("PUT", `${SRC}/disk`, { headers: { "x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": String(64 * 1024) } }), 201);
    expectStatus(await putPage(`${SRC}/disk`, 0, fill("s", 4096)), 201);
    const snap = await az("PUT", `${SRC}/disk`, { query: { comp: "snapshot" } });
    expectStatus(snap, 201);
    const s = snap.headers["x-ms-snapshot"];
    const DST = "/selfcheck-copydst";
    const other = { account: OTHER, key: OTHER_KEY };
    expectStatus(await az("PUT", DST, { ...other, query: { restype: "container" } }), 201);
    const source = `http://127.0.0.1:${port}/${ACCOUNT}${SRC}/disk?snapshot=${encodeURIComponent(s)}`;
    expectStatus(await az("PUT", `${DST}/copy`, { ...other, headers: { "x-ms-copy-source": source } }), 202);
    // The snapshot's diff against itself via the base: the base is unchanged since it.
    const before = await listPages(`${SRC}/disk`, { prevsnapshot: s });
    expect(before.status === 200 && before.items.length === 0, `base vs S before: ${JSON.stringify(before.items)}`);
    expectStatus(await putPage(`${DST}/copy`, 8192, fill("f", 512), {}, other), 201);
    const dst = parsePageList((await az("GET", `${DST}/copy`, { ...other, query: { comp: "pagelist" } })).body);
    expect(same(dst.items, [["P", 0, 4095], ["P", 8192, 8703]]), `copy pages ${JSON.stringify(dst.items)}`);
    const listed = await listPages(`${SRC}/disk`, { snapshot: s });
    expect(same(listed.items, [["P", 0, 4095]]), `source snapshot pages ${JSON.stringify(listed.items)}`);
    const got = await az("GET", `${SRC}/disk`, { query: { snapshot: s }, headers: { "x-ms-range": "bytes=8192-8703" } });
    expect(got.body === fill("\0", 512).toString(), "the source snapshot reads the copy's bytes");
    const after = await listPages(`${SRC}/disk`, { prevsnapshot: s });
    expect(after.status === 200 && after.items.length === 0, `base vs S after the copy's write: ${JSON.stringify(after.items)}`);
  });

  await check("Put Page From URL copies x-ms-source-range server-side (public source)", async () => {
    const PUB = "/selfcheck-pub";
    expectStatus(await az("PUT", PUB, { query: { restype: "container" }, headers: { "x-ms-blob-public-access": "blob" } }), 201);
    expectStatus(await az("PUT", `${PUB}/src`, { headers: { "x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": String(64 * 1024) } }), 201);
    const data = Buffer.concat([fill("x", 512), fill("y", 1024)]);
    expectStatus(await putPage(`${PUB}/src`, 4096, data), 201);
    const DEST = "/selfcheck-dst";
    expectStatus(await az("PUT", DEST, { query: { restype: "container" }, account: OTHER, key: OTHER_KEY }), 201);
    expectStatus(await az("PUT", `${DEST}/d`, { account: OTHER, key: OTHER_KEY, headers: { "x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": String(64 * 1024) } }), 201);
    const fromUrl = (range, sourceRange, source = `http://127.0.0.1:${port}/${ACCOUNT}${PUB}/src`) =>
      az("PUT", `${DEST}/d`, { account: OTHER, key: OTHER_KEY, query: { comp: "page" }, headers: {
        "x-ms-page-write": "update", "x-ms-range": range, "x-ms-source-range": sourceRange, "x-ms-copy-source": source } });
    // Source bytes 4096..5631 land at 8192..9727 of the other account's blob.
    expectStatus(await fromUrl("bytes=8192-9727", "bytes=4096-5631"), 201);
    const got = await az("GET", `${DEST}/d`, { account: OTHER, key: OTHER_KEY, headers: { "x-ms-range": "bytes=7680-10239" } });
    expectStatus(got, 206);
    const want = Buffer.concat([Buffer.alloc(512), data, Buffer.alloc(512)]).toString();
    expect(got.body === want, "copied bytes differ");
    const list = parsePageList((await az("GET", `${DEST}/d`, { account: OTHER, key: OTHER_KEY, query: { comp: "pagelist" } })).body);
    expect(same(list.items, [["P", 8192, 9727]]), `dest pages ${JSON.stringify(list.items)}`);
    expectStatus(await fromUrl("bytes=0-4194815", "bytes=0-4194815"), 413, "RequestBodyTooLarge");
    expectStatus(await fromUrl("bytes=0-511", "bytes=0-1023"), 416, "InvalidPageRange");
    expectStatus(await fromUrl("bytes=0-511", "bytes=1-512"), 416, "InvalidPageRange");
    // A private source without a SAS is not readable by the destination.
    const res = await fromUrl("bytes=0-511", "bytes=0-511", `http://127.0.0.1:${port}/${ACCOUNT}${DISK}`);
    expect(res.status >= 400 && errorCode(res) === "CannotVerifyCopySource", `private source: ${res.status} ${errorCode(res)}`);
    return `private source: ${res.status} ${errorCode(res)}`;
  });

  await check("fault injection: 2 x 503 ServerBusy, then normal", async () => {
    const arm = await raw("POST", `/__harness/faults?status=503&count=2&match=${encodeURIComponent("/selfcheck/disk")}`);
    expect(arm.status === 200, `arm: ${arm.status} ${arm.body}`);
    const r1 = await az("HEAD", DISK);
    const r2 = await az("GET", DISK, { query: { comp: "pagelist" } });
    const r3 = await az("HEAD", DISK);
    expect(r1.status === 503 && r2.status === 503 && r3.status === 200, `statuses ${r1.status} ${r2.status} ${r3.status}`);
    expect(errorCode(r2) === "ServerBusy" && /<Code>ServerBusy<\/Code>/.test(r2.body), `body ${r2.body}`);
  });

  await check("fault injection: status=reset drops the connection", async () => {
    await raw("POST", `/__harness/faults?status=reset&count=1&match=${encodeURIComponent("/selfcheck/disk")}`);
    let err;
    try { await az("HEAD", DISK); } catch (e) { err = e; }
    expect(err, "request did not fail");
    expectStatus(await az("HEAD", DISK), 200);
    return err.code || err.message;
  });

  await check("DELETE /__harness/faults clears armed faults", async () => {
    await raw("POST", `/__harness/faults?status=500&count=5&match=${encodeURIComponent("/selfcheck/disk")}`);
    const cleared = await raw("DELETE", "/__harness/faults");
    expect(cleared.status === 200, `clear: ${cleared.status}`);
    expectStatus(await az("HEAD", DISK), 200);
  });

  await check("diff against a deleted snapshot: 409 PreviousSnapshotNotFound", async () => {
    expectStatus(await az("DELETE", DISK, { query: { snapshot: s1 } }), 202);
    const res = await listPages(DISK, { snapshot: s2, prevsnapshot: s1 });
    expectStatus(res, 409, "PreviousSnapshotNotFound");
  });
}

async function main() {
  const started = Date.now();
  const azurite = startAzurite();
  try {
    port = await azurite.ready;
    console.log(`Azurite with snapback-azurite-ext on 127.0.0.1:${port}`);
    await run();
  } catch (err) {
    failed++;
    console.log(`FAIL harness: ${err.message}`);
  } finally {
    azurite.stop();
  }
  console.log(`(${((Date.now() - started) / 1000).toFixed(1)} s)`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main();
