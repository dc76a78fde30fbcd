//! Progress bars for a person at a terminal: bytes done, rate and ETA of a seed copy, an
//! apply, a restore's copies or a verify, drawn with `indicatif` from a [`Progress`] the work
//! updates. Nothing at all is drawn (no task even runs) when stderr is not a terminal, so
//! logs captured by systemd or redirected to a file stay plain lines.

use crate::model::progress::Progress;
use indicatif::{
    HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a bar reads its [`Progress`].
const TICK: Duration = Duration::from_millis(100);
/// `{msg}` is the rate and ETA from [`Progress::view`], the same figures `status` shows
/// (indicatif's own estimate would count bytes done before the bar appeared as speed).
const TEMPLATE: &str = "{prefix} [{bar:30}] {bytes}/{total_bytes} ({percent}%){msg}";

/// All bars of the process, one line each (several disks back up at once).
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// A bar following one [`Progress`]; [`Watch::finish`] draws its last state and leaves it.
pub struct Watch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Shows `progress` as bars labelled `label` (one per piece of work: `seed copy`, `apply`,
/// ...), or nothing when stderr is not a terminal.
pub fn watch(label: &str, progress: Arc<Progress>) -> Option<Watch> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let stop = CancellationToken::new();
    let label = label.to_string();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut shown: Option<(&'static str, ProgressBar)> = None;
            loop {
                let last = stop.is_cancelled();
                update(&label, &progress, &mut shown);
                if last {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            if let Some((_, bar)) = shown {
                bar.finish();
            }
        }
    });
    Some(Watch { stop, task })
}

/// Moves the bar of the current work, starting a new one when the work changes.
fn update(label: &str, progress: &Progress, shown: &mut Option<(&'static str, ProgressBar)>) {
    let v = progress.view();
    if v.work.is_empty() || v.bytes_total == 0 {
        return;
    }
    if shown.as_ref().is_none_or(|(work, _)| *work != v.work) {
        if let Some((_, old)) = shown.take() {
            old.finish();
        }
        let bar = bars().add(
            ProgressBar::new(v.bytes_total)
                .with_position(v.bytes_done)
                .with_prefix(format!("{label}: {}", v.work)),
        );
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        *shown = Some((v.work, bar));
    }
    if let Some((_, bar)) = shown {
        bar.set_length(v.bytes_total);
        bar.set_position(v.bytes_done);
        if let (Some(rate), Some(eta)) = (v.rate, v.eta_seconds) {
            bar.set_message(format!(
                ", {}/s, ETA {}",
                HumanBytes(rate as u64),
                HumanDuration(Duration::from_secs_f64(eta.clamp(0.0, 1e9)))
            ));
        }
    }
}

/// Runs `f` (a write to stderr) with the bars cleared, then draws them again, so that a log
/// line printed while a bar is shown lands above it instead of through it.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    bars().suspend(f)
}

impl Watch {
    /// Draws the final state and stops following.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
