//! The supervisor: the one task that owns the daemon's scheduling state and acts on its
//! events (a planned instant, a cycle ending, a control request, a cluster view, shutdown).
//! Apart from `mod.rs`, which starts the daemon and binds its sockets, and from `reload.rs`,
//! which re-reads the config: this is the loop that runs between the two.

use super::cluster;
use super::control::{
    self, BackupOutcome, DaemonDiskStatus, DaemonStatus, Incoming, ProgressInfo, Request, Response,
};
use super::metrics::Metrics;
use super::readiness::{self, Readiness};
use super::runs::{self, Runs};
use super::schedule::{DiskSchedule, Finish, Planner, Reason, Wake};
use crate::config::{Config, DiskConfig};
use crate::cycle::error::CycleError;
use crate::model::progress::{Activity, Progress};
use crate::model::record::{CycleRecord, PhaseName};
use crate::model::Clock;
use crate::service::App;
use crate::storage::PageBlobs;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// How often running cycles' progress is logged and published as metrics.
pub(super) const PROGRESS_INTERVAL: Duration = Duration::from_secs(15);
pub(super) enum Event {
    Finished(Box<Finished>),
    Reload,
    Shutdown,
}

pub(super) struct Finished {
    pub(super) disk: String,
    pub(super) id: u64,
    pub(super) seconds: f64,
    /// `None` when the cycle was cancelled before it got a concurrency slot.
    pub(super) result: Option<Result<CycleRecord, CycleError>>,
    pub(super) cancelled: bool,
    /// The disk's restore points after the cycle (`None`: not listed).
    pub(super) points: Option<RestorePoints>,
}

/// A disk's restore-point count and newest snapshot time (Unix seconds).
pub(super) struct RestorePoints {
    pub(super) count: usize,
    pub(super) newest: Option<i64>,
}

/// Lists a disk's restore points from its backup account (a cycle and the retention after it
/// both change them; a new state directory knows none). `None` after logging a failure.
pub(super) async fn list_restore_points(app: &App, disk: &DiskConfig) -> Option<RestorePoints> {
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

pub(super) struct Slot {
    pub(super) disk: DiskConfig,
    pub(super) sched: DiskSchedule,
    pub(super) planner: Planner,
    pub(super) running: Option<Running>,
}

pub(super) struct Running {
    pub(super) id: u64,
    pub(super) token: CancellationToken,
    /// When the window closes on this cycle (not for manual runs).
    pub(super) window_close: Option<DateTime<Utc>>,
    pub(super) by_window: bool,
    pub(super) progress: Arc<Progress>,
}

pub(super) struct Supervisor {
    pub(super) config: Config,
    pub(super) app: Arc<App>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) sem: Arc<Semaphore>,
    pub(super) slots: BTreeMap<String, Slot>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ready: Arc<Readiness>,
    pub(super) events_tx: mpsc::UnboundedSender<Event>,
    /// Every cycle started, by run id, and how it ended.
    pub(super) runs: Runs,
    pub(super) started: Instant,
    pub(super) notify: bool,
    pub(super) blobs: Option<Arc<dyn PageBlobs>>,
    /// `[cluster]` membership; `None`: this daemon runs every disk.
    pub(super) cluster: Option<cluster::Member>,
    /// The last cluster view acted on (logged and published).
    pub(super) view: Option<cluster::View>,
}

pub(super) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Supervisor {
    pub(super) fn sd_notify(&self, states: &[sd_notify::NotifyState<'_>]) {
        if self.notify {
            if let Err(e) = sd_notify::notify(states) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
    }

    pub(super) async fn run(
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
    pub(super) fn tick(&mut self, now: DateTime<Utc>) {
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
    pub(super) fn view_changed(&mut self, v: cluster::View) {
        if let Some(old) = &self.view {
            cluster::log_change(old, &v);
        }
        self.view = Some(v);
        self.publish_view();
    }

    /// Publishes the cluster view as metrics.
    pub(super) fn publish_view(&self) {
        if let Some(v) = &self.view {
            self.metrics.set_cluster(
                v.alive.len(),
                v.connected,
                self.slots.keys().map(|d| (d.as_str(), v.runs(d))),
            );
        }
    }

    pub(super) fn next_wake(&self) -> Option<DateTime<Utc>> {
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

    pub(super) fn add_disk(&mut self, disk: DiskConfig, now: DateTime<Utc>) {
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
    pub(super) fn start(&mut self, name: &str, reason: Reason, now: DateTime<Utc>) -> Option<u64> {
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

    pub(super) fn finished(&mut self, f: Finished) {
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
    pub(super) fn list_restore_points(&self, disks: Vec<DiskConfig>) {
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
    pub(super) fn probe_storage(&self) {
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

    pub(super) fn report_progress(&self) {
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

    pub(super) fn handle_request(&mut self, req: Request) -> Response {
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

    pub(super) fn status(&self) -> Response {
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

    /// Stops new work, asks running cycles to stop at their next checkpoint and waits for
    /// them up to `shutdown_grace`. Cycles still running then are abandoned: their last
    /// checkpoint is in the state database and the next start resumes them.
    pub(super) async fn shutdown(
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

pub(super) fn progress_info(p: &Progress) -> ProgressInfo {
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
