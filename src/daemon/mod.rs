//! `snapback run`: the long-running daemon.
//!
//! One supervisor task owns all scheduling state and is driven by events: the clock reaching
//! a planned instant, a cycle ending, a control-socket request, SIGHUP (reload) and
//! SIGTERM/SIGINT (shutdown). Each cycle runs in its own task through
//! [`App::backup_disk_with_progress`]; the supervisor never waits on storage itself.
//!
//! - [`schedule`]: pure timing rules (cron in a time zone, window, jitter, retry, resume).
//! - [`control`]: the control socket protocol, server and client.
//! - [`runs`]: the run id of each cycle started, and its result.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`readiness`]: what `/readyz` answers.
//! - [`signals`]: Unix signal handling.
//! - [`cluster`]: `[cluster]` membership; which disks this replica runs.
//!
//! Invariants: at most one cycle per disk (a due tick while it runs is coalesced); at most
//! `max_concurrent_cycles` cycles apply at once; a stopped cycle is always left at a
//! checkpoint of the state database, so a later run resumes it (docs/design.md).

pub mod cluster;
pub mod control;
pub mod metrics;
pub mod readiness;
pub mod runs;
pub mod schedule;
pub mod signals;

use crate::config::{self, Config, DiskConfig};
use crate::cycle::error::CycleError;
use crate::model::progress::{Activity, Progress};
use crate::model::record::{CycleRecord, PhaseName};
use crate::model::{Clock, SystemClock};
use crate::service::{App, AppError};
use crate::storage::PageBlobs;
use chrono::{DateTime, Utc};
use control::{
    BackupOutcome, DaemonDiskStatus, DaemonStatus, Incoming, ProgressInfo, Request, Response,
};
use metrics::Metrics;
use readiness::Readiness;
use runs::Runs;
use schedule::{DiskSchedule, Finish, Planner, Reason, Wake};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

/// How often running cycles' progress is logged and published as metrics.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(15);
/// File in the state directory that one daemon holds locked while it runs.
pub const DAEMON_LOCK: &str = "daemon.lock";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another snapback daemon is already running on state directory {state_dir} ({path} is locked{holder}); stop it first, or give this one another state_dir")]
    AlreadyRunning {
        state_dir: PathBuf,
        path: PathBuf,
        holder: String,
    },
    #[error("cannot take the daemon lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    App(#[from] AppError),
    #[error("cannot listen on the control socket {path}: {source}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Options {
    pub clock: Arc<dyn Clock>,
    /// Send READY/RELOADING/STOPPING/WATCHDOG to systemd (a no-op outside systemd).
    pub notify_systemd: bool,
    /// Storage to use instead of the Azure clients the config describes (tests).
    pub blobs: Option<Arc<dyn PageBlobs>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            notify_systemd: true,
            blobs: None,
        }
    }
}

enum Event {
    Finished(Box<Finished>),
    Reload,
    Shutdown,
}

struct Finished {
    disk: String,
    id: u64,
    seconds: f64,
    /// `None` when the cycle was cancelled before it got a concurrency slot.
    result: Option<Result<CycleRecord, CycleError>>,
    cancelled: bool,
    /// The disk's restore points after the cycle (`None`: not listed).
    points: Option<RestorePoints>,
}

/// A disk's restore-point count and newest snapshot time (Unix seconds).
struct RestorePoints {
    count: usize,
    newest: Option<i64>,
}

/// Lists a disk's restore points from its backup account (a cycle and the retention after it
/// both change them; a new state directory knows none). `None` after logging a failure.
async fn list_restore_points(app: &App, disk: &DiskConfig) -> Option<RestorePoints> {
    match crate::restore::retention::restore_points(app.blobs.as_ref(), disk).await {
        Ok(points) => Some(RestorePoints {
            count: points.len(),
            newest: points
                .iter()
                .filter_map(|p| crate::restore::retention::Point::from_snapshot(&p.snapshot).time)
                .map(|t| t.timestamp())
                .max(),
        }),
        Err(e) => {
            tracing::warn!(disk = %disk.name, error = %e, "cannot list the restore points");
            None
        }
    }
}

/// Talks to a running daemon from inside the process (signal handlers, tests).
#[derive(Clone)]
pub struct DaemonHandle {
    events: mpsc::UnboundedSender<Event>,
    control: mpsc::Sender<Incoming>,
}

impl DaemonHandle {
    /// Re-reads the config file (what SIGHUP does).
    pub fn reload(&self) {
        let _ = self.events.send(Event::Reload);
    }

    /// Stops new work, checkpoints running cycles and exits (what SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.events.send(Event::Shutdown);
    }

    /// A control request, as if it came through the socket.
    pub async fn request(&self, req: Request) -> Response {
        let (tx, rx) = oneshot::channel();
        let gone = || Response::Error {
            message: "the daemon is shutting down".into(),
        };
        if self.control.send((req, tx)).await.is_err() {
            return gone();
        }
        rx.await.unwrap_or_else(|_| gone())
    }
}

/// A started daemon.
pub struct Daemon {
    handle: DaemonHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// Takes the daemon lock, opens storage and the state database, binds the control socket
    /// (and the metrics port) and starts the supervisor.
    pub async fn start(config: Config, opts: Options) -> Result<Daemon, DaemonError> {
        let lock = take_daemon_lock(&config.state_dir)?;
        let app = Arc::new(open_app(config.clone(), opts.blobs.as_ref())?);
        // Without a `[cluster]` table a daemon on Azure storage joins the implicit one, so
        // replicas started on one config share its disks with nothing to configure; in-memory
        // storage (simulations) has no one to share with.
        let cluster = config.cluster.clone().or_else(|| {
            let first = config.disks.first().filter(|_| opts.blobs.is_none())?;
            Some(config::ClusterConfig::implicit(&first.backup.account))
        });
        let cluster = match &cluster {
            Some(c) => Some(join_cluster(c, &config, &app).await),
            None => None,
        };
        let control_listener = bind_control(&config.control_socket)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let stop_servers = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let ready = Arc::new(Readiness::default());
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::channel(64);
        tokio::spawn(control::serve(
            control_listener,
            control_tx.clone(),
            stop_servers.clone(),
        ));
        if let Some(l) = metrics_listener {
            tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics, /healthz and /readyz");
            tokio::spawn(metrics::serve(
                l,
                Arc::clone(&metrics),
                Arc::clone(&ready),
                stop_servers.clone(),
            ));
        }
        let now = opts.clock.now();
        let mut sup = Supervisor {
            sem: Arc::new(Semaphore::new(config.max_concurrent_cycles.max(1))),
            slots: BTreeMap::new(),
            app,
            clock: opts.clock,
            metrics,
            ready,
            events_tx: events_tx.clone(),
            runs: Runs::default(),
            started: Instant::now(),
            notify: opts.notify_systemd,
            blobs: opts.blobs,
            view: cluster.as_ref().map(|c| c.view()),
            cluster,
            config,
        };
        for d in sup.config.disks.clone() {
            sup.add_disk(d, now);
        }
        sup.metrics.set_disks(sup.slots.len());
        sup.publish_view();
        sup.probe_storage();
        sup.list_restore_points(sup.config.disks.clone());
        tracing::info!(
            disks = sup.slots.len(),
            config = %sup.config.path.display(),
            control_socket = %sup.config.control_socket.display(),
            "snapback daemon started"
        );
        sup.sd_notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("{} disk(s)", sup.slots.len())),
        ]);
        let task = tokio::spawn(async move {
            sup.run(events_rx, control_rx).await;
            stop_servers.cancel();
            let _ = std::fs::remove_file(&sup.config.control_socket);
            drop(lock);
            tracing::info!("snapback daemon stopped");
        });
        Ok(Daemon {
            handle: DaemonHandle {
                events: events_tx,
                control: control_tx,
            },
            task,
        })
    }

    pub fn handle(&self) -> DaemonHandle {
        self.handle.clone()
    }

    /// Waits until the daemon has stopped (after a shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// One daemon per state directory: a second one would race the first on every disk.
fn take_daemon_lock(state_dir: &Path) -> Result<File, DaemonError> {
    crate::ownership::lock::try_lock(&state_dir.join(DAEMON_LOCK)).map_err(|e| match e {
        crate::ownership::lock::LockError::Held { path, holder } => DaemonError::AlreadyRunning {
            state_dir: state_dir.to_path_buf(),
            path,
            holder,
        },
        crate::ownership::lock::LockError::Io { path, source } => {
            DaemonError::Lock { path, source }
        }
    })
}

/// Binds the control socket. Called with the daemon lock held, so a socket file left there
/// is stale (a crashed daemon's) and is replaced.
fn bind_control(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Control {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

struct Slot {
    disk: DiskConfig,
    sched: DiskSchedule,
    planner: Planner,
    running: Option<Running>,
}

struct Running {
    id: u64,
    token: CancellationToken,
    /// When the window closes on this cycle (not for manual runs).
    window_close: Option<DateTime<Utc>>,
    by_window: bool,
    progress: Arc<Progress>,
}

struct Supervisor {
    config: Config,
    app: Arc<App>,
    clock: Arc<dyn Clock>,
    sem: Arc<Semaphore>,
    slots: BTreeMap<String, Slot>,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    events_tx: mpsc::UnboundedSender<Event>,
    /// Every cycle started, by run id, and how it ended.
    runs: Runs,
    started: Instant,
    notify: bool,
    blobs: Option<Arc<dyn PageBlobs>>,
    /// `[cluster]` membership; `None`: this daemon runs every disk.
    cluster: Option<cluster::Member>,
    /// The last cluster view acted on (logged and published).
    view: Option<cluster::View>,
}

/// Joins the `[cluster]` through the coordination account's own client, from the composition
/// root (the heartbeat is Azure leases, whatever storage the cycles use).
async fn join_cluster(c: &config::ClusterConfig, config: &Config, app: &App) -> cluster::Member {
    let blobs = crate::service::clients::coordination(config, &c.account);
    let names = cluster::DiskSet::of(&config.disks);
    let member =
        cluster::Member::join(c, &app.replica_id, blobs, app.owner_key, &app.holder, names).await;
    let v = member.view();
    let assigned: Vec<&str> = v.assigned.iter().map(String::as_str).collect();
    if v.connected {
        tracing::info!(replica = %v.replica_id, alive = %v.alive.join(","), assigned = %assigned.join(","), "joined the cluster");
    } else {
        tracing::warn!(replica = %v.replica_id, container = %format!("{}/{}", c.account, c.container), "cannot reach the cluster's coordination container yet; running every disk (each cycle under its disk lease) until it answers");
    }
    member
}

fn open_app(config: Config, blobs: Option<&Arc<dyn PageBlobs>>) -> Result<App, AppError> {
    match blobs {
        Some(b) => App::with_blobs(config, Arc::clone(b)),
        None => App::open(config),
    }
}

/// A disk's config as far as "did it change" goes (its line in the file does not count).
fn same_disk(a: &DiskConfig, b: &DiskConfig) -> bool {
    DiskConfig {
        line: 0,
        ..a.clone()
    } == DiskConfig {
        line: 0,
        ..b.clone()
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Supervisor {
    fn sd_notify(&self, states: &[sd_notify::NotifyState<'_>]) {
        if self.notify {
            if let Err(e) = sd_notify::notify(states) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
    }

    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut control: mpsc::Receiver<Incoming>,
    ) {
        let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watchdog_every = if self.notify {
            sd_notify::watchdog_enabled().map(|d| d / 2)
        } else {
            None
        };
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        let mut views = self.cluster.as_ref().map(cluster::Member::subscribe);
        loop {
            let now = self.clock.now();
            self.tick(now);
            let nap = self
                .next_wake()
                .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::MAX)
                .min(self.clock.max_nap());
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Event::Finished(f)) => self.finished(*f),
                    Some(Event::Reload) => self.reload(),
                    Some(Event::Shutdown) | None => break,
                },
                Some((req, reply)) = control.recv() => {
                    let _ = reply.send(self.handle_request(req));
                }
                v = cluster::next_view(&mut views) => self.view_changed(v),
                _ = tokio::time::sleep(nap) => {}
                _ = progress.tick() => {
                    self.report_progress();
                    if !self.ready.is_ready() {
                        self.probe_storage();
                    }
                }
                _ = watchdog.tick(), if watchdog_every.is_some() => {
                    self.sd_notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
        self.shutdown(&mut events, &mut control).await;
    }

    /// Starts what is due, coalesces what cannot start, and pauses cycles whose window closed.
    fn tick(&mut self, now: DateTime<Utc>) {
        let mut to_start = Vec::new();
        for (name, slot) in &mut self.slots {
            if let Some(r) = &mut slot.running {
                if !r.by_window && r.window_close.is_some_and(|t| t <= now) {
                    tracing::info!(disk = %name, "backup window closed: pausing the cycle at its next checkpoint; it resumes in the next window");
                    r.by_window = true;
                    r.token.cancel();
                }
            }
            let running = slot.running.is_some();
            match slot
                .planner
                .poll(&slot.sched, now, running, rand::random::<f64>())
            {
                Wake::Idle => {}
                // Another replica's share: its tick passes here (the owner runs it).
                Wake::Start(_) if self.cluster.as_ref().is_some_and(|c| !c.runs(name)) => {}
                Wake::Start(reason) => to_start.push((name.clone(), reason)),
                Wake::Coalesced(reason) => {
                    tracing::info!(disk = %name, reason = reason.as_str(), "cycle already running; this start is merged into it")
                }
                Wake::OutsideWindow(reason) => {
                    tracing::info!(disk = %name, reason = reason.as_str(), next_window = %rfc3339(slot.sched.next_window_open(now)), "outside the backup window; not starting")
                }
                Wake::Held { until } => {
                    tracing::info!(disk = %name, next_attempt = %rfc3339(until), "scheduled start skipped: backing off after the last failure (SIGHUP or a manual backup tries again now)")
                }
            }
        }
        for (name, reason) in to_start {
            self.start(&name, reason, now);
        }
    }

    /// A new cluster view: logged when it changes who is alive or what this replica runs;
    /// the next tick follows it.
    fn view_changed(&mut self, v: cluster::View) {
        if let Some(old) = &self.view {
            cluster::log_change(old, &v);
        }
        self.view = Some(v);
        self.publish_view();
    }

    /// Publishes the cluster view as metrics.
    fn publish_view(&self) {
        if let Some(v) = &self.view {
            self.metrics.set_cluster(
                v.alive.len(),
                v.connected,
                self.slots.keys().map(|d| (d.as_str(), v.runs(d))),
            );
        }
    }

    fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.slots
            .values()
            .flat_map(|s| {
                let close = s
                    .running
                    .as_ref()
                    .filter(|r| !r.by_window)
                    .and_then(|r| r.window_close);
                [s.planner.due(), close]
            })
            .flatten()
            .min()
    }

    fn add_disk(&mut self, disk: DiskConfig, now: DateTime<Utc>) {
        let sched = DiskSchedule::from_config(&disk);
        let open = match self.app.store.open_cycle(&disk.name) {
            Ok(c) => c.is_some(),
            Err(e) => {
                tracing::warn!(disk = %disk.name, error = %e, "cannot read the state database");
                false
            }
        };
        if open {
            tracing::info!(disk = %disk.name, "unfinished cycle found; it resumes as soon as the window allows");
        }
        if let Ok(Some(state)) = self.app.store.disk(&disk.name) {
            if let Some(t) = state.last_success_at {
                self.metrics.set_last_success(&disk.name, t);
            }
        }
        self.metrics.set_phase(&disk.name, Activity::Idle);
        self.metrics.set_needs_operator(&disk.name, false);
        self.metrics
            .set_schedule_interval(&disk.name, sched.longest_gap(now));
        let planner = Planner::new(&sched, now, open, rand::random::<f64>());
        self.slots.insert(
            disk.name.clone(),
            Slot {
                disk,
                sched,
                planner,
                running: None,
            },
        );
    }

    /// Starts a cycle of `name`; its run number.
    fn start(&mut self, name: &str, reason: Reason, now: DateTime<Utc>) -> Option<u64> {
        let slot = self.slots.get_mut(name)?;
        let id = self.runs.start(name);
        let token = CancellationToken::new();
        let progress = Arc::new(Progress::default());
        let window_close = match reason {
            Reason::Manual => None,
            _ => slot.sched.window_close(now),
        };
        slot.running = Some(Running {
            id,
            token: token.clone(),
            window_close,
            by_window: false,
            progress: Arc::clone(&progress),
        });
        tracing::info!(disk = %name, reason = reason.as_str(), "starting cycle");
        self.metrics.set_phase(name, Activity::Starting);
        let (app, disk, sem, tx) = (
            Arc::clone(&self.app),
            slot.disk.clone(),
            Arc::clone(&self.sem),
            self.events_tx.clone(),
        );
        tokio::spawn(async move {
            let permit = tokio::select! {
                p = sem.acquire_owned() => p.ok(),
                _ = token.cancelled() => None,
            };
            let ev = match permit {
                None => Finished {
                    disk: disk.name.clone(),
                    id,
                    seconds: 0.0,
                    result: None,
                    cancelled: true,
                    points: None,
                },
                Some(_permit) => {
                    let rep = app
                        .backup_disk_with_progress(&disk, token.clone(), Some(progress))
                        .await;
                    // Still in the disk's concurrency slot: a cycle's requests stay within
                    // max_concurrent_cycles.
                    let points = list_restore_points(&app, &disk).await;
                    Finished {
                        disk: rep.disk,
                        id,
                        seconds: rep.seconds,
                        result: Some(rep.result),
                        cancelled: token.is_cancelled(),
                        points,
                    }
                }
            };
            let _ = tx.send(Event::Finished(Box::new(ev)));
        });
        Some(id)
    }

    fn finished(&mut self, f: Finished) {
        let now = self.clock.now();
        let ours = |s: &Slot| {
            s.running
                .as_ref()
                .filter(|r| r.id == f.id)
                .map(|r| r.by_window)
        };
        let stopped_because = match self.slots.get(&f.disk).and_then(ours) {
            Some(true) => "the backup window closed",
            Some(false) => "the daemon is stopping",
            None => "the disk was removed from the daemon's config",
        };
        let result = runs::result_of(f.result.as_ref(), f.seconds, f.cancelled, stopped_because);
        self.runs.end(f.id, result);
        let Some(slot) = self.slots.get_mut(&f.disk) else {
            return; // removed by a reload meanwhile
        };
        if slot.running.as_ref().map(|r| r.id) != Some(f.id) {
            return;
        }
        let Some(running) = slot.running.take() else {
            return;
        };
        // Another replica owns the disk (holds its lease): not a failure, no backoff; try
        // again at the next tick, which is how a dead owner's disks are taken over.
        let owned_elsewhere = matches!(&f.result, Some(Err(e)) if e.is_owned_elsewhere());
        let how = match &f.result {
            Some(Ok(_)) => Finish::Ok,
            _ if owned_elsewhere => Finish::Ok,
            _ if f.cancelled && running.by_window => Finish::WindowClosed,
            _ if f.cancelled => Finish::Stopped,
            Some(Err(e)) => Finish::Failed(e.class()),
            None => Finish::Stopped,
        };
        match &f.result {
            Some(Ok(rec)) => {
                self.metrics
                    .cycle_ended(&f.disk, "ok", f.seconds, Some(&rec.stats));
                self.metrics
                    .set_last_success(&f.disk, rec.finished_at().unwrap_or(now.timestamp()));
            }
            Some(Err(e)) if e.is_fenced() => {
                self.metrics.cycle_ended(&f.disk, "fenced", f.seconds, None)
            }
            Some(Err(_)) if owned_elsewhere => self
                .metrics
                .cycle_ended(&f.disk, "skipped", f.seconds, None),
            Some(Err(_)) if f.cancelled => {
                self.metrics
                    .cycle_ended(&f.disk, "interrupted", f.seconds, None)
            }
            Some(Err(_)) => self.metrics.cycle_ended(&f.disk, "error", f.seconds, None),
            None => {}
        }
        if let Some(result) = f.result.as_ref().filter(|_| !owned_elsewhere) {
            self.ready.cycle_ended(&f.disk, result);
        }
        self.metrics.set_phase(&f.disk, Activity::Idle);
        self.metrics.set_apply(&f.disk, 0, 0);
        slot.planner.finished(&slot.sched, now, how);
        self.metrics
            .set_needs_operator(&f.disk, slot.planner.needs_operator());
        if let Finish::Failed(class) = how {
            let next = slot
                .planner
                .due()
                .map(rfc3339)
                .unwrap_or_else(|| "-".into());
            if class.needs_operator() {
                tracing::error!(disk = %f.disk, failures = slot.planner.failures(), error_class = class.label(), next_attempt = %next, "cycle failed and needs an operator (cause logged above); it will be retried on the operator backoff (up to hourly), or at once on SIGHUP or a manual backup");
            } else {
                tracing::warn!(disk = %f.disk, failures = slot.planner.failures(), error_class = class.label(), next_attempt = %next, "cycle failed (cause logged above); it will be retried");
            }
        }
        if how == Finish::WindowClosed {
            let next = slot
                .planner
                .due()
                .map(rfc3339)
                .unwrap_or_else(|| "-".into());
            tracing::info!(disk = %f.disk, resumes_at = %next, "cycle paused at a checkpoint");
        }
        if let Some(p) = f.points {
            self.metrics.set_restore_points(&f.disk, p.count, p.newest);
        }
    }

    /// Publishes the restore points of `disks` (at start, and for disks a reload added or
    /// changed), one disk at a time, each in a concurrency slot like a cycle.
    fn list_restore_points(&self, disks: Vec<DiskConfig>) {
        let (app, metrics, sem) = (
            Arc::clone(&self.app),
            Arc::clone(&self.metrics),
            Arc::clone(&self.sem),
        );
        tokio::spawn(async move {
            for disk in disks {
                let Ok(_permit) = sem.acquire().await else {
                    return;
                };
                if let Some(p) = list_restore_points(&app, &disk).await {
                    metrics.set_restore_points(&disk.name, p.count, p.newest);
                }
            }
        });
    }

    /// Checks in the background that every account answers; `/readyz` follows the result.
    /// The probe waits for a concurrency slot like a cycle, but not for long: readiness must
    /// not wait for hours behind resumed seeds.
    fn probe_storage(&self) {
        if !self.ready.start_probe() {
            return;
        }
        let (app, ready, sem) = (
            Arc::clone(&self.app),
            Arc::clone(&self.ready),
            Arc::clone(&self.sem),
        );
        tokio::spawn(async move {
            let _permit = tokio::time::timeout(PROGRESS_INTERVAL, sem.acquire()).await;
            ready.probed(readiness::probe(app.blobs.as_ref(), &app.config.disks).await);
        });
    }

    fn report_progress(&self) {
        for (name, slot) in &self.slots {
            let Some(r) = &slot.running else { continue };
            let v = r.progress.view();
            self.metrics.set_phase(name, v.phase);
            self.metrics.set_apply(name, v.bytes_done, v.bytes_total);
            if matches!(v.phase, Activity::Phase(PhaseName::Apply | PhaseName::Copy))
                && v.bytes_total > 0
            {
                tracing::info!(
                    disk = %name,
                    progress = %control::format_progress(&progress_info(&r.progress)),
                    bytes_done = v.bytes_done,
                    bytes_total = v.bytes_total,
                    "cycle progress"
                );
            }
        }
    }

    fn handle_request(&mut self, req: Request) -> Response {
        match req {
            Request::Status => self.status(),
            Request::Run { run } => self.runs.answer(run),
            Request::Backup { disk } => {
                let Some(slot) = self.slots.get(&disk) else {
                    let known: Vec<_> = self.slots.keys().cloned().collect();
                    return Response::Error {
                        message: format!(
                            "unknown disk '{disk}' (configured disks: {})",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    };
                };
                if let Some(r) = &slot.running {
                    return Response::Backup {
                        run: Some(self.runs.id(r.id)),
                        disk,
                        outcome: BackupOutcome::AlreadyRunning,
                    };
                }
                let now = self.clock.now();
                // The operator asked: whatever the backoff held, this is a fresh start.
                if let Some(slot) = self.slots.get_mut(&disk) {
                    slot.planner.afresh(now, false);
                }
                let run = self.start(&disk, Reason::Manual, now);
                Response::Backup {
                    run: run.map(|n| self.runs.id(n)),
                    disk,
                    outcome: BackupOutcome::Started,
                }
            }
        }
    }

    fn status(&self) -> Response {
        let list = match self.app.status() {
            Ok(l) => l,
            Err(e) => {
                return Response::Error {
                    message: e.to_string(),
                }
            }
        };
        let disks = list
            .into_iter()
            .map(|status| {
                let slot = self.slots.get(&status.disk);
                let running = slot.and_then(|s| s.running.as_ref());
                DaemonDiskStatus {
                    running: running.is_some(),
                    next_run: slot.and_then(|s| s.planner.next_tick()).map(rfc3339),
                    next_attempt: slot.and_then(|s| s.planner.due()).map(rfc3339),
                    failures: slot.map(|s| s.planner.failures()).unwrap_or(0),
                    needs_operator: slot.is_some_and(|s| s.planner.needs_operator()),
                    progress: running.map(|r| progress_info(&r.progress)),
                    status,
                }
            })
            .collect();
        Response::Status(DaemonStatus {
            pid: std::process::id(),
            config: self.config.path.display().to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
            disks,
            cluster: self.view.as_ref().map(control::ClusterStatus::of),
        })
    }

    /// SIGHUP: re-read the config; an invalid one is reported and the running one kept.
    /// Either way every disk's backoff starts afresh and a disk whose last cycle failed is
    /// tried now: SIGHUP is how an operator says "fixed" (a role assigned, a key rotated).
    fn reload(&mut self) {
        self.sd_notify(&[sd_notify::NotifyState::Reloading]);
        let now = self.clock.now();
        for slot in self.slots.values_mut() {
            slot.planner.afresh(now, slot.running.is_none());
        }
        match self.try_reload() {
            Ok(()) => {
                self.metrics.reload(true);
                self.probe_storage();
            }
            Err(why) => {
                self.metrics.reload(false);
                tracing::error!(config = %self.config.path.display(), "config reload failed; still running on the previous config:\n{why}");
            }
        }
        self.sd_notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("{} disk(s)", self.slots.len())),
        ]);
    }

    fn try_reload(&mut self) -> Result<(), String> {
        let new = Config::load(&self.config.path).map_err(|e| e.to_string())?;
        if new.state_dir != self.config.state_dir {
            return Err(format!(
                "state_dir changed ({} -> {}); that needs a restart",
                self.config.state_dir.display(),
                new.state_dir.display()
            ));
        }
        if new.control_socket != self.config.control_socket
            || new.metrics_listen != self.config.metrics_listen
        {
            tracing::warn!(
                "control_socket and metrics_listen changes take effect at the next restart"
            );
        }
        let app = open_app(new.clone(), self.blobs.as_ref()).map_err(|e| e.to_string())?;
        self.app = Arc::new(app);
        if new.max_concurrent_cycles != self.config.max_concurrent_cycles {
            // Running cycles keep their permits of the old semaphore; new ones use the new.
            self.sem = Arc::new(Semaphore::new(new.max_concurrent_cycles.max(1)));
        }
        let now = self.clock.now();
        let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let keep: Vec<&str> = new.disks.iter().map(|d| d.name.as_str()).collect();
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|n| !keep.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(slot) = self.slots.remove(&name) {
                if let Some(r) = slot.running {
                    tracing::info!(disk = %name, "disk removed from the config: stopping its cycle at the next checkpoint");
                    r.token.cancel();
                }
                self.metrics.remove_disk(&name);
                removed.push(name);
            }
        }
        for d in &new.disks {
            match self.slots.get(&d.name) {
                Some(slot) if same_disk(&slot.disk, d) => {}
                Some(_) => {
                    // A running cycle finishes with the config it started with.
                    let running = self.slots.remove(&d.name).and_then(|s| s.running);
                    self.add_disk(d.clone(), now);
                    if let Some(slot) = self.slots.get_mut(&d.name) {
                        slot.running = running;
                    }
                    changed.push(d.name.clone());
                }
                None => {
                    self.add_disk(d.clone(), now);
                    added.push(d.name.clone());
                }
            }
        }
        if new.cluster != self.config.cluster {
            tracing::warn!("[cluster] changes take effect at the next restart");
        }
        if let Some(c) = &self.cluster {
            c.set_disks(cluster::DiskSet::of(&new.disks));
        }
        self.config = new;
        self.metrics.set_disks(self.slots.len());
        let relist = self
            .config
            .disks
            .iter()
            .filter(|d| added.contains(&d.name) || changed.contains(&d.name))
            .cloned()
            .collect();
        self.list_restore_points(relist);
        tracing::info!(
            added = %added.join(","),
            removed = %removed.join(","),
            changed = %changed.join(","),
            disks = self.slots.len(),
            "config reloaded"
        );
        Ok(())
    }

    /// Stops new work, asks running cycles to stop at their next checkpoint and waits for
    /// them up to `shutdown_grace`. Cycles still running then are abandoned: their last
    /// checkpoint is in the state database and the next start resumes them.
    async fn shutdown(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        control: &mut mpsc::Receiver<Incoming>,
    ) {
        self.sd_notify(&[sd_notify::NotifyState::Stopping]);
        // First, so the others rebalance while this replica's cycles reach their checkpoints.
        if let Some(c) = self.cluster.take() {
            c.leave().await;
        }
        for (name, slot) in &self.slots {
            if let Some(r) = &slot.running {
                tracing::info!(disk = %name, "stopping the cycle at its next checkpoint");
                r.token.cancel();
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        while self.slots.values().any(|s| s.running.is_some()) {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Event::Finished(f)) => self.finished(*f),
                    Some(_) => {}
                    None => break,
                },
                Some((_, reply)) = control.recv() => {
                    let _ = reply.send(Response::Error { message: "the daemon is shutting down".into() });
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let left: Vec<_> = self.slots.iter().filter(|(_, s)| s.running.is_some()).map(|(n, _)| n.clone()).collect();
                    tracing::warn!(disks = %left.join(","), "shutdown_grace expired; leaving these cycles at their last checkpoint (the next start resumes them)");
                    break;
                }
            }
        }
    }
}

fn progress_info(p: &Progress) -> ProgressInfo {
    let v = p.view();
    ProgressInfo {
        phase: v.phase.as_str().to_string(),
        work: v.work.to_string(),
        bytes_done: v.bytes_done,
        bytes_total: v.bytes_total,
        percent: (v.bytes_total > 0).then(|| v.bytes_done as f64 * 100.0 / v.bytes_total as f64),
        bytes_per_second: v.rate,
        eta_seconds: v.eta_seconds,
    }
}

/// `snapback run`: starts the daemon with signal handling and runs it until stopped.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let signals = signals::install().map_err(DaemonError::Signals)?;
    let daemon = Daemon::start(config, Options::default()).await?;
    let signals = signals::forward(signals, daemon.handle());
    daemon.wait().await;
    signals.abort();
    Ok(())
}
