//! Limits of the server, each with the reason for its value.

/// Largest stack archive accepted by `PublishStack`: a stack is text and templates; anything
/// bigger is almost certainly a mistake (a build tree or binaries), and every peer keeps
/// every published archive forever in the history.
pub const STACK_ARCHIVE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest traits document an envoy may send: traits are sent only when their hash changes,
/// but the server keeps the latest per envoy in memory.
pub const TRAITS_BYTES_MAX: usize = 256 * 1024;

/// Largest number of runs in one report: the envoy flushes its queue in pages.
pub const REPORT_RUNS_MAX: usize = 100;

/// Largest page of history returned by one `ReadHistory` call (archives make events big).
pub const HISTORY_PAGE_MAX: u32 = 1000;

/// Longest hostname (DNS limit).
pub const HOSTNAME_BYTES_MAX: usize = 253;

/// Largest gRPC message the server decodes: above the archive limit, so a too-big stack gets
/// the clear limit error rather than a transport error.
pub const GRPC_MESSAGE_BYTES_MAX: usize = STACK_ARCHIVE_BYTES_MAX + 1024 * 1024;

/// Pushes after a publish are spread so that at most this many envoys a second are asked to
/// check in: a publish to a large fleet on held connections is a ramp, never a herd.
pub const PUSH_RATE_PER_S: u64 = 2_000;

/// However large the fleet, the last push after a publish goes out within this many
/// milliseconds of it.
pub const PUSH_SPREAD_MS_MAX: u64 = 5_000;

/// Envoys asked for their traits per second and per core, at most (with as many in a burst).
/// Taking in a 150 KB traits document costs the server about 1.5 ms of CPU (receive, hash,
/// parse, intern: `traits/intern_150k` is 1.2 ms) where a check-in costs about a tenth of that,
/// so after a restart, when every envoy's traits are unknown, the uploads are metered to about a
/// quarter of the machine: the rest are told to back off and come back, spread over the time
/// the backlog needs (at most one interval), instead of all uploading at once and timing out.
pub const TRAITS_UPLOADS_PER_S_PER_CORE: u32 = 150;

/// How long check-ins may wait for the server before it sheds them (`--check-in-queue-max-ms`,
/// `admission::QueueDelay`): far above the ~1 ms a check-in takes at 5,000 a second on two
/// cores, far below the 30 s after which an envoy gives up on an answer. Past it, a check-in is
/// answered `Backoff` at once, before its signature is checked, so shedding costs almost
/// nothing and the backlog drains instead of timing out.
pub const CHECK_IN_QUEUE_MAX_MS: u64 = 100;

/// An envoy told to back off because the server was behind comes back at its own point of a
/// window this long (or of its interval, if shorter).
pub const SHED_RETRY_WINDOW_S: u32 = 10;

/// File descriptors kept for everything but held sessions (log, snapshot, calls, polling
/// envoys) when the cap on held sessions is derived from the open-file limit.
pub const FDS_NOT_HELD: usize = 1024;

/// An envoy is online when its last accepted request is at most this many check-in
/// intervals old: one missed check-in (plus jitter) is not yet an outage.
pub const ONLINE_INTERVALS: i64 = 3;

/// How long a joining peer waits for one call to the cluster it joins (CA, admission).
pub const JOIN_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a joining peer keeps asking to become a voter before it gives up: long enough for a
/// leader election and for a snapshot of a long history to ship.
pub const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(900);

/// How long a joining peer waits, once a voter, for the cluster keys to apply.
pub const KEYS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a peer removed from the cluster keeps running, at most, so the leader's membership
/// change (which needs its vote) completes before it stops.
pub const REMOVED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Seconds (one attempt each) a bolt keeps trying to put its entry on the roster at start: a
/// new cluster elects its leader within a few seconds; a minute covers a slow start of every
/// peer of a trio.
pub const BOLT_REGISTER_ATTEMPTS: u32 = 60;

/// How often every peer of a bolt probes the other bolts, the leader exchanging rosters with
/// them: a reassign reaches every bolt within a few seconds, and a dead bolt is noticed as fast,
/// for one small call per bolt pair per interval.
pub const GOSSIP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long one gossip call may take, connection included, before the bolt counts as not
/// answering this round.
pub const GOSSIP_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Seconds an envoy is told to wait when its hand-off to the bolt that owns it failed (that bolt
/// is down, or gossip has not told it yet that it owns the hostname): a few gossip rounds.
pub const HAND_OFF_RETRY_S: u32 = 5;

/// Largest frame an envoy may send on a session: a check-in with its traits, or a page of run
/// reports.
pub const SESSION_REQUEST_BYTES_MAX: usize = 8 * 1024 * 1024;

/// How long a new connection may take over its TLS handshake. Generous: when a whole fleet
/// connects at once (a cold start of 10,000 envoys), handshakes queue for seconds on a small
/// server, and a TLS 1.3 client already counts itself connected while its handshake waits here.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
