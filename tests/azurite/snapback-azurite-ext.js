"use strict";
/*
 * snapback-azurite-ext.js — make Azurite 3.37.0 behave like real Azure where
 * snapback depends on it.
 *
 * Load it as a preload, before Azurite's blob entry point:
 *
 *   node --require tests/azurite/snapback-azurite-ext.js \
 *        tests/azurite/node_modules/azurite/dist/src/blob/main.js --blobHost 127.0.0.1 ...
 *
 * It patches Azurite's classes in memory (prototypes and module exports, which
 * main.js later loads from the same require cache). No file of Azurite is
 * changed. Why each patch exists:
 *
 *  a. Get Page Ranges diff (prevsnapshot=). Stock Azurite routes every
 *     comp=pagelist request to getPageRanges and ignores prevsnapshot: it
 *     answers the FULL page list and never a ClearRange, so a backup that never
 *     clears pages passes. We compute the real diff from the range tables
 *     Azurite keeps per blob and snapshot (`pageRangesInOrder`, each entry
 *     pointing at a chunk of an extent): a page is unchanged iff both sides
 *     point at the same byte of the same extent. A missing previous snapshot
 *     answers 409 PreviousSnapshotNotFound like Azure. A blob recreated since
 *     the previous snapshot (Put Blob or Copy Blob over it: Azurite gives the
 *     blob a new creation time, which its snapshots keep) cannot be diffed:
 *     409 PreviousSnapshotOperationNotSupported ("Differential Get Page Ranges
 *     is not supported on the previous snapshot", Azure's Blob service error
 *     codes), where stock Azurite would answer a diff across the overwrite.
 *  b. Pagination and sub-ranges. Azure (x-ms-version >= 2020-10-02) honours
 *     maxresults / marker and returns <NextMarker>; Azurite ignores both. The
 *     x-ms-range / Range header restricts (clips) the listing. PageRange and
 *     ClearRange are written interleaved in offset order, as Azure does (the
 *     generated serializer would emit two separate lists).
 *  c. Put Page limits. Azure rejects a Put Page body over 4 MiB
 *     (413 RequestBodyTooLarge) and misaligned ranges (416 InvalidPageRange);
 *     Azurite accepts big bodies and answers misalignment with the wrong error
 *     code ("Requested Range Not Satisfiable").
 *  d. Transactional checksums. Azurite 3.37.0 itself validates Content-MD5
 *     (400 Md5Mismatch) and x-ms-content-crc64 (400 Crc64Mismatch) on Put Page
 *     and echoes x-ms-content-crc64; we only verify at load time that this code
 *     is present and that its CRC-64 is CRC-64/NVME (check value of
 *     "123456789"), so a different checksum implementation cannot slip in.
 *  e. Asynchronous Copy Blob. Azurite copies synchronously; Azure's copy is
 *     asynchronous. The Copy Blob response says "pending", and the first N
 *     Get Blob Properties / Get Blob on the destination (N from
 *     SNAPBACK_AZURITE_COPY_POLLS, default 2) report pending plus a progress.
 *  f. Fault injection (retry tests) and a version route, on Azurite's port:
 *       POST   /__harness/faults?status=503&count=2&match=<url substring>
 *              [&code=<ErrorCode>][&method=PUT]   (status=reset drops the TCP
 *              connection instead of answering)
 *       GET    /__harness/faults     -> JSON list of armed faults
 *       DELETE /__harness/faults     -> clear all
 *       GET    /__harness/version    -> {"azurite":"3.37.0","extension":"..."}
 *       POST   /__harness/requests?record=1   -> from now on, log every request:
 *              method, path (no query: a SAS stays out of the log), `comp`, the
 *              User-Agent, and when it came and when its answer was sent (ms since
 *              the epoch, as the ARM emulator's operation log); at most 100,000
 *       GET    /__harness/requests   -> {"requests":[...]} (what a client did while a
 *              long-running operation ran: tests/managed.rs, the request budget)
 *  i. Put Page From URL. Azurite answers 501 NotImplemented; Azure copies the
 *     source range server-side. We read x-ms-source-range of the source URL
 *     (x-ms-copy-source, a SAS or x-ms-copy-source-authorization Bearer) with a
 *     GET to this same Azurite, so its own authorisation decides what the
 *     source grants, then store the bytes exactly as a Put Page of the
 *     destination range would (same limits: at most 4 MiB, page aligned,
 *     source and destination lengths equal). A refused source read answers
 *     like Azure: CannotVerifyCopySource with the source's status.
 *  j. x-ms-previous-snapshot-url (managed disks). The diff base of a managed
 *     disk snapshot is given as the SAS URL of the older snapshot in this
 *     header. Accepted only on the accounts in SNAPBACK_AZURITE_MD_ACCOUNTS
 *     (default "md"; 400 UnsupportedHeaderForNonManagedDisksAccount elsewhere,
 *     as on Azure); the URL's SAS is checked by reading it from this Azurite;
 *     then the answer is exactly the prevsnapshot diff of (a). The URL may also
 *     name another blob of the same account with no `snapshot=` (Azure exports
 *     each snapshot as its own blob, `sr=b`): both blobs must carry the same
 *     `x-ms-meta-snapbackexportof` (the ARM emulator's exports of snapshots of
 *     one disk, copies sharing that disk's extents); the diff compares them.
 *  k. Copy Blob destinations own their page ranges. Azurite's Copy Blob (async
 *     and synchronous) gives the destination the source's range table ARRAY
 *     itself, not a copy, and Put Page / Clear Pages / resize edit that array
 *     in place: every later write to the copy also changes the source (a
 *     snapshot too, in another account too) — its page list, its bytes and
 *     every diff against it. A seed copies S(1) to the backup, so each page
 *     applied to the backup (or written there by anyone) appeared in S(1),
 *     and a diff S(2) vs S(1) answered a ClearRange where only the backup had
 *     been written. We give the destination its own array, as Azurite's
 *     Snapshot Blob already does (the ranges themselves are never edited in
 *     place, only replaced, so a shallow copy suffices).
 *  g. Version pin + self-check. If Azurite is not exactly 3.37.0, or an
 *     internal we patch is missing, print why and exit 1 before serving.
 *  h. Stops by itself when SNAPBACK_HARNESS_PARENT_PID is gone (polled every
 *     500 ms), so an Azurite started by a SIGKILLed test does not linger.
 */

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");

const EXTENSION_VERSION = "1.6.0";
const PINNED_AZURITE_VERSION = "3.37.0";
const MAX_PUT_PAGE_BYTES = 4 * 1024 * 1024;
const PAGE = 512;
const MARKER_PREFIX = "snapback-pr:";
const TAG = "snapback-azurite-ext";

function fatal(message) {
  process.stderr.write(`${TAG}: FATAL: ${message}\n`);
  process.exit(1);
}

// ---------------------------------------------------------------- (g) pin --

/** Azurite's package root, found from the script node was asked to run. */
function findAzuriteRoot() {
  const script = process.argv[1];
  if (!script) fatal("no main script: run node --require <ext> <azurite>/dist/src/blob/main.js");
  let dir = path.dirname(fs.realpathSync(script));
  for (;;) {
    const pkgFile = path.join(dir, "package.json");
    if (fs.existsSync(pkgFile)) {
      const pkg = JSON.parse(fs.readFileSync(pkgFile, "utf8"));
      if (pkg.name === "azurite") return { root: dir, version: pkg.version };
    }
    const parent = path.dirname(dir);
    if (parent === dir) fatal(`${script} is not inside the azurite npm package`);
    dir = parent;
  }
}

function loadInternals(root) {
  const req = (rel) => {
    try {
      return require(path.join(root, "dist", "src", rel));
    } catch (err) {
      fatal(`cannot load Azurite internal ${rel}: ${err.message}`);
    }
  };
  return {
    PageBlobHandler: req("blob/handlers/PageBlobHandler").default,
    PageBlobRangesManager: req("blob/handlers/PageBlobRangesManager").default,
    BlobHandler: req("blob/handlers/BlobHandler").default,
    ListenerFactory: req("blob/BlobRequestListenerFactory").default,
    serializerModule: req("blob/generated/utils/serializer"),
    Operation: req("blob/generated/artifacts/operation").default,
    StorageError: req("blob/errors/StorageError").default,
    StorageErrorFactory: req("blob/errors/StorageErrorFactory").default,
    BlobStorageContext: req("blob/context/BlobStorageContext").default,
    LokiBlobMetadataStore: req("blob/persistence/LokiBlobMetadataStore").default,
    blobUtils: req("blob/utils/utils"),
    commonUtils: req("common/utils/utils"),
    constants: req("blob/utils/constants"),
  };
}

function requireFunction(owner, name, where) {
  if (!owner || typeof owner[name] !== "function") fatal(`Azurite internal ${where}.${name} is missing`);
}

function selfCheck(az) {
  requireFunction(az.PageBlobHandler.prototype, "getPageRanges", "PageBlobHandler");
  requireFunction(az.PageBlobHandler.prototype, "uploadPages", "PageBlobHandler");
  requireFunction(az.PageBlobHandler.prototype, "clearPages", "PageBlobHandler");
  requireFunction(az.PageBlobHandler.prototype, "uploadPagesFromURL", "PageBlobHandler");
  requireFunction(az.BlobHandler.prototype, "startCopyFromURL", "BlobHandler");
  requireFunction(az.BlobHandler.prototype, "getProperties", "BlobHandler");
  requireFunction(az.BlobHandler.prototype, "download", "BlobHandler");
  requireFunction(az.ListenerFactory.prototype, "createRequestListener", "BlobRequestListenerFactory");
  for (const name of COPY_STORE_METHODS) requireFunction(az.LokiBlobMetadataStore.prototype, name, "LokiBlobMetadataStore");
  requireFunction(az.serializerModule, "serialize", "generated/utils/serializer");
  requireFunction(az.StorageErrorFactory, "getInvalidPageRange", "StorageErrorFactory");
  requireFunction(az.blobUtils, "computeAndValidateTransactionalChecksums", "blob/utils");
  requireFunction(az.commonUtils, "computeTransactionalChecksums", "common/utils");
  if (az.Operation.PageBlob_GetPageRanges === undefined) fatal("Operation.PageBlob_GetPageRanges is missing");
  // The diff relies on the range table layout {start, end, persistency:{id, offset, count}}.
  const merge = az.PageBlobRangesManager.prototype.mergeRange.toString();
  if (!/persistency\.offset/.test(merge) || !/persistency\.id/.test(merge)) {
    fatal("PageBlobRangesManager.mergeRange no longer splits ranges as {start,end,persistency:{id,offset,count}}");
  }
  // Put Page must validate checksums with CRC-64/NVME (check value of "123456789").
  const uploadPages = az.PageBlobHandler.prototype.uploadPages.toString();
  if (!/computeAndValidateTransactionalChecksums/.test(uploadPages)) {
    fatal("PageBlobHandler.uploadPages no longer validates transactional checksums");
  }
}

async function checkCrc64(az) {
  const { Readable } = require("stream");
  const { crc64 } = await az.commonUtils.computeTransactionalChecksums(
    Readable.from([Buffer.from("123456789")]), {}, { crc64: true });
  const got = Buffer.from(crc64).readBigUInt64LE(0);
  if (got !== 0xae8b14860a799888n) {
    fatal(`Azurite's CRC64 of "123456789" is 0x${got.toString(16)}, not CRC-64/NVME 0xae8b14860a799888`);
  }
}

// ------------------------------------------------------------ helpers ------

function storageError(az, status, code, message, requestId) {
  return new az.StorageError(status, code, message, requestId);
}

/** Parses "bytes=a-b" from x-ms-range (preferred) or Range; undefined if absent. */
function parseRangeHeader(request) {
  const raw = request.getHeader("x-ms-range") || request.getHeader("range");
  if (raw === undefined || raw === "") return undefined;
  const m = /^bytes=(\d+)-(\d*)$/.exec(String(raw).trim());
  if (!m) return null;
  return { start: Number(m[1]), end: m[2] === "" ? Infinity : Number(m[2]) };
}

function encodeMarker(offset) {
  return Buffer.from(`${MARKER_PREFIX}${offset}`).toString("base64");
}

function decodeMarker(marker) {
  const text = Buffer.from(marker, "base64").toString("utf8");
  if (!text.startsWith(MARKER_PREFIX)) return undefined;
  const n = Number(text.slice(MARKER_PREFIX.length));
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

// --------------------------------------------------- (a) page range diff ---

/** Appends [start,end] of `kind`, merging with the previous item if adjacent. */
function pushItem(items, kind, start, end) {
  const last = items[items.length - 1];
  if (last && last.kind === kind && last.end + 1 === start) last.end = end;
  else items.push({ kind, start, end });
}

/** Same extent byte at `offset` on both sides (so the page is unchanged)? */
function sameData(t, p, offset) {
  return t.persistency.id === p.persistency.id &&
    t.persistency.offset + (offset - t.start) === p.persistency.offset + (offset - p.start);
}

/**
 * Diff of two sorted, disjoint range tables. Sweeps segments on which each
 * side is either covered by one range or uncovered; returns interleaved
 * {kind: "PageRange"|"ClearRange", start, end} in offset order.
 */
function diffRanges(target, prev) {
  const items = [];
  let i = 0, j = 0, pos = 0;
  while (i < target.length || j < prev.length) {
    const t = target[i], p = prev[j];
    if (t && t.end < pos) { i++; continue; }
    if (p && p.end < pos) { j++; continue; }
    const tStart = t ? Math.max(t.start, pos) : Infinity;
    const pStart = p ? Math.max(p.start, pos) : Infinity;
    const segStart = Math.min(tStart, pStart);
    const inT = tStart === segStart, inP = pStart === segStart;
    const segEnd = Math.min(inT ? t.end : tStart - 1, inP ? p.end : pStart - 1);
    if (inT && !(inP && sameData(t, p, segStart))) pushItem(items, "PageRange", segStart, segEnd);
    else if (!inT && inP) pushItem(items, "ClearRange", segStart, segEnd);
    pos = segEnd + 1;
  }
  return items;
}

function fullListing(ranges) {
  const items = [];
  for (const r of ranges) pushItem(items, "PageRange", r.start, r.end);
  return items;
}

/** Clips items to [start, end] (inclusive), dropping those outside. */
function clipItems(items, start, end) {
  const out = [];
  for (const it of items) {
    if (it.end < start || it.start > end) continue;
    out.push({ kind: it.kind, start: Math.max(it.start, start), end: Math.min(it.end, end) });
  }
  return out;
}

/** Applies marker/maxresults; returns { page, nextMarker }. */
function paginate(items, afterOffset, maxResults) {
  const rest = afterOffset === undefined ? items : items.filter((it) => it.start >= afterOffset);
  if (maxResults === undefined || rest.length <= maxResults) return { page: rest, nextMarker: "" };
  return { page: rest.slice(0, maxResults), nextMarker: encodeMarker(rest[maxResults].start) };
}

function pageListXml(items, nextMarker, withMarker) {
  const body = items.map((it) => `<${it.kind}><Start>${it.start}</Start><End>${it.end}</End></${it.kind}>`);
  if (withMarker) body.push(nextMarker ? `<NextMarker>${nextMarker}</NextMarker>` : "<NextMarker />");
  return `<?xml version="1.0" encoding="utf-8"?><PageList>${body.join("")}</PageList>`;
}

function parseListingQuery(az, request, requestId) {
  const maxRaw = request.getQuery("maxresults");
  let maxResults;
  if (maxRaw !== undefined) {
    maxResults = Number(maxRaw);
    if (!Number.isInteger(maxResults) || maxResults < 1) {
      throw storageError(az, 400, "OutOfRangeQueryParameterValue",
        "One of the query parameters specified in the request URI is outside the permissible range.", requestId);
    }
  }
  const marker = request.getQuery("marker");
  let afterOffset;
  if (marker !== undefined && marker !== "") {
    afterOffset = decodeMarker(marker);
    if (afterOffset === undefined) {
      throw storageError(az, 400, "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.", requestId);
    }
  }
  return { maxResults, afterOffset };
}

async function loadPrevSnapshot(az, store, context, ctx, prevsnapshot, snapshot) {
  if (snapshot && prevsnapshot > snapshot) {
    throw storageError(az, 400, "PreviousSnapshotCannotBeNewer",
      "The prevsnapshot query parameter value cannot be newer than snapshot query parameter value.", context.contextId);
  }
  try {
    return await store.getPageRanges(context, ctx.account, ctx.container, ctx.blob, prevsnapshot);
  } catch (err) {
    if (err && err.storageErrorCode === "BlobNotFound") {
      throw storageError(az, 409, "PreviousSnapshotNotFound", "The previous snapshot is not found.", context.contextId);
    }
    throw err;
  }
}

/** Accounts that behave like the managed-disk ("md-...") accounts behind disk SAS URLs. */
function managedDiskAccounts() {
  return (process.env.SNAPBACK_AZURITE_MD_ACCOUNTS || "md").split(",").filter((a) => a !== "");
}

/**
 * The diff base given as `x-ms-previous-snapshot-url` (the managed-disk form of
 * prevsnapshot): a SAS URL of an older snapshot of the same blob. Azure accepts
 * the header only on managed-disk accounts (400
 * UnsupportedHeaderForNonManagedDisksAccount elsewhere). The URL must name this
 * blob and carry `snapshot=`, or name another blob of this account without one
 * (a per-snapshot export, see (j)); its SAS must let it be read, which we check
 * with a GET to this same Azurite (so Azurite's own SAS rules decide). Returns
 * `{ snapshot }` or `{ container, blob }`, or undefined when the header is absent.
 */
async function prevSnapshotFromUrl(az, request, ctx, requestId) {
  const raw = request.getHeader("x-ms-previous-snapshot-url");
  if (raw === undefined || raw === "") return undefined;
  if (!managedDiskAccounts().includes(ctx.account)) {
    throw storageError(az, 400, "UnsupportedHeaderForNonManagedDisksAccount",
      "The header x-ms-previous-snapshot-url is supported only for managed disk accounts.", requestId);
  }
  const invalid = () => storageError(az, 400, "InvalidHeaderValue",
    "The value for one of the HTTP headers is not in the correct format.", requestId);
  let url;
  try {
    url = new URL(String(raw));
  } catch (err) {
    throw invalid();
  }
  const snapshot = url.searchParams.get("snapshot");
  const pathname = decodeURIComponent(url.pathname);
  const samePath = pathname === `/${ctx.account}/${ctx.container}/${ctx.blob}`;
  const other = /^\/([^/]+)\/([^/]+)\/(.+)$/.exec(pathname);
  const localPort = request.req && request.req.socket ? request.req.socket.localPort : undefined;
  const local = url.protocol === "http:" && ["127.0.0.1", "localhost"].includes(url.hostname) &&
    (localPort === undefined || Number(url.port) === localPort);
  let found;
  if (local && snapshot && samePath) found = { snapshot };
  else if (local && !snapshot && !samePath && other && other[1] === ctx.account) found = { container: other[2], blob: other[3] };
  else throw invalid();
  const got = await httpGet(url.toString(), { "x-ms-range": "bytes=0-0", "x-ms-version": "2025-11-05" });
  if (got.status === 404) {
    throw storageError(az, 409, "PreviousSnapshotNotFound", "The previous snapshot is not found.", requestId);
  }
  if (got.status !== 200 && got.status !== 206) {
    throw storageError(az, 403, "AuthenticationFailed",
      `The previous snapshot URL is not authorized (it answered ${got.status} ${got.code || ""}).`.trim(), requestId);
  }
  return found;
}

/** The disk an export blob (see (j)) was copied from, or undefined. */
function exportOf(blob) {
  const meta = (blob && blob.metadata) || {};
  const key = Object.keys(meta).find((k) => k.toLowerCase() === "snapbackexportof");
  return key === undefined ? undefined : meta[key];
}

/** A blob's (or snapshot's) creation time in ms: a new one means the blob was recreated. */
function creationTime(blob) {
  const t = blob.properties && blob.properties.creationTime;
  return t === undefined ? undefined : new Date(t).getTime();
}

function patchGetPageRanges(az) {
  az.PageBlobHandler.prototype.getPageRanges = async function getPageRanges(options, context) {
    const ctx = new az.BlobStorageContext(context);
    const request = context.request;
    const blob = await this.metadataStore.getPageRanges(context, ctx.account, ctx.container, ctx.blob,
      options.snapshot, options.leaseAccessConditions, options.modifiedAccessConditions);
    const length = blob.properties.contentLength;
    const range = parseRangeHeader(request);
    if (range === null || (range && (range.start >= length || range.end < range.start))) {
      throw az.StorageErrorFactory.getInvalidPageRange(context.contextId);
    }
    const { maxResults, afterOffset } = parseListingQuery(az, request, context.contextId);
    const fromUrl = await prevSnapshotFromUrl(az, request, ctx, context.contextId);
    const prevsnapshot = fromUrl ? fromUrl.snapshot : request.getQuery("prevsnapshot");
    let items;
    if (fromUrl && fromUrl.blob) {
      let prev;
      try {
        prev = await this.metadataStore.getPageRanges(context, ctx.account, fromUrl.container, fromUrl.blob, undefined);
      } catch (err) {
        if (err && err.storageErrorCode === "BlobNotFound") {
          throw storageError(az, 409, "PreviousSnapshotNotFound", "The previous snapshot is not found.", context.contextId);
        }
        throw err;
      }
      const meta = async (container, name) =>
        exportOf(await this.metadataStore.getBlobProperties(context, ctx.account, container, name, undefined));
      const family = await meta(ctx.container, ctx.blob);
      if (family === undefined || family !== await meta(fromUrl.container, fromUrl.blob)) {
        throw storageError(az, 409, "PreviousSnapshotOperationNotSupported",
          "Differential Get Page Ranges is not supported on the previous snapshot.", context.contextId);
      }
      items = diffRanges(blob.pageRangesInOrder || [], prev.pageRangesInOrder || []);
    } else if (prevsnapshot) {
      const prev = await loadPrevSnapshot(az, this.metadataStore, context, ctx, prevsnapshot, options.snapshot);
      if (creationTime(blob) !== creationTime(prev)) {
        throw storageError(az, 409, "PreviousSnapshotOperationNotSupported",
          "Differential Get Page Ranges is not supported on the previous snapshot.", context.contextId);
      }
      items = diffRanges(blob.pageRangesInOrder || [], prev.pageRangesInOrder || []);
    } else {
      items = fullListing(blob.pageRangesInOrder || []);
    }
    items = clipItems(items, range ? range.start : 0, Math.min(range ? range.end : Infinity, length - 1));
    const { page, nextMarker } = paginate(items, afterOffset, maxResults);
    const version = request.getHeader("x-ms-version") || "";
    const withMarker = version >= "2020-10-02" || maxResults !== undefined || nextMarker !== "";
    return {
      statusCode: 200,
      eTag: blob.properties.etag,
      lastModified: blob.properties.lastModified,
      blobContentLength: length,
      requestId: context.contextId,
      version: az.constants.BLOB_API_VERSION,
      clientRequestId: options.requestId,
      date: context.startTime,
      [PAGE_LIST_XML]: pageListXml(page, nextMarker, withMarker),
    };
  };
}

const PAGE_LIST_XML = Symbol("snapback.pageListXml");

/** Lets a handler response carry a pre-built XML body (interleaved ranges). */
function patchSerializer(az) {
  const original = az.serializerModule.serialize;
  az.serializerModule.serialize = async function serialize(context, res, spec, handlerResponse, logger) {
    const xml = handlerResponse && handlerResponse[PAGE_LIST_XML];
    if (xml === undefined) return original(context, res, spec, handlerResponse, logger);
    const status = handlerResponse.statusCode;
    const headersOnly = { ...spec, responses: { ...spec.responses, [status]: { ...spec.responses[status], bodyMapper: undefined } } };
    await original(context, res, headersOnly, handlerResponse, logger);
    res.setContentType("application/xml");
    res.getBodyStream().write(xml);
  };
}

// --------------------------------------------------- (c) Put Page limits ---

function validatePageRange(az, request, requestId) {
  const range = parseRangeHeader(request);
  if (!range || range.end === Infinity || range.start % PAGE !== 0 || (range.end + 1) % PAGE !== 0 ||
      range.end < range.start) {
    throw storageError(az, 416, "InvalidPageRange", "The page range specified is invalid.", requestId);
  }
  return range;
}

/**
 * Reads and discards a request body before an early error answer: otherwise a
 * client still sending (Connection: close) gets EPIPE/ECONNRESET instead of
 * the status.
 */
function drain(stream) {
  if (!stream || typeof stream.resume !== "function" || stream.readableEnded) return Promise.resolve();
  return new Promise((resolve) => {
    stream.once("end", resolve).once("error", resolve).once("close", resolve);
    stream.resume();
  });
}

function patchPutPage(az) {
  const uploadPages = az.PageBlobHandler.prototype.uploadPages;
  az.PageBlobHandler.prototype.uploadPages = async function (body, contentLength, options, context) {
    // Azurite's dispatcher matches Put Page From URL only with x-ms-range; with a plain
    // Range header (as the Rust SDK sends) the request lands here. Route it by its source.
    const copySource = context.request.getHeader("x-ms-copy-source");
    if (copySource && !(FROM_URL in options)) {
      await drain(body);
      return this.uploadPagesFromURL(copySource, context.request.getHeader("x-ms-source-range"),
        contentLength, undefined, options, context);
    }
    try {
      if (contentLength > MAX_PUT_PAGE_BYTES) {
        throw storageError(az, 413, "RequestBodyTooLarge",
          "The request body is too large and exceeds the maximum permissible limit.", context.contextId);
      }
      validatePageRange(az, context.request, context.contextId);
    } catch (err) {
      await drain(body);
      throw err;
    }
    return uploadPages.call(this, body, contentLength, options, context);
  };
  const clearPages = az.PageBlobHandler.prototype.clearPages;
  az.PageBlobHandler.prototype.clearPages = async function (contentLength, options, context) {
    validatePageRange(az, context.request, context.contextId);
    return clearPages.call(this, contentLength, options, context);
  };
  // Azurite's own InvalidPageRange error carries the code "Requested Range Not Satisfiable".
  az.StorageErrorFactory.getInvalidPageRange = (requestId) =>
    storageError(az, 416, "InvalidPageRange", "The page range specified is invalid.", requestId);
}

// ------------------------------------------- (i) Put Page From URL --------

function parseBytesRange(raw) {
  const m = /^bytes=(\d+)-(\d+)$/.exec(String(raw || "").trim());
  return m ? { start: Number(m[1]), end: Number(m[2]) } : null;
}

/** GET `url` with `headers`; resolves { status, body: Buffer, code }. Loopback only. */
function httpGet(url, headers) {
  const http = require("http");
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks), code: res.headers["x-ms-error-code"] }));
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

const FROM_URL = Symbol("snapback.fromUrl");

function patchPutPageFromUrl(az) {
  const proto = az.PageBlobHandler.prototype;
  proto.uploadPagesFromURL = async function (sourceUrl, sourceRange, contentLength, range, options, context) {
    const request = context.request;
    const requestId = context.contextId;
    const dest = validatePageRange(az, request, requestId);
    const src = parseBytesRange(sourceRange || request.getHeader("x-ms-source-range"));
    if (!src || src.start % PAGE !== 0 || (src.end + 1) % PAGE !== 0 || src.end < src.start ||
        src.end - src.start !== dest.end - dest.start) {
      throw storageError(az, 416, "InvalidPageRange", "The page range specified is invalid.", requestId);
    }
    const len = dest.end - dest.start + 1;
    if (len > MAX_PUT_PAGE_BYTES) {
      throw storageError(az, 413, "RequestBodyTooLarge",
        "The request body is too large and exceeds the maximum permissible limit.", requestId);
    }
    let url;
    try {
      url = new URL(sourceUrl);
    } catch (err) {
      throw storageError(az, 400, "InvalidHeaderValue", "The value for x-ms-copy-source is invalid.", requestId);
    }
    const localPort = request.req && request.req.socket ? request.req.socket.localPort : undefined;
    if (url.protocol !== "http:" || !["127.0.0.1", "localhost"].includes(url.hostname) ||
        (localPort !== undefined && Number(url.port) !== localPort)) {
      throw storageError(az, 400, "CannotVerifyCopySource", "Only a source on this emulator can be copied.", requestId);
    }
    const headers = { "x-ms-range": `bytes=${src.start}-${src.end}`, "x-ms-version": "2025-11-05" };
    const auth = request.getHeader("x-ms-copy-source-authorization");
    if (auth) headers.authorization = auth;
    let got;
    try {
      got = await httpGet(url.toString(), headers);
    } catch (err) {
      throw storageError(az, 500, "InternalError", `reading the copy source failed: ${err.message}`, requestId);
    }
    if (got.status !== 200 && got.status !== 206) {
      throw storageError(az, got.status === 404 ? 404 : 403 === got.status ? 403 : 409, "CannotVerifyCopySource",
        `The source answered ${got.status} ${got.code || ""}`.trim(), requestId);
    }
    if (got.body.length !== len) {
      throw storageError(az, 416, "InvalidSourceRange",
        `The source range is outside the source blob (got ${got.body.length} of ${len} bytes).`, requestId);
    }
    const { Readable } = require("stream");
    // Same store path as a Put Page of the destination range (its checks, extent, metadata).
    const res = await proto.uploadPages.call(this, Readable.from([got.body]), len,
      { ...options, transactionalContentCrc64: undefined, transactionalContentMD5: undefined, [FROM_URL]: true }, context);
    return { ...res, statusCode: 201 };
  };
}

// ---------------------------------------------------- (e) async copy -------

function copyPolls() {
  const raw = process.env.SNAPBACK_AZURITE_COPY_POLLS;
  const n = raw === undefined || raw === "" ? 2 : Number(raw);
  if (!Number.isInteger(n) || n < 0) fatal(`SNAPBACK_AZURITE_COPY_POLLS must be an integer >= 0, got ${raw}`);
  return n;
}

function patchCopy(az) {
  const polls = copyPolls();
  const pending = new Map(); // "account/container/blob" -> { copyId, remaining }
  const keyOf = (context) => {
    const c = new az.BlobStorageContext(context);
    return `${c.account}/${c.container}/${c.blob}`;
  };
  const proto = az.BlobHandler.prototype;

  const startCopy = proto.startCopyFromURL;
  proto.startCopyFromURL = async function (copySource, options, context) {
    const res = await startCopy.call(this, copySource, options, context);
    if (res.copyStatus === "success") {
      pending.set(keyOf(context), { copyId: res.copyId, remaining: polls });
      res.copyStatus = "pending";
    }
    return res;
  };

  const reportPending = (options, context, res) => {
    if (options.snapshot || options.versionId) return res;
    const key = keyOf(context);
    const entry = pending.get(key);
    if (!entry) return res;
    if (entry.copyId !== res.copyId || entry.remaining <= 0) {
      pending.delete(key);
      return res;
    }
    entry.remaining -= 1;
    const total = Number(String(res.copyProgress || "").split("/")[1]) || 0;
    const done = Math.floor((total * (polls - entry.remaining)) / (polls + 1));
    res.copyStatus = "pending";
    res.copyProgress = `${done}/${total}`;
    res.copyCompletionTime = undefined;
    return res;
  };
  for (const name of ["getProperties", "download"]) {
    const original = proto[name];
    proto[name] = async function (options, context) {
      return reportPending(options, context, await original.call(this, options, context));
    };
  }
}

// ------------------------------------ (k) copies own their page ranges -----

/** The store's copy operations: Copy Blob, and Copy Blob From URL (x-ms-requires-sync). */
const COPY_STORE_METHODS = ["startCopyFromURL", "copyFromURL"];

function patchCopyRanges(az) {
  const proto = az.LokiBlobMetadataStore.prototype;
  for (const name of COPY_STORE_METHODS) {
    const original = proto[name];
    proto[name] = async function (context, source, destination, ...rest) {
      const properties = await original.call(this, context, source, destination, ...rest);
      // The original inserts the destination as its last synchronous step; a write to it
      // reads the new document only after awaits of its own, so it runs after this line.
      const doc = this.db.getCollection(this.BLOBS_COLLECTION).findOne({
        accountName: destination.account, containerName: destination.container, name: destination.blob, snapshot: "",
      });
      if (doc && Array.isArray(doc.pageRangesInOrder)) doc.pageRangesInOrder = doc.pageRangesInOrder.slice();
      return properties;
    };
  }
}

// --------------------------------------------- (f) faults + control route --

const FAULT_CODES = {
  400: ["InvalidInput", "One of the request inputs is not valid."],
  403: ["AuthenticationFailed", "Server failed to authenticate the request."],
  404: ["ResourceNotFound", "The specified resource does not exist."],
  408: ["OperationTimedOut", "The operation could not be completed within the permitted time."],
  409: ["Conflict", "The request conflicts with the current state of the resource."],
  412: ["ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met."],
  429: ["ServerBusy", "The server is busy."],
  500: ["OperationTimedOut", "Operation could not be completed within the specified time."],
  502: ["InternalError", "The server encountered an internal error. Please retry the request."],
  503: ["ServerBusy", "The server is currently unable to receive requests. Please retry your request."],
  504: ["OperationTimedOut", "Operation could not be completed within the specified time."],
};

const faults = []; // { status: number|"reset", count, match, method, code }
// POST /__harness/requests?record=1: the request log (off by default: most tests do not
// need it, and a long test must not grow it without bound).
const MAX_LOGGED_REQUESTS = 100000;
let recordRequests = false;
const requestLog = []; // { method, path, comp, agent, started, ended }

function logRequest(req, res, url) {
  if (!recordRequests || requestLog.length >= MAX_LOGGED_REQUESTS) return;
  const entry = {
    method: req.method,
    path: url.pathname,
    comp: url.searchParams.get("comp") || "",
    agent: req.headers["user-agent"] || "",
    started: Date.now(),
    ended: undefined,
  };
  requestLog.push(entry);
  res.on("close", () => {
    if (entry.ended === undefined) entry.ended = Date.now();
  });
}

function sendJson(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

function addFault(query) {
  const statusRaw = query.get("status");
  const status = statusRaw === "reset" ? "reset" : Number(statusRaw);
  if (status !== "reset" && !(Number.isInteger(status) && status >= 400 && status <= 599)) {
    return { error: `status must be 400..599 or "reset", got ${statusRaw}` };
  }
  const count = query.has("count") ? Number(query.get("count")) : 1;
  if (!Number.isInteger(count) || count < 1) return { error: `count must be an integer >= 1` };
  const fault = { status, count, match: query.get("match") || "", method: (query.get("method") || "").toUpperCase(), code: query.get("code") || undefined };
  faults.push(fault);
  return { fault };
}

function handleControl(req, res, url) {
  if (url.pathname === "/__harness/version" && req.method === "GET") {
    return sendJson(res, 200, { azurite: PINNED_AZURITE_VERSION, extension: EXTENSION_VERSION });
  }
  if (url.pathname === "/__harness/faults") {
    if (req.method === "POST") {
      const { error, fault } = addFault(url.searchParams);
      return error ? sendJson(res, 400, { error }) : sendJson(res, 200, { armed: fault, faults });
    }
    if (req.method === "DELETE") {
      faults.length = 0;
      return sendJson(res, 200, { faults });
    }
    if (req.method === "GET") return sendJson(res, 200, { faults });
  }
  if (url.pathname === "/__harness/requests") {
    if (req.method === "POST") {
      recordRequests = url.searchParams.get("record") === "1";
      return sendJson(res, 200, { recording: recordRequests });
    }
    if (req.method === "GET") return sendJson(res, 200, { requests: requestLog });
  }
  return sendJson(res, 404, { error: `unknown harness route ${req.method} ${url.pathname}` });
}

/** Consumes one armed fault matching this request, if any. */
function takeFault(req) {
  const index = faults.findIndex((f) => req.url.includes(f.match) && (!f.method || f.method === req.method));
  if (index < 0) return undefined;
  const fault = faults[index];
  fault.count -= 1;
  if (fault.count <= 0) faults.splice(index, 1);
  return fault;
}

function sendFault(req, res, fault) {
  if (fault.status === "reset") {
    const socket = req.socket;
    if (typeof socket.resetAndDestroy === "function") socket.resetAndDestroy();
    else socket.destroy();
    return;
  }
  const [defaultCode, message] = FAULT_CODES[fault.status] || ["InternalError", "Injected fault."];
  const code = fault.code || defaultCode;
  const requestId = crypto.randomUUID();
  const body = `<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code><Message>${message}\n` +
    `RequestId:${requestId}\nTime:${new Date().toISOString()}</Message></Error>`;
  res.writeHead(fault.status, {
    "Content-Type": "application/xml",
    "Content-Length": Buffer.byteLength(body),
    "x-ms-error-code": code,
    "x-ms-request-id": requestId,
    "x-ms-version": "2025-11-05",
  });
  res.end(body);
}

function patchListener(az) {
  const create = az.ListenerFactory.prototype.createRequestListener;
  az.ListenerFactory.prototype.createRequestListener = function () {
    const app = create.call(this);
    return function snapbackListener(req, res) {
      const url = new URL(req.url, "http://harness.invalid");
      if (url.pathname.startsWith("/__harness/")) return handleControl(req, res, url);
      logRequest(req, res, url);
      const fault = takeFault(req);
      if (fault) return sendFault(req, res, fault);
      return app(req, res);
    };
  };
}

// ----------------------------------------------------- (h) parent watch ----

function watchParent() {
  const raw = process.env.SNAPBACK_HARNESS_PARENT_PID;
  if (!raw) return;
  const pid = Number(raw);
  if (!Number.isInteger(pid) || pid <= 0) fatal(`SNAPBACK_HARNESS_PARENT_PID is not a pid: ${raw}`);
  const timer = setInterval(() => {
    try {
      process.kill(pid, 0);
    } catch (err) {
      if (err.code === "EPERM") return; // exists, owned by someone else
      process.stderr.write(`${TAG}: parent process ${pid} is gone; exiting\n`);
      process.exit(0);
    }
  }, 500);
  timer.unref();
}

// ------------------------------------------------------------------ main ---

function install() {
  const { root, version } = findAzuriteRoot();
  if (version !== PINNED_AZURITE_VERSION) {
    fatal(`Azurite at ${root} is version ${version}; this extension is pinned to exactly ` +
      `${PINNED_AZURITE_VERSION}. Run "npm ci" in tests/azurite.`);
  }
  const az = loadInternals(root);
  selfCheck(az);
  patchGetPageRanges(az);
  patchSerializer(az);
  patchPutPage(az);
  patchPutPageFromUrl(az);
  patchCopy(az);
  patchCopyRanges(az);
  patchListener(az);
  watchParent();
  // The CRC check is async; it finishes long before Azurite has bound its port.
  checkCrc64(az).catch((err) => fatal(`CRC64 self-check failed: ${err.message}`));
  process.stderr.write(`${TAG} ${EXTENSION_VERSION}: patched Azurite ${version}\n`);
}

install();
