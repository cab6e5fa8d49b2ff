//! Crash points: places in snapshot building and installing where a fault-injection harness
//! can make a peer die as if by `kill -9`, so that the crash lands exactly there and not just
//! somewhere near.
//!
//! Off unless the environment names a file in [`CRASH_FILE_ENV`] when the process starts; then,
//! each time a point is passed, the file is read and, if one of its lines is that point's
//! name, the process writes `crash point reached: NAME` to stderr and sends itself `SIGKILL`.
//! A harness arms a point by writing the file and disarms it by removing it, without
//! restarting the peer. In production the variable is unset and a point costs one load.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable naming the crash-point file.
pub const CRASH_FILE_ENV: &str = "VIGO_CRASH_FILE";

/// Every crash point, in the order a snapshot passes them.
pub const POINTS: [&str; 4] = [
    SNAPSHOT_BUILD_BEFORE_RECORD,
    SNAPSHOT_BUILD_AFTER_RECORD,
    SNAPSHOT_INSTALL_BEFORE_WRITE,
    SNAPSHOT_INSTALL_AFTER_WRITE,
];

/// A snapshot is built (history encoded, applied state flushed) but not yet recorded.
pub const SNAPSHOT_BUILD_BEFORE_RECORD: &str = "snapshot-build-before-record";
/// A snapshot is recorded durably but openraft has not yet taken it (nor purged its log).
pub const SNAPSHOT_BUILD_AFTER_RECORD: &str = "snapshot-build-after-record";
/// A received snapshot is verified but nothing of it is written yet.
pub const SNAPSHOT_INSTALL_BEFORE_WRITE: &str = "snapshot-install-before-write";
/// A received snapshot is written durably but neither the projection nor openraft knows it.
pub const SNAPSHOT_INSTALL_AFTER_WRITE: &str = "snapshot-install-after-write";

fn crash_file() -> Option<&'static PathBuf> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var_os(CRASH_FILE_ENV).map(PathBuf::from)).as_ref()
}

/// Passes crash point `name`: dies here if it is armed.
#[allow(unsafe_code)]
pub(crate) fn point(name: &'static str) {
    let Some(file) = crash_file() else { return };
    let Ok(armed) = std::fs::read_to_string(file) else { return };
    if armed.lines().any(|line| line.trim() == name) {
        eprintln!("crash point reached: {name}");
        // SAFETY: kill(2) with our own pid and a valid signal number has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
