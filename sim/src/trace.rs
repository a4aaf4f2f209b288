//! The run's trace log: what the nodes and the nemesis logged, stamped with simulated
//! time, kept in memory (written out when a seed fails) and hashed for the
//! determinism check.

use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The log, shared with the subscriber.
#[derive(Clone, Default)]
pub struct TraceLog(Arc<Mutex<Vec<u8>>>);

impl TraceLog {
    /// Installs the subscriber for the whole process (one seed per process). `filter`
    /// uses `RUST_LOG` syntax.
    pub fn install(filter: &str) -> Self {
        let log = TraceLog::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_timer(SimTime)
            .with_writer(move || writer.clone())
            .init();
        log
    }

    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for TraceLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Simulated wall-clock time (the same for every replay of a seed).
struct SimTime;

impl FormatTime for SimTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        write!(w, "{}.{:06}", t.as_secs(), t.subsec_micros())
    }
}
