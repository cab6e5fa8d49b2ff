//! The fleet snapshot's writer: a thread of its own that writes the fleet index to SQLite
//! (`vigo_state::FleetStore`), one group of shards per tick, so each envoy's observation is
//! at most one flush interval old on disk and the writes spread over the interval. At
//! shutdown it writes whatever is left, so a clean stop loses nothing.
//!
//! It runs on a plain thread, not the async runtime: SQLite blocks, and the check-in path
//! shares no lock with it beyond the fleet index's short shard locks (I-3).

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use vigo_state::{FleetStore, Scope};

use crate::node::Node;

/// Groups of shards the interval is split into: one is written per tick.
pub const GROUPS: usize = 8;

/// The running writer; [`Flusher::stop`] ends it after a last full flush.
#[derive(Debug)]
pub struct Flusher {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts writing `node`'s fleet index to `store`, the whole of it every `interval`.
    pub fn start(node: Arc<Node>, mut store: FleetStore, interval: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let tick = (interval / GROUPS as u32).max(Duration::from_millis(10));
        let thread = std::thread::Builder::new().name("fleet-flusher".into()).spawn(move || {
            let mut group = 0;
            loop {
                let scope = match stopped.recv_timeout(tick) {
                    Err(RecvTimeoutError::Timeout) => Scope::Group(group, GROUPS),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => Scope::All,
                };
                flush(&node, &mut store, scope);
                if scope == Scope::All {
                    return;
                }
                group = (group + 1) % GROUPS;
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Writes what is left and ends the writer.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.finish();
    }
}

fn flush(node: &Node, store: &mut FleetStore, scope: Scope) {
    match store.flush(&node.fleet, scope) {
        Ok(report) => node.metrics.record_flush(Some(&report)),
        Err(e) => {
            node.metrics.record_flush(None);
            tracing::error!("fleet snapshot not written, the next flush writes it whole: {e}");
        }
    }
}
