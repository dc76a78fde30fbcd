"use strict";
/*
 * arm-emulator.js — a small Azure Resource Manager (Microsoft.Compute disks and
 * snapshots) + Entra token endpoint for snapback's tests, backed by Azurite.
 *
 *   node tests/azurite/arm-emulator.js      (environment below; prints
 *   "arm-emulator listening on https://127.0.0.1:PORT" once it serves)
 *
 * Shapes follow Azure's recorded answers (tests/recordings/, checked by
 * tests/conformance.rs; docs/testing.md names each recording).
 *
 * Model (what Azure does, mapped onto Azurite):
 *  - A managed disk is a page blob `disks/<sub>/<rg>/<name>` (lower case) in a
 *    dedicated Azurite account (EMU_MD_ACCOUNT, "md"). Its length is the disk
 *    size + 512: Azure exports a disk as a fixed VHD (data + 512-byte footer);
 *    the emulator keeps the length but does not write a VHD footer (see
 *    docs/managed-disks.md).
 *  - A snapshot resource is a blob snapshot of its disk's blob. Its read SAS
 *    (beginGetAccess) is, as on Azure, an export of its own: the snapshot is
 *    copied to the blob `abcd` in a fresh container of the md account (Azure:
 *    `https://md-….blob.storage.azure.net/<container>/abcd?…&sr=b&…`; here the
 *    host stays Azurite's 127.0.0.1) and the SAS is a real Azurite service SAS
 *    (sr=b, no `snapshot=`) on that blob; endGetAccess deletes the export. The
 *    diff with `x-ms-previous-snapshot-url` naming another export of the same
 *    disk is answered by the Azurite preload (the exports carry
 *    x-ms-meta-snapbackexportof, the disk's blob).
 *  - Long-running operations (PUT, DELETE, beginGetAccess, endGetAccess) answer
 *    202 with Azure-AsyncOperation and Location (`monitor=true`), as recorded;
 *    only Location with EMU_LOCATION_ONLY=1; Retry-After EMU_RETRY_AFTER
 *    seconds (default 0); each operation reports "InProgress" EMU_POLLS times
 *    (default 1) before it succeeds. A PUT's poll carries the resource as
 *    `properties.output`; an operation without a result answers its Location
 *    with 200 and an empty body.
 *  - Premium SSD v2 / Ultra disks (sku PremiumV2_LRS, UltraSSD_LRS): their
 *    snapshots copy in the background after provisioning: `completionPercent`
 *    grows by EMU_COMPLETION_STEP (default 50) on every GET of the snapshot
 *    until 100, and beginGetAccess before that answers 409. Other snapshots
 *    report no completionPercent (readable at once).
 *  - `creationData.logicalSectorSize` 512 or 4096 on a disk (createOption
 *    Empty with diskSizeGB, or Upload, which takes 512 only: an upload is a VHD);
 *    4096 only on Premium SSD v2 / Ultra, whose disks report it (default 4096 for
 *    Empty, 512 for Upload) and whose snapshots inherit it; at most 3 snapshots
 *    of such a disk pending (copying) at once, else 409 OperationNotAllowed.
 *  - Disk properties echoed as given and copied to snapshots: osType,
 *    hyperVGeneration, supportedCapabilities, securityProfile, encryption, tier;
 *    refused as DiskRP documents: osType other than Windows/Linux,
 *    hyperVGeneration other than V1/V2, a Trusted Launch / confidential disk not
 *    V2, a customer-key encryption without diskEncryptionSetId (400
 *    InvalidParameter; the codes are the emulator's choice).
 *  - Trusted Launch disks (securityProfile.securityType TrustedLaunch) have a VM guest
 *    state page blob `vmgs/<sub>/<rg>/<name>` (EMU_VMGS_BYTES, default 4 MiB), snapshotted
 *    with the disk. beginGetAccess with getSecureVMGuestStateSAS: true also answers
 *    securityDataAccessSAS — for a snapshot an export `<container>/<guid>_vmgs` beside
 *    `abcd` (Disk_BeginGetAccess_WithVMGuestState.json), for a disk its guest state blob
 *    (rw for a Write grant). Without the flag, or for a resource without guest state, no
 *    such field. createOption UploadPreparedSecure (an upload with its guest state) needs
 *    securityProfile.securityType (400 InvalidParameter otherwise: the emulator's code).
 *  - Azure's limits: at most EMU_SNAPSHOT_RATE_LIMIT (default 7) new snapshots
 *    of a disk per EMU_SNAPSHOT_RATE_WINDOW seconds (default 300), else 409
 *    OperationNotAllowed; uploadSizeBytes at least 20,972,032 (20 MiB + 512)
 *    with uploadSizeBytes - 512 a whole number of MiB, else 400 BadRequest
 *    (EMU_SMALL_UPLOADS=1: any multiple of 512 from 1024, for tests of small disks).
 *  - Enforced like Azure: a bearer token issued by the token endpoint on every
 *    ARM request (401 otherwise); at most 5 snapshots of one disk's family with
 *    an active SAS (409); 409 on creating a disk over an existing one, on
 *    deleting a snapshot or disk whose access is not ended, on a write SAS for a
 *    disk that is not ReadyToUpload.
 *  - Export settings (DiskRP 2024-03-02): dataAccessAuthMode, networkAccessPolicy
 *    (default AllowAll), publicNetworkAccess (default Enabled), diskAccessId, on disks
 *    (PUT, or POST /__emulator/disk-export) and snapshots (their PUT's values; not
 *    inherited from the disk). beginGetAccess (Read) of a DenyAll resource answers 409
 *    OperationNotAllowed. An export of a resource that is Entra-only
 *    (dataAccessAuthMode AzureActiveDirectory), AllowPrivate or publicNetworkAccess
 *    Disabled is served by this emulator's own data plane, /__md/<container>/<blob>?<SAS>,
 *    which forwards to Azurite after checking: private-only or public-disabled: 403
 *    AuthorizationFailure (the emulator is never inside the private endpoint's network);
 *    Entra-only: a bearer token issued for https://disk.azure.com/ (401
 *    NoAuthenticationInformation without one, 401 InvalidAuthenticationInfo for another
 *    audience, 400 without x-ms-version >= 2017-11-09), and the principal holding the
 *    Data Operator for Managed Disks role (POST /__emulator/roles?data_operator=0 takes
 *    it away: 403 AuthorizationPermissionMismatch).
 *  - Token endpoint: POST /{tenant}/oauth2/v2.0/token (client credentials):
 *    client_id must equal EMU_CLIENT_ID, and client_secret EMU_CLIENT_SECRET or
 *    client_assertion (workload identity) EMU_FEDERATED_TOKEN; the scope must be
 *    {this endpoint}/.default. Managed identity: GET /msi/token (App Service
 *    protocol) with x-identity-header = EMU_IDENTITY_HEADER.
 *
 * Control routes (no token): POST /__emulator/faults?status=429&count=1&match=S
 *   [&retry_after=N][&code=C][&message=M] arms faults like the Azurite preload's; GET
 *   /__emulator/state lists disks, snapshots and active accesses; POST
 *   /__emulator/next-operation?fail=CODE[&message=M] makes the next long-running
 *   operation end Failed with that code (?host=localhost: announce its polling URL on
 *   another origin); GET
 *   /__emulator/disk-sas?id=<disk id>[&part=vmgs] mints a read-write SAS on the live disk
 *   blob (the "VM" writing its disk), or on its VM guest state blob; POST /__emulator/resize?id=<disk id>&bytes=N grows
 *   a disk to N bytes; GET /__emulator/stats counts requests (all ARM ones, and by kind:
 *   reads, writes, polls; token requests; diffRefused); POST
 *   /__emulator/refuse-resized-diffs?on=1 serves every export through the checking data
 *   plane, which answers a diff whose previous snapshot has another size 400
 *   InvalidHeaderValue (an unexpected refusal; the code is the emulator's); POST
 *   /__emulator/drop-guest-state?on=1 leaves securityDataAccessSAS out of every grant; GET /__emulator/operations lists every
 *   long-running operation with its start and the time a poll first saw it end.
 *
 * Environment: EMU_AZURITE (http://127.0.0.1:PORT), EMU_MD_ACCOUNT, EMU_MD_KEY,
 * EMU_TLS_CERT, EMU_TLS_KEY (PEM files), EMU_TENANT, EMU_CLIENT_ID,
 * EMU_CLIENT_SECRET, EMU_FEDERATED_TOKEN, EMU_IDENTITY_HEADER, EMU_POLLS, EMU_LOCATION_ONLY, EMU_RETRY_AFTER, EMU_PAGE_SIZE (list page size,
 * default 2), EMU_COMPLETION_STEP, EMU_SNAPSHOT_RATE_LIMIT (0: none), EMU_SNAPSHOT_RATE_WINDOW,
 * EMU_SMALL_UPLOADS, EMU_VMGS_BYTES, SNAPBACK_HARNESS_PARENT_PID (exit when that process is gone).
 */

const fs = require("fs");
const https = require("https");
const http = require("http");
const crypto = require("crypto");

const TAG = "arm-emulator";
const SAS_VERSION = "2020-12-06";
const STORAGE_VERSION = "2021-08-06";
const MAX_ACTIVE_SAS_PER_FAMILY = 5;
const VHD_FOOTER = 512;

function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === "") {
    if (fallback === undefined) {
      process.stderr.write(`${TAG}: FATAL: ${name} is not set\n`);
      process.exit(1);
    }
    return fallback;
  }
  return v;
}

const AZURITE = env("EMU_AZURITE");
const MD_ACCOUNT = env("EMU_MD_ACCOUNT", "md");
const MD_KEY = Buffer.from(env("EMU_MD_KEY"), "base64");
const TENANT = env("EMU_TENANT", "tenant");
const CLIENT_ID = env("EMU_CLIENT_ID", "client");
const CLIENT_SECRET = env("EMU_CLIENT_SECRET");
// Workload identity: the federated token (the contents of AZURE_FEDERATED_TOKEN_FILE) the
// token endpoint accepts as client_assertion; empty: not accepted.
const FEDERATED_TOKEN = env("EMU_FEDERATED_TOKEN", "");
// Managed identity, App Service protocol (IDENTITY_ENDPOINT + IDENTITY_HEADER): the secret
// header value the identity endpoint requires; empty: endpoint disabled.
const IDENTITY_HEADER = env("EMU_IDENTITY_HEADER", "");
const POLLS = Number(env("EMU_POLLS", "1"));
const RETRY_AFTER = Number(env("EMU_RETRY_AFTER", "0"));
const PAGE_SIZE = Number(env("EMU_PAGE_SIZE", "2"));
const LOCATION_ONLY = env("EMU_LOCATION_ONLY", "0") === "1";
const CONTAINER = "disks";
const COMPLETION_STEP = Number(env("EMU_COMPLETION_STEP", "50"));
const SNAPSHOT_RATE_LIMIT = Number(env("EMU_SNAPSHOT_RATE_LIMIT", "7"));
const SNAPSHOT_RATE_WINDOW_MS = Number(env("EMU_SNAPSHOT_RATE_WINDOW", "300")) * 1000;
const SMALL_UPLOADS = env("EMU_SMALL_UPLOADS", "0") === "1";
// Trusted Launch disks: the VM guest state (UEFI, vTPM) is a page blob of its own beside the
// disk's, `vmgs/<sub>/<rg>/<name>` (EMU_VMGS_BYTES long, default 4 MiB).
const VMGS_CONTAINER = "vmgs";
const VMGS_BYTES = Number(env("EMU_VMGS_BYTES", String(4 * 1024 * 1024)));
const MIB = 1024 * 1024;
// Azure's bounds of uploadSizeBytes: 20 MiB + 512 to 32 TiB + 512 (DiskRP CreationData).
const MIN_UPLOAD = 20 * MIB + VHD_FOOTER;
const MAX_UPLOAD = 32 * 1024 * 1024 * MIB + VHD_FOOTER;
// Disk types whose snapshots copy in the background (completionPercent).
const BACKGROUND_COPY_SKUS = ["PremiumV2_LRS", "UltraSSD_LRS"];
const TIERS = { Standard_LRS: "Standard", StandardSSD_LRS: "Standard", StandardSSD_ZRS: "Standard", Standard_ZRS: "Standard",
  Premium_LRS: "Premium", Premium_ZRS: "Premium", PremiumV2_LRS: "Premium", UltraSSD_LRS: "Ultra" };

// ------------------------------------------------------------- state -----

const tokens = new Set();
// Tokens for the managed-disk data plane (audience https://disk.azure.com/): accepted by
// /__md/ only, never by ARM (and ARM tokens never by /__md/).
const DISK_AUDIENCE = "https://disk.azure.com/";
const diskTokens = new Set();
let dataOperator = true; // the principal holds the Data Operator for Managed Disks role
// POST /__emulator/refuse-resized-diffs?on=1: every export goes through the checking data
// plane, which refuses a diff whose previous snapshot has another size than the snapshot
// listed (issue 17, item 3: a diff across a resize that the service refuses in a way
// nothing expects). Azure documents refusing only diffs across 4 TiB, and not its answer;
// this stands for an unexpected refusal, so it is opt-in and its code is the emulator's.
let refuseResizedDiffs = false;
// POST /__emulator/drop-guest-state?on=1: grants answer no securityDataAccessSAS even when
// asked for one (a service that fails to export a Trusted Launch disk's guest state).
let dropGuestState = false;
const exportsByContainer = new Map(); // export container -> snapshot or disk it exports
const disks = new Map(); // lower-case id -> disk
const snapshots = new Map(); // lower-case id -> snapshot
const operations = new Map(); // op id -> { remaining, done, result, error }
const snapshotTimes = new Map(); // lower-case disk id -> creation times (ms) of its snapshots
const faults = []; // { status, count, match, retryAfter, code }
// Requests by kind (reads: GETs of resources and lists; writes: PUT, POST, DELETE; polls:
// GETs of an operation's Azure-AsyncOperation or Location URL; token: the token endpoints).
const stats = { arm: 0, token: 0, unauthorized: 0, diskToken: 0, dataPlane: 0, dataPlaneRefused: 0, diffRefused: 0, reads: 0, writes: 0, polls: 0 };
// Every long-running operation: what started it, when, and when a poll first saw it end
// (ms since the epoch): how many a client waited for one after another is the longest chain
// of operations each started after the previous one ended (GET /__emulator/operations).
const operationLog = [];
let nextOperation = {}; // set by POST /__emulator/next-operation: { fail, message, host }
let base = ""; // https://127.0.0.1:PORT

function now() {
  return new Date().toISOString();
}

// ------------------------------------------------------- Azurite calls ---

function sign(stringToSign) {
  return crypto.createHmac("sha256", MD_KEY).update(stringToSign, "utf8").digest("base64");
}

function isoSeconds(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Account SAS (sv 2019-12-12 layout) for the emulator's own blob requests. */
function accountSas() {
  const sv = "2019-12-12";
  const se = isoSeconds(new Date(Date.now() + 3600 * 1000));
  const sig = sign([MD_ACCOUNT, "rwdlac", "b", "sco", "", se, "", "", sv, ""].join("\n"));
  return new URLSearchParams({ sv, ss: "b", srt: "sco", sp: "rwdlac", se, sig }).toString();
}

/** Service SAS on a blob (sr=b) or one of its snapshots (sr=bs); beginGetAccess hands sr=b ones. */
function blobSas(blob, snapshot, permissions, seconds, container = CONTAINER) {
  const sr = snapshot ? "bs" : "b";
  const se = isoSeconds(new Date(Date.now() + seconds * 1000));
  const toSign = [permissions, "", se, `/blob/${MD_ACCOUNT}/${container}/${blob}`, "", "", "",
    SAS_VERSION, sr, snapshot || "", "", "", "", "", "", ""].join("\n");
  const q = new URLSearchParams();
  if (snapshot) q.set("snapshot", snapshot);
  q.set("sv", SAS_VERSION);
  q.set("sr", sr);
  q.set("sp", permissions);
  q.set("se", se);
  q.set("sig", sign(toSign));
  return `${AZURITE}/${MD_ACCOUNT}/${container}/${blob}?${q.toString()}`;
}

function storage(method, path, query, headers) {
  const url = new URL(`${AZURITE}/${MD_ACCOUNT}/${path}?${query ? query + "&" : ""}${accountSas()}`);
  return new Promise((resolve, reject) => {
    // The User-Agent tells the emulator's own requests from its clients' in Azurite's
    // request log (/__harness/requests).
    const req = http.request(url, { method, headers: { "x-ms-version": STORAGE_VERSION, "content-length": 0, "user-agent": TAG, ...headers } }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        if (res.statusCode >= 300) {
          reject(new Error(`Azurite ${method} ${path}?${query}: ${res.statusCode} ${res.headers["x-ms-error-code"] || ""} ${body}`));
        } else resolve({ status: res.statusCode, headers: res.headers, body });
      });
    });
    req.on("error", reject);
    req.end();
  });
}

async function ensureContainer() {
  for (const c of [CONTAINER, VMGS_CONTAINER]) {
    try {
      await storage("PUT", c, "restype=container");
    } catch (err) {
      if (!/ContainerAlreadyExists/.test(err.message)) throw err;
    }
  }
}

/** Whether a disk or snapshot (its echoed properties) is Trusted Launch: it has a VM guest state blob. */
function trustedLaunch(r) {
  return ((r.echo || {}).securityProfile || {}).securityType === "TrustedLaunch";
}

/** createOption values that make a disk awaiting an upload. */
function isUpload(option) {
  return option === "Upload" || option === "UploadPreparedSecure";
}

// ----------------------------------------------------------- helpers -----

function send(res, status, body, headers = {}) {
  const text = body === undefined ? "" : JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

function armError(res, status, code, message, headers = {}) {
  send(res, status, { error: { code, message } }, { "x-ms-failure-cause": "gateway", ...headers });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function parseJson(text) {
  try {
    return text === "" ? {} : JSON.parse(text);
  } catch (err) {
    return undefined;
  }
}

/**
 * Starts a long-running operation; `finish` runs once the polls are used up. The answer's
 * headers, as DiskRP's recorded ones: Azure-AsyncOperation and Location (the same
 * operation with `monitor=true`); with EMU_LOCATION_ONLY=1 only Location (the other
 * pattern ARM services use).
 */
function startOperation(finish, label) {
  const id = crypto.randomUUID();
  operationLog.push({ id, label: label || "", started: Date.now(), ended: undefined });
  const twist = nextOperation;
  nextOperation = {};
  const run = twist.fail
    ? async () => {
      const err = new Error(`The operation failed (injected): ${twist.message || twist.fail}`);
      err.code = twist.fail;
      throw err;
    }
    : finish;
  operations.set(id, { id, remaining: POLLS, finish: run, done: false, result: undefined, error: undefined });
  // A polling URL on another origin (same port, host "localhost"): a client must not follow
  // it, since its bearer token would go there.
  const origin = twist.host ? base.replace("127.0.0.1", twist.host) : base;
  const headers = { "Retry-After": String(RETRY_AFTER) };
  if (!LOCATION_ONLY) headers["Azure-AsyncOperation"] = `${origin}/__operations/${id}?api-version=2024-03-02`;
  headers.Location = `${origin}/__operationResults/${id}?monitor=true&api-version=2024-03-02`;
  return headers;
}

async function advance(op) {
  if (op.done) return;
  if (op.remaining > 0) {
    op.remaining -= 1;
    return;
  }
  op.done = true;
  try {
    op.result = await op.finish();
  } catch (err) {
    op.error = { code: err.code || "InternalOperationError", message: err.message };
  }
}

// ------------------------------------------------------------ routes -----

const ID_RE = /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Compute\/(disks|snapshots)(?:\/([^/]+))?(?:\/(beginGetAccess|endGetAccess))?$/i;

function diskBlob(sub, rg, name) {
  return `${sub}/${rg}/${name}`.toLowerCase();
}

function skuView(name) {
  return { name, tier: TIERS[name] || "Standard" };
}

/**
 * A disk as DiskRP answers it. An Upload disk reports no size until its upload ended
 * (as recorded: `ReadyToUpload` with only creationData.uploadSizeBytes).
 */
function diskView(d) {
  const sized = !isUpload(d.createOption) || d.uploaded;
  return {
    name: d.name, id: d.id, type: "Microsoft.Compute/disks", location: d.location,
    sku: skuView(d.sku), zones: d.zone ? [d.zone] : undefined, tags: d.tags,
    properties: {
      ...d.echo,
      creationData: { createOption: d.createOption, uploadSizeBytes: d.uploadSizeBytes, logicalSectorSize: d.logicalSectorSize },
      diskSizeGB: sized ? Math.ceil(d.sizeBytes / 2 ** 30) : undefined,
      timeCreated: d.timeCreated, provisioningState: d.provisioningState, diskState: d.diskState,
      diskSizeBytes: sized ? d.sizeBytes : undefined, uniqueId: d.uniqueId,
      ...exportView(d),
    },
  };
}

/** The export settings as DiskRP reports them (recorded: networkAccessPolicy and publicNetworkAccess always). */
function exportView(r) {
  return {
    networkAccessPolicy: r.networkAccessPolicy, publicNetworkAccess: r.publicNetworkAccess,
    dataAccessAuthMode: r.dataAccessAuthMode, diskAccessId: r.diskAccessId,
  };
}

const EXPORT_VALUES = {
  dataAccessAuthMode: ["AzureActiveDirectory", "None"],
  networkAccessPolicy: ["AllowAll", "AllowPrivate", "DenyAll"],
  publicNetworkAccess: ["Enabled", "Disabled"],
};

/** Export settings from a PUT's properties (or a control request), checked as DiskRP does; a string is a problem. */
function exportSettings(props, current) {
  const out = {
    networkAccessPolicy: "AllowAll", publicNetworkAccess: "Enabled", dataAccessAuthMode: undefined, diskAccessId: undefined,
    ...(current || {}),
  };
  for (const [key, allowed] of Object.entries(EXPORT_VALUES)) {
    if (props[key] === undefined || props[key] === null || props[key] === "") continue;
    if (!allowed.includes(props[key])) return `${key} must be one of ${allowed.join(", ")}, got ${props[key]}`;
    out[key] = props[key];
  }
  if (props.diskAccessId) out.diskAccessId = props.diskAccessId;
  if (out.networkAccessPolicy === "AllowPrivate" && !out.diskAccessId) {
    return "networkAccessPolicy AllowPrivate needs a diskAccessId";
  }
  return out;
}

/** Whether an export of `r` goes through the emulator's checking data plane. */
function guardedExport(r) {
  return refuseResizedDiffs || r.dataAccessAuthMode === "AzureActiveDirectory" || r.networkAccessPolicy === "AllowPrivate" ||
    r.publicNetworkAccess === "Disabled";
}

/** A snapshot as DiskRP answers it; completionPercent only while or after a background copy. */
function snapshotView(s) {
  return {
    name: s.name, id: s.id, type: "Microsoft.Compute/snapshots", location: s.location, tags: s.tags,
    sku: skuView("Standard_LRS"),
    properties: {
      ...s.echo,
      creationData: {
        createOption: "Copy", sourceResourceId: s.sourceResourceId, sourceUniqueId: s.sourceUniqueId,
        logicalSectorSize: s.logicalSectorSize,
      },
      diskSizeGB: Math.ceil(s.sizeBytes / 2 ** 30), incremental: s.incremental, timeCreated: s.timeCreated,
      provisioningState: s.provisioningState, diskState: s.access ? "ActiveSAS" : "Unattached",
      diskSizeBytes: s.sizeBytes, uniqueId: s.uniqueId, completionPercent: s.completionPercent,
      ...exportView(s),
    },
  };
}

/** A GET of a snapshot still copying in the background moves its copy on. */
function advanceCopy(s) {
  if (s.completionPercent !== undefined && s.provisioningState === "Succeeded" && s.completionPercent < 100) {
    s.completionPercent = Math.min(100, s.completionPercent + COMPLETION_STEP);
  }
}

/** Azure's refusal of an upload size (400 BadRequest; the MiB message as Azure words it). */
function uploadSizeProblem(upload) {
  if (!Number.isSafeInteger(upload) || upload % VHD_FOOTER !== 0 || upload < 2 * VHD_FOOTER) {
    return `uploadSizeBytes must be a multiple of 512 and at least 1024 (disk size + 512-byte VHD footer), got ${upload}`;
  }
  if (SMALL_UPLOADS) return undefined;
  if (upload < MIN_UPLOAD || upload > MAX_UPLOAD) {
    return `The upload size in bytes ${upload} must be between ${MIN_UPLOAD} (20 MiB + 512 bytes for the VHD footer) and ${MAX_UPLOAD} (32 TiB + 512 bytes for the VHD footer).`;
  }
  if ((upload - VHD_FOOTER) % MIB !== 0) {
    return `The upload size in bytes ${upload} - 512 bytes for the VHD footer (${upload - VHD_FOOTER} in this case) must be a multiple of MiB.`;
  }
  return undefined;
}

/** The disk properties the emulator keeps as given (and copies to snapshots). */
const ECHOED = ["osType", "hyperVGeneration", "supportedCapabilities", "securityProfile", "encryption", "tier"];

/** DiskRP's refusals of those properties, as its documentation states the rules. */
function propertyProblem(props, sku, sector) {
  if (props.osType !== undefined && !["Windows", "Linux"].includes(props.osType)) return `osType must be Windows or Linux, got ${props.osType}`;
  if (props.hyperVGeneration !== undefined && !["V1", "V2"].includes(props.hyperVGeneration)) return `hyperVGeneration must be V1 or V2, got ${props.hyperVGeneration}`;
  const security = (props.securityProfile || {}).securityType;
  // Absent is accepted: Disk_Create_FromUploadPreparedSecure.json sends none.
  if (security !== undefined && props.hyperVGeneration === "V1") return `securityType ${security} requires hyperVGeneration V2.`;
  const enc = props.encryption || {};
  if (/CustomerKey/.test(enc.type || "") && !enc.diskEncryptionSetId) return `encryption type ${enc.type} requires a diskEncryptionSetId.`;
  if (sector === 4096 && !BACKGROUND_COPY_SKUS.includes(sku)) return `logicalSectorSize 4096 is supported for ${BACKGROUND_COPY_SKUS.join(" and ")} disks only.`;
  return undefined;
}

function familyActiveSas(diskId) {
  let n = 0;
  for (const s of snapshots.values()) if (s.access && s.sourceResourceId.toLowerCase() === diskId.toLowerCase()) n += 1;
  return n;
}

async function putDisk(req, res, id, m, body) {
  const key = id.toLowerCase();
  const props = body.properties || {};
  const creation = props.creationData || {};
  if (disks.has(key)) {
    return armError(res, 409, "Conflict", `Disk ${id} already exists; the emulator does not update disks.`);
  }
  const option = creation.createOption;
  if (!isUpload(option) && option !== "Empty") {
    return armError(res, 400, "InvalidParameter", "The emulator creates disks with createOption Upload, UploadPreparedSecure or Empty only.");
  }
  // An upload with its VM guest state needs the security type that has one (the answer
  // Azure gives without it is not recorded; code and message are the emulator's).
  if (option === "UploadPreparedSecure" && !((props.securityProfile || {}).securityType)) {
    return armError(res, 400, "InvalidParameter", "createOption UploadPreparedSecure requires securityProfile.securityType (TrustedLaunch or a ConfidentialVM type).");
  }
  const sector = creation.logicalSectorSize === undefined ? undefined : Number(creation.logicalSectorSize);
  if (sector !== undefined && sector !== 512 && sector !== 4096) {
    return armError(res, 400, "InvalidParameter", `logicalSectorSize must be 512 or 4096, got ${creation.logicalSectorSize}`);
  }
  const skuName = (body.sku && body.sku.name) || "Standard_LRS";
  const problem = propertyProblem(props, skuName, sector);
  if (problem) return armError(res, 400, "InvalidParameter", problem);
  const echo = {};
  for (const k of ECHOED) if (props[k] !== undefined) echo[k] = props[k];
  let upload;
  let sizeBytes;
  if (isUpload(option)) {
    upload = Number(creation.uploadSizeBytes);
    const problem = uploadSizeProblem(upload);
    if (problem) return armError(res, 400, "BadRequest", problem);
    if (sector === 4096) {
      return armError(res, 400, "InvalidParameter", "An upload is a VHD: its disk takes logicalSectorSize 512 only.");
    }
    sizeBytes = upload - VHD_FOOTER;
  } else {
    const gb = Number(props.diskSizeGB);
    if (!Number.isSafeInteger(gb) || gb < 1) {
      return armError(res, 400, "InvalidParameter", `diskSizeGB must be a positive integer, got ${props.diskSizeGB}`);
    }
    sizeBytes = gb * 2 ** 30;
  }
  if (typeof body.location !== "string" || body.location === "") {
    return armError(res, 400, "LocationRequired", "The location property is required for this definition.");
  }
  const exportOf = exportSettings(props);
  if (typeof exportOf === "string") return armError(res, 400, "InvalidParameter", exportOf);
  const blob = diskBlob(m[1], m[2], m[4]);
  const disk = {
    ...exportOf,
    id, name: m[4], location: body.location, sku: skuName,
    zone: Array.isArray(body.zones) ? body.zones[0] : undefined, tags: body.tags || {},
    createOption: option, uploadSizeBytes: upload, sizeBytes, blob, echo,
    // Premium SSD v2 / Ultra report their sector size: 4096 unless asked otherwise; an
    // upload is a VHD of 512-byte sectors.
    logicalSectorSize: sector !== undefined ? sector
      : !BACKGROUND_COPY_SKUS.includes(skuName) ? undefined : isUpload(option) ? 512 : 4096,
    uniqueId: crypto.randomUUID(), provisioningState: "Updating",
    diskState: isUpload(option) ? "ReadyToUpload" : "Unattached", uploaded: false,
    timeCreated: now(), access: undefined,
  };
  disks.set(key, disk);
  const headers = startOperation(async () => {
    await storage("PUT", `${CONTAINER}/${blob}`, "", { "x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": String(sizeBytes + VHD_FOOTER) });
    if (trustedLaunch(disk)) {
      // Its VM guest state: blank, as a new VM's before first boot (tests write it through
      // GET /__emulator/disk-sas?part=vmgs; an upload through securityDataAccessSAS).
      await storage("PUT", `${VMGS_CONTAINER}/${blob}`, "", { "x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": String(VMGS_BYTES) });
      disk.vmgs = true;
    }
    disk.provisioningState = "Succeeded";
    return diskView(disk);
  }, `PUT ${id}`);
  send(res, 202, diskView(disk), headers);
}

async function putSnapshot(req, res, id, m, body) {
  const key = id.toLowerCase();
  const props = body.properties || {};
  const creation = props.creationData || {};
  const existing = snapshots.get(key);
  if (existing) {
    // ARM PUT is idempotent by name: the same definition answers the existing resource.
    if (String(creation.sourceResourceId).toLowerCase() !== existing.sourceResourceId.toLowerCase()) {
      return armError(res, 409, "PropertyChangeNotAllowed", `Changing property 'sourceResourceId' of snapshot ${id} is not allowed.`);
    }
    existing.tags = body.tags || existing.tags;
    return send(res, 200, snapshotView(existing));
  }
  if (creation.createOption !== "Copy" || typeof creation.sourceResourceId !== "string") {
    return armError(res, 400, "InvalidParameter", "createOption must be Copy with a sourceResourceId.");
  }
  if (props.incremental !== true) {
    return armError(res, 400, "InvalidParameter", "The emulator makes incremental snapshots only.");
  }
  const disk = disks.get(creation.sourceResourceId.toLowerCase());
  if (!disk || disk.provisioningState !== "Succeeded") {
    return armError(res, 404, "ResourceNotFound", `The Resource '${creation.sourceResourceId}' was not found.`);
  }
  if (disk.diskState === "ReadyToUpload" || disk.diskState === "ActiveUpload") {
    return armError(res, 409, "OperationNotAllowed", `Disk ${disk.id} is being uploaded; it cannot be snapshotted.`);
  }
  // Azure: at most 7 incremental snapshots of a disk per 5 minutes.
  const diskKey = disk.id.toLowerCase();
  const recent = (snapshotTimes.get(diskKey) || []).filter((t) => Date.now() - t < SNAPSHOT_RATE_WINDOW_MS);
  if (SNAPSHOT_RATE_LIMIT > 0 && recent.length >= SNAPSHOT_RATE_LIMIT) {
    snapshotTimes.set(diskKey, recent);
    return armError(res, 409, "OperationNotAllowed",
      `Disk ${disk.id} has had ${recent.length} snapshots created in the last ${SNAPSHOT_RATE_WINDOW_MS / 1000} seconds; at most ${SNAPSHOT_RATE_LIMIT} are allowed in that time. Retry later.`);
  }
  // The snapshot's own export settings: the PUT's, else DiskRP's defaults (whether Azure
  // copies the disk's is not documented; snapback sends the restrictive ones itself).
  const exportOf = exportSettings(props);
  if (typeof exportOf === "string") return armError(res, 400, "InvalidParameter", exportOf);
  // Premium SSD v2 / Ultra: "up to three total snapshots pending" while a background copy runs.
  const pending = [...snapshots.values()].filter((s) => s.sourceResourceId.toLowerCase() === diskKey &&
    s.completionPercent !== undefined && s.completionPercent < 100).length;
  if (BACKGROUND_COPY_SKUS.includes(disk.sku) && pending >= 3) {
    return armError(res, 409, "OperationNotAllowed",
      `Disk ${disk.id} has ${pending} snapshots whose background copy is still in progress; at most 3 may be pending.`);
  }
  snapshotTimes.set(diskKey, [...recent, Date.now()]);
  // The blob snapshot is taken now, when the PUT is accepted: the point in time is the PUT's.
  const snap = await storage("PUT", `${CONTAINER}/${disk.blob}`, "comp=snapshot");
  // The guest state is captured at the same instant (a snapshot of a Trusted Launch disk).
  const vmgsSnapshot = disk.vmgs
    ? (await storage("PUT", `${VMGS_CONTAINER}/${disk.blob}`, "comp=snapshot")).headers["x-ms-snapshot"]
    : undefined;
  const background = BACKGROUND_COPY_SKUS.includes(disk.sku);
  const snapshot = {
    ...exportOf,
    id, name: m[4], location: body.location || disk.location, tags: body.tags || {},
    sourceResourceId: disk.id, sourceUniqueId: disk.uniqueId, incremental: true,
    sizeBytes: disk.sizeBytes, logicalSectorSize: disk.logicalSectorSize, blob: disk.blob,
    echo: Object.fromEntries(Object.entries(disk.echo).filter(([k]) => k !== "tier")), // a snapshot has no tier
    blobSnapshot: snap.headers["x-ms-snapshot"], vmgsSnapshot, provisioningState: "Updating",
    completionPercent: background ? 0 : undefined, uniqueId: crypto.randomUUID(),
    timeCreated: now(), access: undefined, exportContainer: undefined,
  };
  snapshots.set(key, snapshot);
  const headers = startOperation(async () => {
    snapshot.provisioningState = "Succeeded";
    return snapshotView(snapshot);
  }, `PUT ${id}`);
  send(res, 202, snapshotView(snapshot), headers);
}

function listSnapshots(req, res, url, m) {
  const prefix = `/subscriptions/${m[1]}/resourceGroups/${m[2]}/`.toLowerCase();
  const all = [...snapshots.values()].filter((s) => s.id.toLowerCase().startsWith(prefix))
    .sort((a, b) => a.name.localeCompare(b.name));
  const skip = Number(url.searchParams.get("$skiptoken") || "0");
  const page = all.slice(skip, skip + PAGE_SIZE).map(snapshotView);
  const out = { value: page };
  if (skip + PAGE_SIZE < all.length) {
    const next = new URL(url.toString());
    next.searchParams.set("$skiptoken", String(skip + PAGE_SIZE));
    out.nextLink = `${base}${next.pathname}${next.search}`;
  }
  send(res, 200, out);
}

function beginGetAccess(req, res, kind, resource, body) {
  const access = body.access;
  const seconds = Number(body.durationInSeconds);
  if (!["Read", "Write"].includes(access) || !Number.isInteger(seconds) || seconds < 1) {
    return armError(res, 400, "InvalidParameter", "access must be Read or Write and durationInSeconds a positive integer.");
  }
  if (access === "Read" && resource.networkAccessPolicy === "DenyAll") {
    return armError(res, 409, "OperationNotAllowed",
      `${kind === "disks" ? "Disk" : "Snapshot"} ${resource.id} has networkAccessPolicy DenyAll: it cannot be exported.`);
  }
  if (kind === "snapshots") {
    if (access !== "Read") return armError(res, 400, "InvalidParameter", "A snapshot can only be exported (Read).");
    if (resource.completionPercent !== undefined && resource.completionPercent < 100) {
      return armError(res, 409, "OperationNotAllowed",
        `Snapshot ${resource.id} is still being copied in the background (completionPercent ${resource.completionPercent}); it can be exported once that reaches 100.`);
    }
    if (!resource.access && familyActiveSas(resource.sourceResourceId) >= MAX_ACTIVE_SAS_PER_FAMILY) {
      return armError(res, 409, "OperationNotAllowed",
        `At most ${MAX_ACTIVE_SAS_PER_FAMILY} snapshots of the snapshot family of ${resource.sourceResourceId} can have an active SAS at once; end access to one first.`);
    }
  } else if (access === "Write") {
    if (resource.diskState !== "ReadyToUpload" && resource.diskState !== "ActiveUpload") {
      return armError(res, 409, "OperationNotAllowed", `Disk ${resource.id} is not ready to upload (state ${resource.diskState}).`);
    }
  } else if (resource.diskState === "ReadyToUpload" || resource.diskState === "ActiveUpload") {
    return armError(res, 409, "OperationNotAllowed", `Disk ${resource.id} is being uploaded; it cannot be exported.`);
  }
  resource.access = access; // counts against the family limit from the moment it is accepted
  if (kind === "disks") resource.diskState = access === "Write" ? "ActiveUpload" : "ActiveSAS";
  // getSecureVMGuestStateSAS: the guest state's SAS too (securityDataAccessSAS), only for a
  // resource that has one; without the flag the answer has no such field.
  const guest = !dropGuestState && body.getSecureVMGuestStateSAS === true &&
    (kind === "disks" ? resource.vmgs : resource.vmgsSnapshot !== undefined);
  const headers = startOperation(async () => {
    if (kind === "disks") {
      const perm = access === "Write" ? "rw" : "r";
      const out = { accessSAS: blobSas(resource.blob, undefined, perm, seconds) };
      if (guest) out.securityDataAccessSAS = blobSas(resource.blob, undefined, perm, seconds, VMGS_CONTAINER);
      return out;
    }
    // A snapshot is exported as a blob of its own (`<container>/abcd`, sr=b), as Azure does.
    if (!resource.exportContainer) {
      const container = `x${crypto.randomBytes(6).toString("hex")}`;
      await storage("PUT", container, "restype=container");
      const source = `${AZURITE}/${MD_ACCOUNT}/${CONTAINER}/${resource.blob}?snapshot=${encodeURIComponent(resource.blobSnapshot)}&${accountSas()}`;
      await storage("PUT", `${container}/abcd`, "", { "x-ms-copy-source": source, "x-ms-meta-snapbackexportof": resource.blob });
      resource.exportContainer = container;
    }
    // Its guest state: a page blob `<guid>_vmgs` in the same export container, as in
    // Disk_BeginGetAccess_WithVMGuestState.json.
    if (guest && !resource.exportVmgs) {
      const name = `${crypto.randomUUID()}_vmgs`;
      const source = `${AZURITE}/${MD_ACCOUNT}/${VMGS_CONTAINER}/${resource.blob}?snapshot=${encodeURIComponent(resource.vmgsSnapshot)}&${accountSas()}`;
      await storage("PUT", `${resource.exportContainer}/${name}`, "", { "x-ms-copy-source": source });
      resource.exportVmgs = name;
    }
    exportsByContainer.set(resource.exportContainer, resource);
    // Guarded exports are served (and checked) by this emulator's /__md/ data plane.
    const host = (sas) => guardedExport(resource) ? sas.replace(`${AZURITE}/${MD_ACCOUNT}/`, `${base}/__md/`) : sas;
    const out = { accessSAS: host(blobSas("abcd", undefined, "r", seconds, resource.exportContainer)) };
    if (guest) out.securityDataAccessSAS = host(blobSas(resource.exportVmgs, undefined, "r", seconds, resource.exportContainer));
    return out;
  }, `beginGetAccess ${resource.id}`);
  send(res, 202, undefined, headers);
}

function endGetAccess(req, res, kind, resource) {
  const headers = startOperation(async () => {
    if (kind === "disks" && resource.access === "Write") resource.uploaded = true;
    resource.access = undefined;
    // After an upload or an export the disk is an ordinary, unattached disk again.
    if (kind === "disks") resource.diskState = "Unattached";
    if (resource.exportContainer) {
      const container = resource.exportContainer;
      exportsByContainer.delete(container);
      resource.exportContainer = undefined;
      resource.exportVmgs = undefined;
      await storage("DELETE", container, "restype=container");
    }
    return undefined;
  }, `endGetAccess ${resource.id}`);
  send(res, 202, undefined, headers);
}

function deleteResource(req, res, kind, id, resource) {
  if (!resource) return send(res, 204); // DELETE of a missing resource succeeds, as in ARM
  if (resource.access) {
    return armError(res, 409, "OperationNotAllowed", `${kind === "disks" ? "Disk" : "Snapshot"} ${id} has an active SAS; end access first.`);
  }
  const headers = startOperation(async () => {
    if (kind === "snapshots") {
      await storage("DELETE", `${CONTAINER}/${resource.blob}`, `snapshot=${encodeURIComponent(resource.blobSnapshot)}`);
      if (resource.vmgsSnapshot) {
        await storage("DELETE", `${VMGS_CONTAINER}/${resource.blob}`, `snapshot=${encodeURIComponent(resource.vmgsSnapshot)}`);
      }
      snapshots.delete(id.toLowerCase());
    } else {
      if ([...snapshots.values()].some((s) => s.sourceResourceId.toLowerCase() === id.toLowerCase())) {
        // Azure keeps incremental snapshots of a deleted disk; the emulator keeps the blob for them.
        disks.delete(id.toLowerCase());
      } else {
        await storage("DELETE", `${CONTAINER}/${resource.blob}`, "", { "x-ms-delete-snapshots": "include" });
        if (resource.vmgs) await storage("DELETE", `${VMGS_CONTAINER}/${resource.blob}`, "", { "x-ms-delete-snapshots": "include" });
        disks.delete(id.toLowerCase());
      }
    }
    return undefined;
  }, `DELETE ${id}`);
  send(res, 202, undefined, headers);
}

async function handleArm(req, res, url) {
  stats.arm += 1;
  const auth = req.headers.authorization || "";
  const m0 = /^Bearer (.+)$/.exec(auth);
  if (!m0 || !tokens.has(m0[1])) {
    stats.unauthorized += 1;
    return armError(res, 401, m0 ? "InvalidAuthenticationToken" : "AuthenticationFailed",
      m0 ? "The access token is invalid." : "Authentication failed. The 'Authorization' header is missing.",
      { "WWW-Authenticate": `Bearer authorization_uri="${base}/${TENANT}", error="invalid_token"` });
  }
  if (!url.searchParams.get("api-version")) {
    return armError(res, 400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.");
  }
  const fault = takeFault(req);
  if (fault) {
    const headers = fault.retryAfter !== undefined ? { "Retry-After": String(fault.retryAfter) } : {};
    return armError(res, fault.status, fault.code || (fault.status === 429 ? "TooManyRequests" : "InternalServerError"),
      fault.message || "Injected fault.", headers);
  }
  if (url.pathname.startsWith("/__operations/") || url.pathname.startsWith("/__operationResults/")) {
    const isResult = url.pathname.startsWith("/__operationResults/");
    const op = operations.get(url.pathname.split("/")[2]);
    if (!op) return armError(res, 404, "NotFound", "No such operation.");
    stats.polls += 1;
    await advance(op);
    if (op.done) {
      const logged = operationLog.find((o) => o.id === op.id);
      if (logged && logged.ended === undefined) logged.ended = Date.now();
    }
    const status = !op.done ? "InProgress" : op.error ? "Failed" : "Succeeded";
    if (isResult) {
      if (!op.done) return send(res, 202, undefined, { Location: `${base}${url.pathname}${url.search}`, "Retry-After": String(RETRY_AFTER) });
      if (op.error) return armError(res, 409, op.error.code, op.error.message);
      // No result: 200 with an empty body (Content-Length: 0), as recorded.
      return send(res, 200, op.result);
    }
    const body = { name: url.pathname.split("/")[2], status, startTime: now() };
    if (op.done) body.endTime = now();
    if (op.error) body.error = op.error;
    if (op.done && op.result !== undefined) body.properties = { output: op.result };
    return send(res, 200, body, op.done ? {} : { "Retry-After": String(RETRY_AFTER) });
  }
  if (req.method === "GET") stats.reads += 1;
  else stats.writes += 1;
  const m = ID_RE.exec(url.pathname);
  if (!m) return armError(res, 404, "InvalidResourceType", `The emulator has no route for ${req.method} ${url.pathname}`);
  const kind = m[3].toLowerCase();
  const id = `/subscriptions/${m[1]}/resourceGroups/${m[2]}/providers/Microsoft.Compute/${kind}${m[4] ? "/" + m[4] : ""}`;
  const table = kind === "disks" ? disks : snapshots;
  const text = await readBody(req);
  const body = parseJson(text);
  if (body === undefined) return armError(res, 400, "InvalidRequestContent", "The request content is not valid JSON.");
  if (!m[4]) {
    if (req.method === "GET" && kind === "snapshots") return listSnapshots(req, res, url, m);
    return armError(res, 405, "MethodNotAllowed", "Only listing snapshots of a resource group is emulated.");
  }
  const resource = table.get(id.toLowerCase());
  if (m[5]) {
    if (req.method !== "POST") return armError(res, 405, "MethodNotAllowed", `${m[5]} takes POST.`);
    if (!resource) return armError(res, 404, "ResourceNotFound", `The Resource '${id}' was not found.`);
    return m[5].toLowerCase() === "begingetaccess" ? beginGetAccess(req, res, kind, resource, body) : endGetAccess(req, res, kind, resource);
  }
  switch (req.method) {
    case "GET":
      if (!resource) return armError(res, 404, "ResourceNotFound", `The Resource '${id}' under resource group '${m[2]}' was not found.`);
      if (kind === "snapshots") advanceCopy(resource);
      return send(res, 200, kind === "disks" ? diskView(resource) : snapshotView(resource));
    case "PUT":
      return kind === "disks" ? putDisk(req, res, id, m, body) : putSnapshot(req, res, id, m, body);
    case "DELETE":
      return deleteResource(req, res, kind, id, resource);
    default:
      return armError(res, 405, "MethodNotAllowed", `${req.method} is not emulated.`);
  }
}

async function handleToken(req, res, url) {
  stats.token += 1;
  const form = new URLSearchParams(await readBody(req));
  if (url.pathname !== `/${TENANT}/oauth2/v2.0/token`) {
    return send(res, 400, { error: "invalid_request", error_description: `AADSTS90002: Tenant not found (${url.pathname}).` });
  }
  const bySecret = form.get("client_secret") === CLIENT_SECRET;
  const assertion = form.get("client_assertion");
  const byAssertion = FEDERATED_TOKEN !== "" && assertion === FEDERATED_TOKEN &&
    form.get("client_assertion_type") === "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
  if (form.get("grant_type") !== "client_credentials" || form.get("client_id") !== CLIENT_ID || !(bySecret || byAssertion)) {
    return send(res, 401, { error: "invalid_client", error_description: "AADSTS7000215: Invalid client secret provided." });
  }
  const scope = form.get("scope");
  // The managed-disk audience with its trailing slash, as the service compares it.
  if (scope === `${DISK_AUDIENCE}/.default`) {
    stats.diskToken += 1;
    const token = `emu-disk-${crypto.randomBytes(24).toString("hex")}`;
    diskTokens.add(token);
    return send(res, 200, { token_type: "Bearer", expires_in: 3600, ext_expires_in: 3600, access_token: token });
  }
  if (scope !== `${base}/.default`) {
    return send(res, 400, { error: "invalid_scope", error_description: `AADSTS70011: scope ${scope} is not ${base}/.default or ${DISK_AUDIENCE}/.default` });
  }
  const token = `emu-${crypto.randomBytes(24).toString("hex")}`;
  tokens.add(token);
  send(res, 200, { token_type: "Bearer", expires_in: 3600, ext_expires_in: 3600, access_token: token });
}

/**
 * Managed identity endpoint (App Service protocol, what azure_identity's
 * ManagedIdentityCredential uses when IDENTITY_ENDPOINT and IDENTITY_HEADER are set):
 * GET /msi/token?api-version=2019-08-01&resource=R[&client_id=C] with x-identity-header.
 */
function handleIdentity(req, res, url) {
  stats.token += 1;
  if (IDENTITY_HEADER === "" || req.headers["x-identity-header"] !== IDENTITY_HEADER) {
    return send(res, 401, { error: "invalid_request", error_description: "x-identity-header is missing or wrong" });
  }
  const q = url.searchParams;
  const disk = q.get("resource") === DISK_AUDIENCE;
  if (q.get("api-version") !== "2019-08-01" || (q.get("resource") !== base && !disk)) {
    return send(res, 400, { error: "invalid_resource", error_description: `resource ${q.get("resource")} is not ${base}` });
  }
  if (q.has("client_id") && q.get("client_id") !== CLIENT_ID) {
    return send(res, 400, { error: "invalid_request", error_description: "Identity not found" });
  }
  const token = `emu-mi-${crypto.randomBytes(24).toString("hex")}`;
  (disk ? diskTokens : tokens).add(token);
  send(res, 200, {
    access_token: token, token_type: "Bearer", resource: base,
    expires_on: String(Math.floor(Date.now() / 1000) + 3600),
  });
}

// ---------------------------------------------------------- control ------

function takeFault(req) {
  const index = faults.findIndex((f) => req.url.includes(f.match) && (!f.method || f.method === req.method));
  if (index < 0) return undefined;
  const fault = faults[index];
  fault.count -= 1;
  if (fault.count <= 0) faults.splice(index, 1);
  return fault;
}

async function handleControl(req, res, url) {
  const q = url.searchParams;
  if (url.pathname === "/__emulator/faults" && req.method === "POST") {
    const status = Number(q.get("status"));
    const count = Number(q.get("count") || "1");
    if (!(status >= 400 && status <= 599) || !(count >= 1)) return send(res, 400, { error: "status 400..599, count >= 1" });
    const fault = {
      status, count, match: q.get("match") || "", method: (q.get("method") || "").toUpperCase(),
      code: q.get("code") || undefined, message: q.get("message") || undefined,
    };
    if (q.has("retry_after")) fault.retryAfter = Number(q.get("retry_after"));
    faults.push(fault);
    return send(res, 200, { faults });
  }
  if (url.pathname === "/__emulator/next-operation" && req.method === "POST") {
    nextOperation = { fail: q.get("fail") || undefined, message: q.get("message") || undefined, host: q.get("host") || undefined };
    return send(res, 200, { nextOperation });
  }
  if (url.pathname === "/__emulator/state" && req.method === "GET") {
    return send(res, 200, {
      disks: [...disks.values()].map(diskView),
      snapshots: [...snapshots.values()].map(snapshotView),
      activeAccess: [...disks.values(), ...snapshots.values()].filter((r) => r.access).map((r) => r.id),
    });
  }
  if (url.pathname === "/__emulator/stats" && req.method === "GET") return send(res, 200, stats);
  if (url.pathname === "/__emulator/disk-export" && req.method === "POST") {
    // The operator changes a disk's export settings (Azure: PATCH of the disk, `az disk update`).
    const disk = disks.get(String(q.get("id")).toLowerCase());
    if (!disk) return send(res, 404, { error: `no disk ${q.get("id")}` });
    const props = {};
    for (const key of [...Object.keys(EXPORT_VALUES), "diskAccessId"]) if (q.has(key)) props[key] = q.get(key);
    const out = exportSettings(props, exportView(disk));
    if (typeof out === "string") return send(res, 400, { error: out });
    Object.assign(disk, out);
    return send(res, 200, diskView(disk));
  }
  if (url.pathname === "/__emulator/refuse-resized-diffs" && req.method === "POST") {
    refuseResizedDiffs = q.get("on") !== "0";
    return send(res, 200, { refuseResizedDiffs });
  }
  if (url.pathname === "/__emulator/drop-guest-state" && req.method === "POST") {
    dropGuestState = q.get("on") !== "0";
    return send(res, 200, { dropGuestState });
  }
  if (url.pathname === "/__emulator/roles" && req.method === "POST") {
    dataOperator = q.get("data_operator") !== "0";
    return send(res, 200, { dataOperator });
  }
  if (url.pathname === "/__emulator/operations" && req.method === "GET") return send(res, 200, { operations: operationLog });
  if (url.pathname === "/__emulator/disk-sas" && req.method === "GET") {
    const disk = disks.get(String(q.get("id")).toLowerCase());
    if (!disk) return send(res, 404, { error: `no disk ${q.get("id")}` });
    // part=vmgs: the VM guest state blob of a Trusted Launch disk (the guest changing its
    // vTPM or UEFI state).
    if (q.get("part") === "vmgs") {
      if (!disk.vmgs) return send(res, 404, { error: `disk ${q.get("id")} has no VM guest state` });
      return send(res, 200, { url: blobSas(disk.blob, undefined, "rw", 3600, VMGS_CONTAINER) });
    }
    return send(res, 200, { url: blobSas(disk.blob, undefined, "rw", 3600) });
  }
  if (url.pathname === "/__emulator/resize" && req.method === "POST") {
    // The operator grows the disk (Azure: PATCH diskSizeGB on a deallocated VM's disk);
    // the exported blob stays disk size + the VHD footer.
    const disk = disks.get(String(q.get("id")).toLowerCase());
    const bytes = Number(q.get("bytes"));
    if (!disk) return send(res, 404, { error: `no disk ${q.get("id")}` });
    if (!Number.isSafeInteger(bytes) || bytes <= disk.sizeBytes || bytes % VHD_FOOTER !== 0) {
      return send(res, 400, { error: `bytes must grow the disk (now ${disk.sizeBytes}) in 512-byte steps` });
    }
    // Through a service SAS: Azurite answers 500 to a resize signed with an account SAS.
    const status = await new Promise((resolve, reject) => {
      const target = new URL(`${blobSas(disk.blob, undefined, "rw", 60)}&comp=properties`);
      const r = http.request(target, { method: "PUT", headers: { "x-ms-version": STORAGE_VERSION, "content-length": 0, "user-agent": TAG, "x-ms-blob-content-length": String(bytes + VHD_FOOTER) } }, (out) => {
        out.resume();
        out.on("end", () => resolve(out.statusCode));
      });
      r.on("error", reject);
      r.end();
    });
    if (status >= 300) return send(res, 500, { error: `Azurite resize: ${status}` });
    disk.sizeBytes = bytes;
    return send(res, 200, diskView(disk));
  }
  return send(res, 404, { error: `unknown control route ${req.method} ${url.pathname}` });
}

// ------------------------------------------------------- data plane -----

function storageError(res, status, code, message) {
  const body = `<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code><Message>${message}</Message></Error>`;
  stats.dataPlaneRefused += 1;
  res.writeHead(status, { "Content-Type": "application/xml", "Content-Length": Buffer.byteLength(body), "x-ms-error-code": code });
  res.end(body);
}

/**
 * /__md/<container>/<blob>?<SAS>: the export host of guarded exports. Checks what Azure
 * documents for the resource's settings, then forwards the request to Azurite (without the
 * bearer token; a previous-snapshot URL of this data plane rewritten to Azurite's).
 */
function handleDataPlane(req, res, url) {
  stats.dataPlane += 1;
  const rest = url.pathname.slice("/__md/".length);
  const resource = exportsByContainer.get(rest.split("/")[0]);
  if (!resource) return storageError(res, 404, "ResourceNotFound", "The specified resource does not exist.");
  if (resource.networkAccessPolicy === "AllowPrivate" || resource.publicNetworkAccess === "Disabled") {
    return storageError(res, 403, "AuthorizationFailure", "This request is not authorized to perform this operation.");
  }
  if (resource.dataAccessAuthMode === "AzureActiveDirectory") {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization || "");
    if (!m) return storageError(res, 401, "NoAuthenticationInformation", "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.");
    if (!((req.headers["x-ms-version"] || "") >= "2017-11-09")) {
      return storageError(res, 400, "InvalidHeaderValue", "Bearer tokens need x-ms-version 2017-11-09 or later.");
    }
    if (!diskTokens.has(m[1])) return storageError(res, 401, "InvalidAuthenticationInfo", `The token's audience is not ${DISK_AUDIENCE}.`);
    if (!dataOperator) {
      return storageError(res, 403, "AuthorizationPermissionMismatch", "This request is not authorized to perform this operation using this permission.");
    }
  }
  const headers = { ...req.headers };
  delete headers.authorization;
  delete headers.host;
  const prev = headers["x-ms-previous-snapshot-url"];
  if (prev && refuseResizedDiffs) {
    // The previous snapshot's export, by its container (this data plane's or Azurite's URL).
    const m = /\/(?:__md|[^/]+)\/([^/?]+)\/[^/?]+\?/.exec(prev.replace(/^https?:\/\/[^/]+/, ""));
    const before = m && exportsByContainer.get(m[1]);
    if (before && before.sizeBytes !== resource.sizeBytes) {
      stats.diffRefused += 1;
      return storageError(res, 400, "InvalidHeaderValue",
        `The emulator refuses a diff across a resize (${before.sizeBytes} to ${resource.sizeBytes} bytes).`);
    }
  }
  if (prev) headers["x-ms-previous-snapshot-url"] = prev.replace(`${base}/__md/`, `${AZURITE}/${MD_ACCOUNT}/`);
  const target = new URL(`${AZURITE}/${MD_ACCOUNT}/${rest}${url.search}`);
  const upstream = http.request(target, { method: req.method, headers }, (out) => {
    res.writeHead(out.statusCode, out.headers);
    out.pipe(res);
  });
  upstream.on("error", (err) => storageError(res, 502, "EmulatorUpstream", String(err.message)));
  req.pipe(upstream);
}

// ------------------------------------------------------------- main ------

function watchParent() {
  const raw = process.env.SNAPBACK_HARNESS_PARENT_PID;
  if (!raw) return;
  const pid = Number(raw);
  setInterval(() => {
    try {
      process.kill(pid, 0);
    } catch (err) {
      if (err.code === "EPERM") return;
      process.exit(0);
    }
  }, 500).unref();
}

async function main() {
  await ensureContainer();
  const server = https.createServer({ cert: fs.readFileSync(env("EMU_TLS_CERT")), key: fs.readFileSync(env("EMU_TLS_KEY")) }, (req, res) => {
    const url = new URL(req.url, base);
    let handler;
    if (url.pathname.startsWith("/__emulator/")) handler = async () => handleControl(req, res, url);
    else if (url.pathname.startsWith("/__md/")) handler = async () => handleDataPlane(req, res, url);
    else if (url.pathname.endsWith("/oauth2/v2.0/token") && req.method === "POST") handler = () => handleToken(req, res, url);
    else if (url.pathname === "/msi/token" && req.method === "GET") handler = async () => handleIdentity(req, res, url);
    else handler = () => handleArm(req, res, url);
    handler().catch((err) => {
      process.stderr.write(`${TAG}: ${req.method} ${url.pathname}: ${err.stack || err}\n`);
      if (!res.headersSent) armError(res, err.status || 500, err.code || "InternalServerError", String(err.message));
    });
  });
  server.listen(0, "127.0.0.1", () => {
    base = `https://127.0.0.1:${server.address().port}`;
    process.stdout.write(`${TAG} listening on ${base}\n`);
  });
  watchParent();
}

main().catch((err) => {
  process.stderr.write(`${TAG}: FATAL: ${err.stack || err}\n`);
  process.exit(1);
});
