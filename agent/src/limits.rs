//! Every bound the envoy library enforces, each with the reason it exists. A limit lives here so it
//! can be found, reviewed and tuned in one place.

/// Size of the LMDB memory map for the cache. LMDB cannot grow past it (writes fail with
/// `MapFull`), and on Linux an unused map costs only address space, so it is sized for the worst
/// case: one large bundle plus a full run queue ([`RUN_QUEUE_LEN_MAX`] reports of a few hundred
/// resources each).
pub const CACHE_MAP_BYTES: usize = 256 * 1024 * 1024;

/// Most run reports kept while the server is unreachable. An envoy offline for weeks must not fill
/// its disk (or the cache's map) with reports nobody will read; the oldest are dropped first,
/// because the newest say most about the host's current state. At one run every 30 minutes this
/// is about three weeks of history.
pub const RUN_QUEUE_LEN_MAX: u64 = 1000;

/// Largest value `Cache::set_meta` accepts. Metadata is small (envoy id, server list, keys);
/// anything larger is a caller bug that would otherwise sit in the map forever.
pub const META_VALUE_BYTES_MAX: usize = 64 * 1024;

/// Timeout of an exec resource that sets none. Long enough for package installs and builds, short
/// enough that a hung command cannot stall every later run.
pub const EXEC_TIMEOUT_DEFAULT_S: u32 = 300;

/// Bytes of an exec's stderr kept to report its last line. A chatty command must not grow the
/// envoy's memory; the end of the output is where the reason for a failure usually is.
pub const EXEC_STDERR_TAIL_BYTES: usize = 8 * 1024;

/// Longest message reported for one resource (characters). Reports are queued and sent in bulk,
/// so one runaway message must not crowd out the rest.
pub const RESULT_MESSAGE_CHARS_MAX: usize = 1024;
