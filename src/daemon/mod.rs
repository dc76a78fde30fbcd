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
//! - `supervisor`: the supervisor task and its events; `reload`: SIGHUP, the config re-read.
//!
//! Invariants: at most one cycle per disk (a due tick while it runs is coalesced); at most
//! `max_concurrent_cycles` cycles apply at once; a stopped cycle is always left at a
//! checkpoint of the state database, so a later run resumes it (docs/design.md).

pub mod cluster;
pub mod control;
pub mod metrics;
pub mod readiness;
mod reload;
pub mod runs;
pub mod schedule;
pub mod signals;
mod supervisor;

use crate::config::{self, Config};
use crate::model::{Clock, SystemClock};
use crate::service::{App, AppError};
use crate::storage::PageBlobs;
use control::{Incoming, Request, Response};
use metrics::Metrics;
use readiness::Readiness;
use reload::open_app;
use runs::Runs;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use supervisor::{Event, Supervisor};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

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

/// `snapback run`: starts the daemon with signal handling and runs it until stopped.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let signals = signals::install().map_err(DaemonError::Signals)?;
    let daemon = Daemon::start(config, Options::default()).await?;
    let signals = signals::forward(signals, daemon.handle());
    daemon.wait().await;
    signals.abort();
    Ok(())
}
